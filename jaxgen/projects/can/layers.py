"""Condition-aware weights (Cai et al., "Condition-Aware Neural Network for Controlled Image Generation", CVPR 2024).

CAN controls a generator through its weights: a layer's kernel becomes `W + W_c(cond)`, where `W_c` is generated from
the condition embedding (class and timestep) of each sample. This module holds the math, once:

- Weight generators, the thing that differs between CAN and its ablation baseline. Each turns a layer's static
  kernel and the batch's conditions into one kernel per sample, creating its parameters in the scope of the layer it
  is given, so the same code serves the standalone layers below and layers of an existing model reached through
  `jaxgen.projects.can.model` (interception, no fork):
  - `CAN`: a linear generator from the condition to the flattened kernel delta, zero-initialised so the layer starts
    as its static twin. A full linear map costs `cond_dim * kernel.size` parameters: 56.6 M for one 384 x 384
    projection of DiT-S, 1.5 B for one 1152 x 1152 projection of DiT-XL. `rank` factorises it through a
    `rank`-dimensional projection of the condition (still linear in the condition, `rank * (cond_dim + kernel.size)`
    parameters); `rank=None` is the full map, affordable for small kernels (patch embeddings, depthwise convs).
  - `AKS` (adaptive kernel selection, the paper's baseline): a condition-weighted softmax mixture over a bank of
    `num_kernels` kernels, stored as offsets from the static kernel (zero at start, so the mixture starts as the
    static kernel). With `num_kernels == rank` it has CAN's parameter budget: the two differ in how the condition
    acts (linear generation added to `W` vs. a convex selection among kernels), which is what the ablation compares.
- Per-sample application as one batched operation: a batched einsum for dense layers; for convolutions the batch is
  folded into the channel groups (`[B, H, W, C] -> [1, H, W, B*C]`, `B * groups` groups), one grouped convolution
  for the whole batch, as the paper's implementation does. Never a Python loop over the batch.
- `ConditionAwareDense(features)` and `ConditionAwareConv(features, kernel_size, feature_group_count=1)`, called as
  `layer(x, cond)`; their `kernel`/`bias` have the shapes and names of `nn.Dense`/`nn.Conv`, so the static twin is
  that Flax layer applied to the same two parameters.
- Opt-in, `distinct=DistinctConditions(...)`: kernels generated once per *distinct* condition of the batch, not once
  per sample, then applied per sample. In a sampling step every sample shares the timestep, so a guided batch of 64
  holds at most `classes + 1` distinct conditions; the per-sample path writes and reads a stack of 64 kernels per
  layer, this path generates at most that many. Exact grouping, static shapes, products and the overflow rule:
  `DistinctConditions`.

The generated delta covers the kernel only; biases stay static.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.linen.linear import canonicalize_padding
from jax import lax

from pallas_kernels.can_matmul import can_matmul


class WeightGenerator(Protocol):
    """How a layer's kernel depends on the condition: `kernels(layer, kernel, cond)` -> `[batch, *kernel.shape]`.

    `layer` is the (bound) module whose kernel it is; the generator creates its parameters there (`layer.param`).
    `factors(layer, kernel, cond)` -> `(h [batch, terms], deltas [terms, *kernel.shape])` is the same thing before
    it is formed, `kernels = kernel + sum_j h[:, j] deltas[j]`, for a product that forms each sample's kernel on
    chip (`pallas_kernels.can_matmul`); both CAN and AKS are of that form.
    """

    def kernels(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> jax.Array: ...

    def factors(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> tuple[jax.Array, jax.Array]: ...


def _formed(layer: nn.Module, kernel: jax.Array, h: jax.Array, deltas: jax.Array) -> jax.Array:
    """`kernel + sum_j h[:, j] deltas[j]` -> `[batch, *kernel.shape]`, in the layer's compute dtype."""
    (kernel,) = _in_compute_dtype(layer, kernel)
    return kernel[None] + (h @ deltas.reshape(deltas.shape[0], -1)).reshape(h.shape[0], *kernel.shape)


def _in_compute_dtype(layer: nn.Module, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Casts the generator's operands to the layer's compute dtype before the per-sample kernels are formed.

    The `[batch, *kernel.shape]` stack is the one large tensor CAN adds, written once and read by the product: in
    float32 under a bfloat16 layer it doubles that memory traffic for nothing, since the product casts it anyway.
    """
    dtype = getattr(layer, "dtype", None) or layer.param_dtype
    return tuple(a.astype(dtype) for a in arrays)


def _check_cond(cond: jax.Array, layer: nn.Module) -> None:
    if cond.ndim != 2:
        raise ValueError(f"the condition of condition-aware layer {'/'.join(layer.path) or type(layer).__name__} must "
                         f"be [batch, cond_dim]; got {cond.shape}")


@dataclasses.dataclass(frozen=True)
class CAN:
    """CAN's weight generation: `kernel + reshape(G @ h)`, `h = cond` (`rank=None`) or `h = P @ cond` (`rank` r).

    Parameters in the layer's scope: `can_generator` `[h_dim, kernel.size]`, zeros (the layer starts as its static
    twin), and with a rank `can_project` `[cond_dim, rank]`, LeCun-normal (so the generator's gradient is not zero).
    """

    rank: int | None = None

    def __post_init__(self):
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"CAN rank must be a positive int or None (the full linear generator); got {self.rank}")

    def factors(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_cond(cond, layer)
        h = cond.astype(layer.param_dtype)
        if self.rank is not None:
            h = h @ layer.param("can_project", nn.initializers.lecun_normal(), (cond.shape[-1], self.rank),
                                layer.param_dtype)
        generator = layer.param("can_generator", nn.initializers.zeros, (h.shape[-1], kernel.size), layer.param_dtype)
        h, generator = _in_compute_dtype(layer, h, generator)
        return h, generator.reshape(h.shape[-1], *kernel.shape)

    def kernels(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> jax.Array:
        return _formed(layer, kernel, *self.factors(layer, kernel, cond))


@dataclasses.dataclass(frozen=True)
class AKS:
    """Adaptive kernel selection: `kernel + sum_k softmax(R @ cond)_k D_k`, i.e. the softmax mixture of the bank
    `{kernel + D_k}`.

    Parameters in the layer's scope: `aks_router` `[cond_dim, num_kernels]`, LeCun-normal (a zero router would give
    every kernel the same gradient forever), and `aks_bank` `[num_kernels, *kernel.shape]`, zeros.
    """

    num_kernels: int = 4

    def __post_init__(self):
        if self.num_kernels < 2:
            raise ValueError(f"AKS selects among at least 2 kernels; got num_kernels={self.num_kernels}")

    def factors(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_cond(cond, layer)
        router = layer.param("aks_router", nn.initializers.lecun_normal(), (cond.shape[-1], self.num_kernels),
                             layer.param_dtype)
        bank = layer.param("aks_bank", nn.initializers.zeros, (self.num_kernels, *kernel.shape), layer.param_dtype)
        mixture = jax.nn.softmax(cond.astype(layer.param_dtype) @ router, axis=-1)
        return _in_compute_dtype(layer, mixture, bank)

    def kernels(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> jax.Array:
        return _formed(layer, kernel, *self.factors(layer, kernel, cond))


def dense_per_sample(x: jax.Array, kernels: jax.Array, bias: jax.Array | None, *, num_contracting: int = 1,
                     dtype: Any = None, precision: Any = None) -> jax.Array:
    """`y[b] = x[b] . kernels[b] + bias`: x `[batch, ..., *in_shape]`, kernels `[batch, *in_shape, *out_shape]`
    (`in_shape` its first `num_contracting` axes after the batch) -> `[batch, ..., *out_shape]`; one batched
    contraction (`lax.dot_general` with the batch as its batch dimension) over the axes `nn.DenseGeneral` contracts.
    With a per-sample kernel equal to the static one the result is the static layer's up to float32 rounding (XLA
    may block a batched product differently from the unbatched one)."""
    batch = x.shape[0]
    in_shape = kernels.shape[1:1 + num_contracting]
    if kernels.shape[0] != batch or x.shape[x.ndim - num_contracting:] != in_shape or x.ndim <= num_contracting:
        raise ValueError(f"per-sample kernels {kernels.shape} ([batch, *in, *out], {num_contracting} contracting "
                         f"axes) do not fit x {x.shape} ([batch, ..., *in])")
    x, kernels, bias = nn.dtypes.promote_dtype(x, kernels, bias, dtype=dtype)
    contract_x = tuple(range(x.ndim - num_contracting, x.ndim))
    numbers = ((contract_x, tuple(range(1, 1 + num_contracting))), ((0,), (0,)))
    y = lax.dot_general(x, kernels, numbers, precision=precision)
    return y if bias is None else y + bias


def conv_per_sample(x: jax.Array, kernels: jax.Array, bias: jax.Array | None, *, strides: Sequence[int],
                    padding: str | Sequence[tuple[int, int]], input_dilation: Sequence[int],
                    kernel_dilation: Sequence[int], feature_group_count: int = 1, dtype: Any = None,
                    precision: Any = None) -> jax.Array:
    """Convolves each sample with its own kernel: x `[batch, *spatial, in]`, kernels `[batch, *window, in / groups,
    out]` -> `[batch, *spatial', out]`, as one grouped convolution with the batch folded into the groups.

    `padding` is "SAME", "VALID" or one (low, high) pair per spatial axis (`flax.linen.linear.canonicalize_padding`).
    """
    batch, spatial = x.shape[0], x.ndim - 2
    window, out = kernels.shape[1:1 + spatial], kernels.shape[-1]
    if (kernels.shape[0] != batch or kernels.ndim != x.ndim + 1
            or kernels.shape[-2] * feature_group_count != x.shape[-1]):
        raise ValueError(f"per-sample kernels {kernels.shape} ([batch, *window, in / {feature_group_count} groups, "
                         f"out]) do not fit x {x.shape} ([batch, *spatial, in])")
    x, kernels, bias = nn.dtypes.promote_dtype(x, kernels, bias, dtype=dtype)
    folded_x = jnp.moveaxis(x, 0, -2).reshape(1, *x.shape[1:-1], batch * x.shape[-1])
    folded_k = jnp.moveaxis(kernels, 0, -2).reshape(*window, kernels.shape[-2], batch * out)
    spec = (0, spatial + 1, *range(1, spatial + 1))
    numbers = lax.ConvDimensionNumbers(spec, (spatial + 1, spatial, *range(spatial)), spec)
    y = lax.conv_general_dilated(folded_x, folded_k, tuple(strides), padding, lhs_dilation=tuple(input_dilation),
                                 rhs_dilation=tuple(kernel_dilation), dimension_numbers=numbers,
                                 feature_group_count=batch * feature_group_count, precision=precision)
    y = jnp.moveaxis(y.reshape(*y.shape[1:-1], batch, out), -2, 0)
    return y if bias is None else y + bias


def conv_settings(layer: nn.Conv) -> dict[str, Any]:
    """The `conv_per_sample` keywords that reproduce `layer` (an `nn.Conv` or `ConditionAwareConv`): its strides,
    dilations and padding broadcast as Flax does; padding modes that pad the input by hand are refused."""
    window = (layer.kernel_size,) if isinstance(layer.kernel_size, int) else tuple(layer.kernel_size)

    def per_axis(value):
        value = 1 if value is None else value
        return (value,) * len(window) if isinstance(value, int) else tuple(value)

    padding = canonicalize_padding(layer.padding, len(window))
    if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
        raise ValueError(f"condition-aware conv {'/'.join(layer.path) or type(layer).__name__}: padding {padding!r} "
                         "is not supported (use 'SAME', 'VALID' or explicit pads)")
    return dict(strides=per_axis(layer.strides), padding=padding, input_dilation=per_axis(layer.input_dilation),
                kernel_dilation=per_axis(layer.kernel_dilation), feature_group_count=layer.feature_group_count,
                dtype=layer.dtype, precision=layer.precision)


@struct.dataclass
class Groups:
    """The samples of a batch grouped by distinct condition, in static shapes (`slots` = the most groups allowed).

    index: `[batch]` int32, each sample's group; groups are numbered in order of first appearance, and a sample
        whose condition is the `slots + 1`-th distinct one or later gets an index `>= slots` (overflow).
    first: `[slots]` int32, one sample of each group (its first); 0 for unused slots, whose kernels are generated
        and never read.
    sizes: `[slots]` int32, samples per group; 0 for unused slots; overflowing samples are counted nowhere.
    contiguous (static): the batch is ordered by group (group 0's samples first, ...), as `sorted_by_group` leaves it.
    """

    index: jax.Array
    first: jax.Array
    sizes: jax.Array
    contiguous: bool = struct.field(pytree_node=False, default=False)

    @property
    def slots(self) -> int:
        return self.first.shape[0]

    def sorted_by_group(self) -> tuple[jax.Array, Groups]:
        """`(order, groups)`: the permutation that sorts the batch by group (stable; overflowing samples last) and
        the grouping of the sorted batch, contiguous. Sort once per model call, so that every layer's product can
        take each group's rows as one block."""
        order = jnp.argsort(self.index, stable=True)
        starts = jnp.where(self.sizes > 0, jnp.cumsum(self.sizes) - self.sizes, 0).astype(jnp.int32)
        return order, Groups(self.index[order], starts, self.sizes, contiguous=True)


def exact_bits(values: jax.Array) -> jax.Array:
    """`[batch, ...]` numbers -> `[batch, k]` int32 keys equal exactly where the values are bit-for-bit equal:
    floats by their bit pattern (so -0.0 and 0.0 are two conditions, which costs a kernel and is never wrong)."""
    values = jnp.asarray(values)
    if jnp.issubdtype(values.dtype, jnp.floating):
        values = lax.bitcast_convert_type(values, jnp.dtype(f"int{values.dtype.itemsize * 8}"))
    return values.reshape(values.shape[0], -1).astype(jnp.int32)


def _check_max_distinct(ids: jax.Array, max_distinct: int, where: str) -> None:
    """A ValueError when `ids` are concrete (outside jit) and hold more than `max_distinct` distinct rows; under
    jit the count is not known while tracing, and the overflowing samples come out NaN instead (see
    `DistinctConditions`)."""
    if isinstance(ids, jax.core.Tracer):
        return
    distinct = len(np.unique(np.asarray(ids), axis=0))
    if distinct > max_distinct:
        raise ValueError(f"{where}: the batch holds {distinct} distinct conditions but max_distinct={max_distinct}; "
                         f"raise max_distinct (None: the batch size, always enough)")


def group_conditions(ids: jax.Array, max_distinct: int | None = None, *, where: str = "group_conditions") -> Groups:
    """Groups the batch by exactly equal condition ids `[batch]` or `[batch, k]` (integers; see `exact_bits`).

    Equality is tested on all pairs (`[batch, batch, k]` comparisons: 64 x 64 x 2 for a sampling step, nothing next
    to one layer), which needs no sort and no hash, so two different conditions can never share a group.
    `max_distinct` (default: the batch) sets the number of slots, the most distinct conditions the caller promises.
    """
    ids = ids.reshape(ids.shape[0], -1)
    batch = ids.shape[0]
    if max_distinct is not None and (not isinstance(max_distinct, int) or max_distinct < 1):
        raise ValueError(f"{where}: max_distinct must be a positive int or None (the batch size); got "
                         f"{max_distinct!r}")
    slots = batch if max_distinct is None else min(max_distinct, batch)
    if max_distinct is not None:
        _check_max_distinct(ids, max_distinct, where)
    same = jnp.all(ids[:, None, :] == ids[None, :, :], axis=-1)
    first_of = jnp.argmax(same, axis=1)
    samples = jnp.arange(batch, dtype=jnp.int32)
    is_first = first_of == samples
    group_of_first = jnp.cumsum(is_first, dtype=jnp.int32) - 1
    index = group_of_first[first_of]
    first = jnp.zeros(slots, jnp.int32).at[jnp.where(is_first, group_of_first, slots)].set(samples, mode="drop")
    sizes = jnp.zeros(slots, jnp.int32).at[index].add(1, mode="drop")
    return Groups(index, first, sizes)


def _per_sample(kernels: jax.Array, groups: Groups) -> jax.Array:
    """Each sample's kernel gathered from the per-group ones; overflowing samples get a NaN kernel."""
    return kernels.at[groups.index].get(mode="fill", fill_value=jnp.nan)


def dense_gathered(x: jax.Array, kernels: jax.Array, bias: jax.Array | None, groups: Groups, **settings) -> jax.Array:
    """`dense_per_sample` on per-sample kernels gathered from the per-group ones: the generator runs on `slots`
    conditions instead of `batch`, but the `[batch, *kernel]` stack is still written (by the gather) and read."""
    return dense_per_sample(x, _per_sample(kernels, groups), bias, **settings)


def dense_ragged(x: jax.Array, kernels: jax.Array, bias: jax.Array | None, groups: Groups, *,
                 num_contracting: int = 1, dtype: Any = None, precision: Any = None) -> jax.Array:
    """`y[b] = x[b] . kernels[group[b]] + bias` as one grouped product, `lax.ragged_dot` over the rows of the batch
    ordered by group: no per-sample kernel exists anywhere. A batch that is not contiguous is sorted here and
    unsorted after (`ConditionAwareModel` sorts once per call instead). Rows of overflowing samples are NaN.

    What it costs depends on the backend's ragged dot: XLA's GPU compiler rewrites it into a dense product over all
    groups with masked rows (`slots` x the layer's MACs) unless the cuDNN grouped-matmul fusion is switched on
    (`xla_gpu_experimental_use_ragged_dot_fusion`); the CAN latency benchmark times both.
    """
    batch = x.shape[0]
    in_shape = kernels.shape[1:1 + num_contracting]
    if (kernels.shape[0] != groups.slots or groups.index.shape != (batch,) or x.ndim <= num_contracting
            or x.shape[x.ndim - num_contracting:] != in_shape):
        raise ValueError(f"per-group kernels {kernels.shape} ([{groups.slots} groups, *in, *out], {num_contracting} "
                         f"contracting axes) do not fit x {x.shape} ([batch {groups.index.shape[0]}, ..., *in])")
    x, kernels, bias = nn.dtypes.promote_dtype(x, kernels, bias, dtype=dtype)
    order = None if groups.contiguous else jnp.argsort(groups.index, stable=True)
    index = groups.index if order is None else groups.index[order]
    rows_shape = x.shape[1:x.ndim - num_contracting]
    rows, out_shape = math.prod(rows_shape), kernels.shape[1 + num_contracting:]
    lhs = (x if order is None else x[order]).reshape(batch * rows, math.prod(in_shape))
    rhs = kernels.reshape(groups.slots, math.prod(in_shape), math.prod(out_shape))
    y = lax.ragged_dot(lhs, rhs, groups.sizes * rows, precision=precision)
    y = y.reshape(batch, *rows_shape, *out_shape)
    y = jnp.where((index >= groups.slots).reshape(batch, *(1,) * (y.ndim - 1)), jnp.nan, y)
    y = y if order is None else y[jnp.argsort(order)]
    return y if bias is None else y + bias


# How a dense layer applies per-group kernels (`DistinctConditions.product`): name -> (product, wants the batch
# sorted by group). Convolutions always gather (their kernels are small: a patch embedding, a depthwise window).
DENSE_PRODUCTS: dict[str, tuple[Callable[..., jax.Array], bool]] = {"gather": (dense_gathered, False),
                                                                    "ragged": (dense_ragged, True)}


@dataclasses.dataclass(frozen=True)
class DistinctConditions:
    """Opt-in: generate condition-aware kernels once per distinct condition of the batch, then apply them per sample.

    Identity of conditions. Two samples share kernels only when their conditions are *exactly* equal:
    `ConditionAwareModel` compares the integer class label and the timestep's bit pattern (the condition embedding
    is a function of these two and the parameters, so equal keys give equal embeddings for every parameter value:
    outputs and all gradients equal the per-sample path's). A standalone layer compares the caller's
    `condition_ids`, by default the bit pattern of the condition embedding rows: exact in the forward pass and for
    the layer's own parameters, but the gradient that flows back into `cond` lands on one sample of each group, so
    upstream parameters get the per-sample path's gradient only where equal rows come from equal inputs (not when
    two different conditions happen to embed to the same bits, e.g. through a zero-initialised embedding). Pass ids
    when that matters.

    max_distinct: the most distinct conditions a batch may hold (static: it sizes the kernel stack), default the
        batch size. A sampling step of a guided batch knows it (labels + the null label, one shared timestep): say
        so at the call (`max_distinct=` of the layer or model call overrides this field). More distinct conditions
        than that is a ValueError where the ids are concrete (outside jit); under jit it cannot be checked while
        tracing, and the samples beyond the limit come out NaN (a trainer's NaN guard stops on it) rather than
        silently wrong.
    product: a `DENSE_PRODUCTS` name: "gather" (per-sample kernels gathered from the per-group ones, then the
        per-sample batched product) or "ragged" (`lax.ragged_dot` on the batch sorted by group; no per-sample stack).
    """

    max_distinct: int | None = None
    product: str = "gather"

    def __post_init__(self):
        if self.product not in DENSE_PRODUCTS:
            raise ValueError(f"DistinctConditions.product must be one of {sorted(DENSE_PRODUCTS)}; got "
                             f"{self.product!r}")
        if self.max_distinct is not None and (not isinstance(self.max_distinct, int) or self.max_distinct < 1):
            raise ValueError(f"DistinctConditions.max_distinct must be a positive int or None (the batch size); got "
                             f"{self.max_distinct!r}")

    @property
    def sorts_batch(self) -> bool:
        return DENSE_PRODUCTS[self.product][1]

    def groups(self, ids: jax.Array, max_distinct: int | None, where: str) -> Groups:
        return group_conditions(ids, self.max_distinct if max_distinct is None else max_distinct, where=where)


def _layer_name(layer: nn.Module) -> str:
    return "/".join(layer.path) or type(layer).__name__


def dense_fused(x: jax.Array, kernel: jax.Array, h: jax.Array, deltas: jax.Array, bias: jax.Array | None, *,
                num_contracting: int = 1, dtype: Any = None, precision: Any = None) -> jax.Array:
    """`y[b] = x[b] . (kernel + sum_j h[b, j] deltas[j]) + bias` through `pallas_kernels.can_matmul`, which builds
    each sample's kernel tile by tile on chip: no `[batch, *kernel]` stack in memory. Same layouts as
    `dense_per_sample` (kernel `[*in_shape, *out_shape]`, deltas `[terms, *kernel.shape]`); the op accumulates in
    float32 whatever `precision` says."""
    del precision
    batch, in_shape = x.shape[0], kernel.shape[:num_contracting]
    if (x.ndim <= num_contracting or x.shape[x.ndim - num_contracting:] != in_shape or h.shape[0] != batch
            or deltas.shape != (h.shape[1], *kernel.shape)):
        raise ValueError(f"fused condition-aware product: x {x.shape} ([batch, ..., *in]), kernel {kernel.shape} "
                         f"({num_contracting} contracting axes), h {h.shape} ([batch, terms]) and deltas "
                         f"{deltas.shape} ([terms, *kernel]) do not fit")
    x, kernel, h, deltas, bias = nn.dtypes.promote_dtype(x, kernel, h, deltas, bias, dtype=dtype)
    rows_shape, out_shape = x.shape[1:x.ndim - num_contracting], kernel.shape[num_contracting:]
    k, n = math.prod(in_shape), math.prod(out_shape)
    y = can_matmul(x.reshape(batch, math.prod(rows_shape), k), kernel.reshape(k, n), h,
                   deltas.reshape(h.shape[1], k, n))
    y = y.reshape(batch, *rows_shape, *out_shape)
    return y if bias is None else y + bias


def apply_dense(layer: nn.Module, x: jax.Array, kernel: jax.Array, bias: jax.Array | None, cond: jax.Array,
                weights: WeightGenerator, groups: Groups | None = None, product: str = "gather",
                num_contracting: int = 1, fused: bool = False) -> jax.Array:
    """A condition-aware dense layer's output: per-sample kernels (`groups` None; formed in memory, or on chip by
    the fused product when `fused`) or per-group kernels applied by `DENSE_PRODUCTS[product]`."""
    settings = dict(num_contracting=num_contracting, dtype=layer.dtype, precision=layer.precision)
    if groups is None and fused:
        (static,) = _in_compute_dtype(layer, kernel)
        return dense_fused(x, static, *weights.factors(layer, kernel, cond), bias, **settings)
    if groups is None:
        return dense_per_sample(x, weights.kernels(layer, kernel, cond), bias, **settings)
    _check_cond(cond, layer)
    product_fn = DENSE_PRODUCTS[product][0]
    return product_fn(x, weights.kernels(layer, kernel, cond[groups.first]), bias, groups, **settings)


def apply_conv(layer: nn.Module, x: jax.Array, kernel: jax.Array, bias: jax.Array | None, cond: jax.Array,
               weights: WeightGenerator, groups: Groups | None = None) -> jax.Array:
    """A condition-aware convolution's output: per-sample kernels, or per-group kernels gathered per sample."""
    settings = conv_settings(layer)
    if groups is None:
        return conv_per_sample(x, weights.kernels(layer, kernel, cond), bias, **settings)
    _check_cond(cond, layer)
    return conv_per_sample(x, _per_sample(weights.kernels(layer, kernel, cond[groups.first]), groups), bias,
                           **settings)


def check_fused(fused: bool, distinct: DistinctConditions | None, where: str) -> None:
    if fused and distinct is not None:
        raise ValueError(f"{where}: fused=True forms one kernel per sample on chip, distinct= one per condition in "
                         "memory; choose one")


def _layer_groups(layer: nn.Module, cond: jax.Array, condition_ids: jax.Array | None,
                  max_distinct: int | None) -> Groups | None:
    """The standalone layers' grouping: None without `distinct`; else by `condition_ids` or the bits of `cond`."""
    if layer.distinct is None:
        return None
    _check_cond(cond, layer)
    ids = exact_bits(cond if condition_ids is None else condition_ids)
    if ids.shape[0] != cond.shape[0]:
        raise ValueError(f"condition-aware layer {_layer_name(layer)}: condition_ids {condition_ids.shape} need one "
                         f"row per sample of cond {cond.shape}")
    return layer.distinct.groups(ids, max_distinct, _layer_name(layer))


class ConditionAwareDense(nn.Module):
    """`nn.Dense(features)` whose kernel is generated per sample from the condition: `layer(x [batch, ..., in], cond
    [batch, cond_dim])` -> `[batch, ..., features]`. `weights` picks the generator (`CAN()`, `CAN(rank)`, `AKS(k)`).

    With `distinct=DistinctConditions(...)` kernels are generated per distinct condition: `layer(x, cond,
    condition_ids=None, max_distinct=None)`, ids `[batch]` or `[batch, k]` (default: the bits of `cond`), and
    `max_distinct` the caller's bound for this call (both ignored without `distinct`). `fused=True` keeps one kernel
    per sample but forms it on chip (`dense_fused`); it excludes `distinct`."""

    features: int
    weights: WeightGenerator = CAN()
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    distinct: DistinctConditions | None = None
    fused: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, condition_ids: jax.Array | None = None,
                 max_distinct: int | None = None) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        check_fused(self.fused, self.distinct, _layer_name(self))
        groups = _layer_groups(self, cond, condition_ids, max_distinct)
        product = self.distinct.product if self.distinct is not None else "gather"
        return apply_dense(self, x, kernel, bias, cond, self.weights, groups, product, fused=self.fused)


class ConditionAwareConv(nn.Module):
    """`nn.Conv(features, kernel_size, feature_group_count=...)` with a per-sample generated kernel: `layer(x [batch,
    *spatial, in], cond [batch, cond_dim])`. Depthwise when `feature_group_count` equals the input channels.
    `distinct`, `condition_ids`, `max_distinct`: as `ConditionAwareDense` (the per-group kernels are gathered per
    sample whatever the product: conv kernels are small)."""

    features: int
    kernel_size: int | Sequence[int]
    feature_group_count: int = 1
    weights: WeightGenerator = CAN()
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence[Any] = "SAME"
    input_dilation: int | Sequence[int] = 1
    kernel_dilation: int | Sequence[int] = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    distinct: DistinctConditions | None = None

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, condition_ids: jax.Array | None = None,
                 max_distinct: int | None = None) -> jax.Array:
        window = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        if x.ndim != len(window) + 2 or x.shape[-1] % self.feature_group_count:
            raise ValueError(f"ConditionAwareConv with a {window} window and {self.feature_group_count} groups takes "
                             f"x [batch, *{len(window)} spatial axes, channels divisible by the groups]; got {x.shape}")
        kernel = self.param("kernel", self.kernel_init,
                            (*window, x.shape[-1] // self.feature_group_count, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        groups = _layer_groups(self, cond, condition_ids, max_distinct)
        return apply_conv(self, x, kernel, bias, cond, self.weights, groups)
