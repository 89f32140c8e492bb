"""LoRA on a quantized model without re-quantization (SVDQuant section 4.4; nunchaku's LoRA loading).

A LoRA adds `strength * scale * x A B` (`A [K, r']` down, `B [r', N]` up) to a linear layer. An SVDQuant layer
already carries a 16-bit low-rank branch `(x L_1 / s) L_2`, so the LoRA joins it by concatenation along the rank:
`down <- [L_1 / s, A]`, `up <- [L_2; strength * scale * B]`. In the smoothed coordinates the layer's quantized part
sees, the LoRA's down-projection is `s A` (it reads `x / s`), stored divided by the smoothing factor, `s A / s = A`:
the down-projection is kept in raw-input coordinates, as the branch's own is. The 4-bit weights are untouched. A
shifted layer (unsigned post-GELU inputs) reads `x + shift`; the LoRA must not, so the bias absorbs
`-shift * 1^T A B`. W4A16 layers have no branch in their kernel: merging into them is refused (re-quantize instead).

Weights are read by name from safetensors files in the two common layouts:
- diffusers / PEFT: `<module>.lora_A.weight [r, in]`, `<module>.lora_B.weight [out, r]` (also diffusers' older
  `<module>.lora.down.weight` / `.lora.up.weight`), scale 1 unless an `<module>.alpha` entry gives `alpha / r`;
- kohya (sd-scripts): `<module>.lora_down.weight`, `<module>.lora_up.weight`, `<module>.alpha` (scale `alpha / r`).
`targets` map those module names to our layers (`dit_lora_targets` for `jaxgen.nn.dit.DiT` with diffusers' names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.svdquant.linear import QuantizedLinear
from jaxgen.projects.svdquant.model import VARIABLE

_HIGHEST = jax.lax.Precision.HIGHEST

# (down suffix, up suffix) of each layout.
_LAYOUTS = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
            (".lora_down.weight", ".lora_up.weight"))


@dataclasses.dataclass(frozen=True)
class Lora:
    """One layer's LoRA: `down [K, r]`, `up [r, N]` (our `[in, out]` convention), `scale` (alpha / r, or 1)."""

    down: np.ndarray
    up: np.ndarray
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class LoraTarget:
    """Where a LoRA module lands: the layer `path`, its `index` in a scan's stack (None: not stacked), and the output
    `columns` `(start, stop)` it covers in a fused layer (the DiT's qkv), None for all."""

    path: str
    index: int | None = None
    columns: tuple[int, int] | None = None


def read_lora_safetensors(path: str | Path) -> dict[str, Lora]:
    """`{module name: Lora}` from a diffusers/PEFT or kohya LoRA file (layouts in the module docstring)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    loras = {}
    for name in tensors:
        for down_suffix, up_suffix in _LAYOUTS:
            if not name.endswith(down_suffix):
                continue
            module = name[:-len(down_suffix)]
            if module + up_suffix not in tensors:
                raise ValueError(f"{path}: {name} has no matching {module + up_suffix}")
            down = tensors[name].astype(np.float32).T  # [r, in] -> [in, r]
            up = tensors[module + up_suffix].astype(np.float32).T  # [out, r] -> [r, out]
            if down.ndim != 2 or up.shape[0] != down.shape[1]:
                raise ValueError(f"{path}: {module} has down {tensors[name].shape} and up "
                                 f"{tensors[module + up_suffix].shape}, not [r, in] and [out, r] linear LoRA factors")
            alpha = tensors.get(module + ".alpha")
            loras[module] = Lora(down, up, 1.0 if alpha is None else float(alpha.reshape(())) / down.shape[1])
    if not loras:
        raise ValueError(f"{path}: no LoRA factors found (expected names ending in "
                         f"{[d for d, _ in _LAYOUTS]} and their up-projections)")
    return loras


def merge_into_layer(layer: QuantizedLinear, down: jax.Array, up: jax.Array) -> QuantizedLinear:
    """`layer` plus `x down up` (already scaled; stacked like the layer's arrays), joined to its low-rank branch."""
    if layer.activations == "float":
        raise ValueError(f"a W4A16 layer ({layer.method}) has no low-rank branch in its kernel to merge a LoRA into; "
                         f"re-quantize it with the LoRA fused, or quantize the layer with a W4A4 scheme")
    k, n = layer.in_features, layer.out_features
    if down.shape[-2] != k or up.shape[-1] != n or down.shape[-1] != up.shape[-2]:
        raise ValueError(f"LoRA down {down.shape} / up {up.shape} do not fit a [{k}, {n}] layer")
    down, up = jnp.asarray(down, jnp.float32), jnp.asarray(up, jnp.float32)
    bias = layer.bias
    if layer.shift:  # the branch reads x + shift; the LoRA reads x
        correction = layer.shift * jnp.einsum("...r,...rn->...n", jnp.sum(down, axis=-2), up, precision=_HIGHEST)
        bias = (jnp.zeros(up.shape[:-2] + (n,), jnp.float32) if bias is None else bias) - correction
    if layer.lowrank_down is None:
        new_down, new_up = down, up
    else:
        new_down = jnp.concatenate([layer.lowrank_down, down], axis=-1)
        new_up = jnp.concatenate([layer.lowrank_up, up], axis=-2)
    return layer.replace(lowrank_down=new_down, lowrank_up=new_up, bias=bias)


def _layer_of(params: Mapping, path: str) -> QuantizedLinear:
    node = params
    for part in path.split("/"):
        if part not in node:
            raise ValueError(f"LoRA target layer {path!r} is not in the parameters (no {part!r})")
        node = node[part]
    if VARIABLE not in node:
        raise ValueError(f"LoRA target layer {path!r} is not quantized (16-bit layers take LoRAs the usual way)")
    return node[VARIABLE]


def merge_loras(variables: Mapping, loras: Sequence[tuple[Mapping[str, Lora], float]],
                targets: Mapping[str, LoraTarget]) -> dict:
    """Quantized variables (`QuantizedModel.params`) with each `(loras, strength)` merged into the low-rank branches
    of the layers `targets` names. Every LoRA module must have a target; modules hitting one stacked layer at
    different indices are zero-padded per index, so the stack keeps one rank."""
    per_layer: dict[str, list[tuple[LoraTarget, Lora, float]]] = {}
    for lora, strength in loras:
        unknown = sorted(set(lora) - set(targets))
        if unknown:
            raise ValueError(f"LoRA modules {unknown[:5]}{' ...' if len(unknown) > 5 else ''} have no target layer; "
                             f"targets know {sorted(targets)[:5]} ...")
        for name, weights in lora.items():
            per_layer.setdefault(targets[name].path, []).append((targets[name], weights, strength))
    params = jax.tree.map(lambda a: a, dict(variables["params"]), is_leaf=lambda x: isinstance(x, QuantizedLinear))
    for path, entries in per_layer.items():
        layer = _layer_of(params, path)
        stack = layer.w_packed.shape[:-2]
        downs, ups = [], []
        for target, weights, strength in entries:
            if (target.index is None) != (not stack):
                raise ValueError(f"LoRA target {target} for layer {path!r} with stack {stack}: give index exactly "
                                 f"when the layer is stacked")
            columns = target.columns or (0, layer.out_features)
            rank = weights.down.shape[1]
            if weights.down.shape[0] != layer.in_features or weights.up.shape[1] != columns[1] - columns[0]:
                raise ValueError(f"LoRA for {path!r} {target}: down {weights.down.shape} / up {weights.up.shape} "
                                 f"do not fit inputs {layer.in_features} and columns {columns}")
            down = np.zeros((*stack, layer.in_features, rank), np.float32)
            up = np.zeros((*stack, rank, layer.out_features), np.float32)
            at = () if target.index is None else (target.index,)
            down[at] = weights.down
            up[at][:, columns[0]:columns[1]] = strength * weights.scale * weights.up
            downs.append(down)
            ups.append(up)
        merged = merge_into_layer(layer, np.concatenate(downs, -1), np.concatenate(ups, -2))
        *parents, name = path.split("/")
        node = params
        for part in parents:
            node[part] = dict(node[part])
            node = node[part]
        node[name] = {VARIABLE: merged}
    return {**variables, "params": params}


def dit_lora_targets(depth: int, width: int) -> dict[str, LoraTarget]:
    """diffusers `DiTTransformer2DModel` module names -> our `jaxgen.nn.dit.DiT` layers (q, k, v into the fused qkv)."""
    targets = {}
    for i in range(depth):
        block = f"transformer_blocks.{i}."
        for j, name in enumerate("qkv"):
            targets[block + f"attn1.to_{name}"] = LoraTarget("blocks/attn/qkv", i, (j * width, (j + 1) * width))
        targets[block + "attn1.to_out.0"] = LoraTarget("blocks/attn/out", i)
        targets[block + "ff.net.0.proj"] = LoraTarget("blocks/Dense_0", i)
        targets[block + "ff.net.2"] = LoraTarget("blocks/Dense_1", i)
        targets[block + "norm1.linear"] = LoraTarget("blocks/adaln", i)
    return targets
