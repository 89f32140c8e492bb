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

The generated delta covers the kernel only; biases stay static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding
from jax import lax


class WeightGenerator(Protocol):
    """How a layer's kernel depends on the condition: `kernels(layer, kernel, cond)` -> `[batch, *kernel.shape]`.

    `layer` is the (bound) module whose kernel it is; the generator creates its parameters there (`layer.param`).
    """

    def kernels(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> jax.Array: ...


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

    def kernels(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> jax.Array:
        _check_cond(cond, layer)
        h = cond.astype(layer.param_dtype)
        if self.rank is not None:
            h = h @ layer.param("can_project", nn.initializers.lecun_normal(), (cond.shape[-1], self.rank),
                                layer.param_dtype)
        generator = layer.param("can_generator", nn.initializers.zeros, (h.shape[-1], kernel.size), layer.param_dtype)
        h, generator, kernel = _in_compute_dtype(layer, h, generator, kernel)
        return kernel[None] + (h @ generator).reshape(cond.shape[0], *kernel.shape)


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

    def kernels(self, layer: nn.Module, kernel: jax.Array, cond: jax.Array) -> jax.Array:
        _check_cond(cond, layer)
        router = layer.param("aks_router", nn.initializers.lecun_normal(), (cond.shape[-1], self.num_kernels),
                             layer.param_dtype)
        bank = layer.param("aks_bank", nn.initializers.zeros, (self.num_kernels, *kernel.shape), layer.param_dtype)
        mixture = jax.nn.softmax(cond.astype(layer.param_dtype) @ router, axis=-1)
        mixture, bank, kernel = _in_compute_dtype(layer, mixture, bank, kernel)
        return kernel[None] + jnp.tensordot(mixture, bank, axes=1)


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


class ConditionAwareDense(nn.Module):
    """`nn.Dense(features)` whose kernel is generated per sample from the condition: `layer(x [batch, ..., in], cond
    [batch, cond_dim])` -> `[batch, ..., features]`. `weights` picks the generator (`CAN()`, `CAN(rank)`, `AKS(k)`)."""

    features: int
    weights: WeightGenerator = CAN()
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        return dense_per_sample(x, self.weights.kernels(self, kernel, cond), bias, dtype=self.dtype,
                                precision=self.precision)


class ConditionAwareConv(nn.Module):
    """`nn.Conv(features, kernel_size, feature_group_count=...)` with a per-sample generated kernel: `layer(x [batch,
    *spatial, in], cond [batch, cond_dim])`. Depthwise when `feature_group_count` equals the input channels."""

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

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        settings = conv_settings(self)
        window = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        if x.ndim != len(window) + 2 or x.shape[-1] % self.feature_group_count:
            raise ValueError(f"ConditionAwareConv with a {window} window and {self.feature_group_count} groups takes "
                             f"x [batch, *{len(window)} spatial axes, channels divisible by the groups]; got {x.shape}")
        kernel = self.param("kernel", self.kernel_init,
                            (*window, x.shape[-1] // self.feature_group_count, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        return conv_per_sample(x, self.weights.kernels(self, kernel, cond), bias, **settings)
