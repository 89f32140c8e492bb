"""`from_diffusers`: a diffusers `AutoencoderDC.save_pretrained` folder -> `(DCAE module, variables)`.

The module's parameter names mirror diffusers' module names, so the name of every tensor follows from the parameter
path by one rule: each "_<digits>" suffix of a module name is a list index (`down_blocks_1_0` -> `down_blocks.1.0`),
`kernel`/`scale` are PyTorch's `weight`, and BatchNorm's `mean`/`var` its `running_mean`/`running_var`. Conv kernels
go from `[out, in/groups, kh, kw]` to `[kh, kw, in/groups, out]` and linear ones from `[out, in]` to `[in, out]`.
Every tensor of the checkpoint must be used (BatchNorm's `num_batches_tracked` counters aside), so a module that
forgot a layer fails loudly instead of decoding with random weights.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn import porting, safetensors_io
from jaxgen.projects.dcae.model import DCAE

_CLASS_NAMES = ("AutoencoderDC",)
# config.json keys that do not shape the network: diffusers' bookkeeping, and the latent scaling factor (a diffusion
# model's business: `scaling_factor(model_dir)` reads it).
_IGNORED_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "scaling_factor"}
# diffusers switches the project-out/project-in shortcuts separately from the blocks' (always on there).
_PROJECT_SHORTCUTS = ("encoder_out_shortcut", "decoder_in_shortcut")
_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "weight"): "weight",
               ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def module_from_config(config: Mapping[str, Any], **overrides) -> DCAE:
    """Our `DCAE` for a diffusers `AutoencoderDC` config.json; `overrides` set `dtype` or `residual_shortcuts`."""
    fields = {f.name for f in dataclasses.fields(DCAE)} - {"parent", "name", "dtype", "residual_shortcuts"}
    unknown = sorted(set(config) - fields - _IGNORED_KEYS - set(_PROJECT_SHORTCUTS))
    if unknown:
        raise ValueError(f"from_diffusers: config keys {unknown} are not supported by DCAE (it reads {sorted(fields)})")
    project_shortcuts = {k: config.get(k, True) for k in _PROJECT_SHORTCUTS}
    if not all(project_shortcuts.values()):
        raise ValueError(f"from_diffusers: {project_shortcuts} is not supported: diffusers keeps the down/up blocks' "
                         f"shortcuts regardless, and DCAE switches all four shortcuts together (residual_shortcuts)")
    return DCAE(**{k: _tuples(v) for k, v in config.items() if k in fields}, **overrides)


def torch_name(collection: str, path: tuple[str, ...]) -> str:
    """The diffusers tensor name of the variable at `path` in `collection` ("params" or "batch_stats")."""
    *modules, leaf = path
    if (collection, leaf) not in _LEAF_NAMES:
        raise ValueError(f"from_diffusers: no PyTorch name for {collection}/{'/'.join(path)}")
    return ".".join([re.sub(r"_(\d+)", r".\1", m) for m in modules] + [_LEAF_NAMES[collection, leaf]])


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return porting.conv(value)
    if leaf == "kernel" and value.ndim == 2:
        return porting.linear(value)
    return value


def scaling_factor(model_dir: str | Path) -> float:
    """The latent scaling factor stored in the folder's config.json (1.0 when absent): diffusion models train on
    `latents * scaling_factor`."""
    return float(porting.read_config(model_dir, _CLASS_NAMES).get("scaling_factor", 1.0))


def from_diffusers(model_dir: str | Path, *, dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                   **overrides) -> tuple[DCAE, dict]:
    """`(module, variables)` from an `AutoencoderDC.save_pretrained` folder (config.json and
    `diffusion_pytorch_model.safetensors`, or its sharded index).

    Tensors are read, converted and placed one at a time (never the whole checkpoint in host memory), as `dtype`
    arrays, sharded by their logical axes over `mesh` when given. `variables` holds "params" and, for configs with
    BatchNorm (the official f32c32/f64c128/f128c512 decoders), "batch_stats": ready for
    `module.apply(variables, images, method="encode")`.
    """
    module = module_from_config(porting.read_config(model_dir, _CLASS_NAMES), **overrides)
    reader = safetensors_io.open_checkpoint(model_dir, "diffusion_pytorch_model")
    f = module.spatial_compression
    example = jax.ShapeDtypeStruct((1, f, f, module.in_channels), jnp.float32)
    boxed = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), example)

    def lookup(path: str, leaf) -> np.ndarray:
        collection, *rest = path.split("/")
        return _to_flax(reader.get(torch_name(collection, tuple(rest))), rest[-1])

    return module, porting.load_variables(reader, boxed, lookup, dtype=dtype, mesh=mesh, source=str(model_dir),
                                          unused_suffixes=("num_batches_tracked",))
