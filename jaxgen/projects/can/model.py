"""CAN applied to existing backbones (DiT, U-ViT, any `model(x, t, y)`) through placement rules, without forking them.

`ConditionAwareModel(backbone, num_classes, width, rules, weights)` embeds the condition itself (timestep embedding +
class embedding, SiLU: the vector DiT's adaLN reads), then calls the backbone under `flax.linen.intercept_methods`.
The interceptor sees every module call; a layer whose path (relative to the backbone, e.g. `blocks/attn/out`) fully
matches one of the `rules` (regular expressions) is computed with per-sample kernels from `weights`
(`jaxgen.projects.can.layers.CAN` or `AKS`). Its generator parameters are created in the layer's own scope, so they sit
next to its kernel (`backbone/blocks/attn/out/can_generator`) and, inside `nn.scan`, are stacked per layer like it.
Everything else runs as the backbone wrote it.

The backbone keeps its own conditioning (DiT's adaLN, U-ViT's label and time tokens): CAN is added to it, as in the
paper's "adaLN + CAN" models. The paper makes a subset of layers condition-aware (patch embedding, output
projections, depthwise convs) and reports that doing it everywhere is both costlier and worse; the recipes' rules
(configs/can/placement/*.gin) write that subset down for each backbone.

Rules fail loudly: one that matches no layer, matches a module that is not `nn.Dense`, `nn.DenseGeneral` or
`nn.Conv`, or is not a valid regular expression raises a ValueError naming the rule and the layers it could name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.embeddings import LabelEmbedding, TimestepEmbedding
from jaxgen.projects.can.layers import (CAN, DistinctConditions, Groups, WeightGenerator, check_fused, apply_conv,
                                        apply_dense, conv_settings, exact_bits)


def _static_parameters(layer: nn.Module, next_fun: Callable, args, kwargs) -> tuple[jax.Array, jax.Array | None]:
    """The layer's own kernel and bias; on its first call (init) the layer runs once to create them as it would."""
    if not layer.has_variable("params", "kernel"):
        next_fun(*args, **kwargs)
    bias = nn.unbox(layer.get_variable("params", "bias")) if layer.use_bias else None
    return nn.unbox(layer.get_variable("params", "kernel")), bias


def _dense(layer: nn.Dense, next_fun, args, kwargs, placement: Placement) -> jax.Array:
    kernel, bias = _static_parameters(layer, next_fun, args, kwargs)
    return placement.dense(layer, args[0], kernel, bias)


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, Sequence) else (value,)


def _dense_general(layer: nn.DenseGeneral, next_fun, args, kwargs, placement: Placement) -> jax.Array:
    x = args[0]
    axes = sorted(a % x.ndim for a in _as_tuple(layer.axis))
    if _as_tuple(layer.batch_dims) or axes != list(range(x.ndim - len(axes), x.ndim)):
        raise ValueError(f"condition-aware DenseGeneral {'/'.join(layer.path)}: only layers contracting trailing "
                         f"axes without batch_dims are supported; got axis={layer.axis}, batch_dims="
                         f"{layer.batch_dims} for input {x.shape}")
    kernel, bias = _static_parameters(layer, next_fun, args, kwargs)
    return placement.dense(layer, x, kernel, bias, num_contracting=len(axes))


def _conv(layer: nn.Conv, next_fun, args, kwargs, placement: Placement) -> jax.Array:
    x, settings = args[0], conv_settings(layer)
    if x.ndim != len(settings["strides"]) + 2 or layer.mask is not None:
        raise ValueError(f"condition-aware Conv {'/'.join(layer.path)}: needs input [batch, *spatial, channels] and "
                         f"no kernel mask; got input {x.shape}, mask {'set' if layer.mask is not None else 'None'}")
    kernel, bias = _static_parameters(layer, next_fun, args, kwargs)
    return apply_conv(layer, x, kernel, bias, placement.cond, placement.weights, placement.groups)


# The layer types a rule may make condition-aware (exact types: ConvTranspose or ConvLocal compute something else).
LAYER_TYPES: dict[type, Callable[..., jax.Array]] = {nn.Dense: _dense, nn.DenseGeneral: _dense_general,
                                                     nn.Conv: _conv}


def compile_rules(rules: Sequence[str]) -> tuple[re.Pattern, ...]:
    """The rules as full-match patterns; an empty list, a non-string or an invalid expression is a ValueError."""
    if isinstance(rules, str) or not rules:
        raise ValueError(f"placement rules must be a non-empty list of regular expressions over layer paths such as "
                         f"'blocks/attn/out'; got {rules!r}")
    compiled = []
    for rule in rules:
        if not isinstance(rule, str) or not rule:
            raise ValueError(f"placement rule {rule!r} is not a non-empty string")
        try:
            compiled.append(re.compile(rule))
        except re.error as err:
            raise ValueError(f"placement rule {rule!r} is not a valid regular expression: {err}") from None
    return tuple(compiled)


class Placement:
    """The interceptor of one backbone call: condition-aware computation for the layers the rules match.

    `matched` maps each rule to the layer paths it matched; `layers` collects every layer path a rule could name
    (the Dense, DenseGeneral and Conv layers under the backbone), for error messages.
    """

    def __init__(self, rules: Sequence[re.Pattern], weights: WeightGenerator, cond: jax.Array,
                 prefix: tuple[str, ...], groups: Groups | None = None, product: str = "gather",
                 fused: bool = False):
        self.rules, self.weights, self.cond, self.prefix = tuple(rules), weights, cond, prefix
        self.groups, self.product, self.fused = groups, product, fused
        self.matched: dict[str, set[str]] = {rule.pattern: set() for rule in self.rules}
        self.layers: set[str] = set()

    def __call__(self, next_fun, args, kwargs, context):
        module = context.module
        path = module.path
        if context.method_name != "__call__" or len(path) <= len(self.prefix) or path[:len(self.prefix)] != self.prefix:
            return next_fun(*args, **kwargs)
        name = "/".join(path[len(self.prefix):])
        apply = LAYER_TYPES.get(type(module))
        if apply is not None:
            self.layers.add(name)
        hits = [rule.pattern for rule in self.rules if rule.fullmatch(name)]
        if not hits:
            return next_fun(*args, **kwargs)
        if apply is None:
            raise ValueError(f"placement rule(s) {hits} match {name!r}, a {type(module).__name__}: condition-aware "
                             f"weights replace the kernel of an nn.Dense, nn.DenseGeneral or nn.Conv layer only; "
                             f"narrow the rule to such layers (e.g. {name}/<layer name>)")
        for hit in hits:
            self.matched[hit].add(name)
        return apply(module, next_fun, args, kwargs, self)

    def dense(self, layer: nn.Module, x: jax.Array, kernel: jax.Array, bias: jax.Array | None,
              num_contracting: int = 1) -> jax.Array:
        return apply_dense(layer, x, kernel, bias, self.cond, self.weights, self.groups, self.product,
                           num_contracting, self.fused)

    def check_all_matched(self, backbone: str) -> None:
        unmatched = [rule for rule, names in self.matched.items() if not names]
        if unmatched:
            raise ValueError(f"placement rule(s) {unmatched} match no layer of {backbone} (rules fully match paths "
                             f"relative to the backbone); its Dense/DenseGeneral/Conv layers are "
                             f"{sorted(self.layers)}")


class ConditionAwareModel(nn.Module):
    """`model(x, t, y)` -> the backbone's output, with the layers matched by `rules` condition-aware.

    backbone: a module called as `backbone(x, t, y)` (`jaxgen.nn.dit.DiT`, `jaxgen.nn.uvit.UViT`); its parameters
        sit under `backbone/`, exactly those it has alone.
    num_classes: the real classes; label `num_classes` is the classifier-free guidance null label (the condition
        embedding table has `num_classes + 1` rows, as DiT's).
    width: the condition embedding's size (the backbone's width in the paper).
    rules: regular expressions, each fully matching paths like `blocks/attn/out` (see the module docstring).
    weights: `CAN(rank)` or `AKS(num_kernels)`.
    distinct: None (kernels per sample) or `DistinctConditions(...)`: kernels per distinct (label, timestep) pair of
        the batch; `model(x, t, y, max_distinct=k)` gives the caller's bound for one call (ignored when None).
        With a product that wants the batch sorted by condition ("ragged") the model sorts x, t, y once on entry
        and restores the order of its output, so every layer sees contiguous groups.
    fused: dense layers keep one kernel per sample but form it on chip (`pallas_kernels.can_matmul` through
        `layers.dense_fused`; convolutions as before); excludes `distinct`.
    """

    backbone: nn.Module
    num_classes: int
    width: int
    rules: Sequence[str]
    weights: WeightGenerator = CAN()
    frequency_dim: int = 256
    distinct: DistinctConditions | None = None
    fused: bool = False

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(self.rules) if not isinstance(self.rules, str) else self.rules)
        compile_rules(self.rules)
        check_fused(self.fused, self.distinct, type(self).__name__)
        super().__post_init__()

    def condition(self, t: jax.Array, y: jax.Array) -> jax.Array:
        """The condition the generators read: `silu(timestep embedding(t) + class embedding(y))`, `[batch, width]`."""
        c = TimestepEmbedding(self.width, frequency_dim=self.frequency_dim, name="t_embed")(t)
        return nn.silu(c + LabelEmbedding(self.num_classes, self.width, name="class_embed")(y))

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, max_distinct: int | None = None) -> jax.Array:
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(f"ConditionAwareModel takes t [{x.shape[0]}] and labels y [{x.shape[0]}] for x "
                             f"{x.shape}; got t {t.shape}, y {y.shape}")
        groups, order, product = None, None, "gather"
        if self.distinct is not None:
            ids = jnp.concatenate([exact_bits(y), exact_bits(t)], axis=1)
            groups, product = self.distinct.groups(ids, max_distinct, type(self).__name__), self.distinct.product
            if self.distinct.sorts_batch:
                order, groups = groups.sorted_by_group()
                x, t, y = x[order], t[order], y[order]
        placement = Placement(compile_rules(self.rules), self.weights, self.condition(t, y),
                              (*self.path, "backbone"), groups, product, self.fused)
        with nn.intercept_methods(placement):
            out = self.backbone(x, t, y)
        placement.check_all_matched(type(self.backbone).__name__)
        return out if order is None else out[jnp.argsort(order)]
