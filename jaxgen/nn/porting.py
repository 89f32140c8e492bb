"""Turning a diffusers checkpoint into the parameters of a Linen port, one parameter at a time.

A port describes its mapping as a name table: our "/"-joined parameter path -> (diffusers tensor names, conversion).
Names holding `{i}` are per-block tensors; the rows for blocks `0 .. depth - 1` are converted one by one and stacked
on the leading "layers" axis that `nn.scan` gives the port's blocks. `load_params` walks the module's abstract
parameters (from `jax.eval_shape`, nothing allocated), so a parameter the table forgets, a tensor that maps to
nothing, or a conversion with the wrong shape is an error naming the parameter, never a silent zero or a dropped
weight. Each value is cast to the target dtype and placed (onto its mesh shards when a mesh is given) before the
next tensor is read, so a 12B checkpoint never sits whole in host memory, let alone twice; a per-block tensor is cast
block by block before the blocks are stacked, so the largest host buffer is one parameter stacked over the blocks
in the target dtype (Wan-14B's MLP input kernel, 40 x 5120 x 13824 in bf16: 5.7 GB), never also a copy of it in the
checkpoint's dtype. Ports whose tensor names follow from the parameter path by a rule (DC-AE, SIGE's UNets) give
`load_variables`, the walk under `load_params`, a lookup function instead of a table; it walks every collection
(BatchNorm statistics too).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from jaxgen.core import sharding as sharding_lib
from jaxgen.nn import safetensors_io

# our path -> (diffusers names, conversion taking one array per name)
NameTable = Mapping[str, tuple[Sequence[str], Callable[..., np.ndarray]]]


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear weight `[out, in]` -> Dense kernel `[in, out]`."""
    return w.T


def conv(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight `[out, in/groups, kh, kw]` -> Conv kernel `[kh, kw, in/groups, out]`."""
    return w.transpose(2, 3, 1, 0)


def same(x: np.ndarray) -> np.ndarray:
    return x


def heads_in(heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Linear [heads * head_dim, in] (a q, k or v projection) -> DenseGeneral kernel [in, heads, head_dim]."""
    return lambda w: w.T.reshape(w.shape[1], heads, -1)


def heads_bias(heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """[heads * head_dim] -> [heads, head_dim] (a projection's bias, or a norm's scale over all heads)."""
    return lambda b: b.reshape(heads, -1)


def heads_out(heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Linear [out, heads * head_dim] (attention's output projection) -> DenseGeneral kernel [heads, head_dim, out]."""
    return lambda w: w.T.reshape(heads, -1, w.shape[0])


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a PyTorch state dict file (`.pth`/`.pt`, read through torch with `weights_only`), or of the same
    tensors saved as `.npz` or `.safetensors` (no torch needed): the single-file weights of non-diffusers ports
    (FID's Inception, LPIPS)."""
    if path.suffix == ".npz":
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    if path.suffix == ".safetensors":
        checkpoint = safetensors_io.Checkpoint([path])
        return {name: checkpoint.get(name) for name in checkpoint.names}
    if path.suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError as error:
            raise ImportError(f"Reading {path} (a PyTorch state dict) needs torch; install it, or save the same "
                              "tensors as .npz (np.savez(out, **{k: v.numpy() for k, v in state_dict.items()})) "
                              "where torch is installed") from error
        return {name: tensor.numpy() for name, tensor in torch.load(path, map_location="cpu",
                                                                    weights_only=True).items()}
    raise ValueError(f"Unknown weights format {path.suffix!r} of {path}: expected .pth/.pt (a PyTorch state dict), "
                     ".npz or .safetensors")


def read_config(model_dir: str | Path, class_names: Sequence[str]) -> dict:
    """config.json of a diffusers `save_pretrained` folder, checked to be one of `class_names`."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"from_diffusers: no config.json in {model_dir} (expected a save_pretrained folder)")
    config = json.loads(config_path.read_text())
    if config.get("_class_name") not in class_names:
        raise ValueError(f"from_diffusers: {config_path} describes a {config.get('_class_name')!r}; this port reads "
                         f"{' or '.join(repr(n) for n in class_names)}")
    return config


def load_params(reader: safetensors_io.Checkpoint, boxed_params, table: NameTable, depth_of: Callable[[str], int],
                *, dtype: Any, mesh: jax.sharding.Mesh | None = None, source: str = "") -> dict:
    """`{"params": ...}` for the abstract (Flax-boxed) `boxed_params`, read from `reader` through `table`.

    depth_of(path): how many blocks a `{i}` row of `path` stacks. With `mesh`, each parameter goes straight into the
    shards its logical axes give it (`jaxgen.core.sharding.LOGICAL_AXIS_RULES`); without, onto the default device.
    """
    def lookup(path: str, leaf) -> np.ndarray:
        if path not in table:
            raise ValueError(f"from_diffusers: parameter {path} {leaf.shape} has no entry in the name table")
        names, convert = table[path]
        if "{i}" in names[0]:  # each block cast on its own, so the stack is the only host copy of the parameter
            return np.stack([np.asarray(convert(*(reader.get(n.format(i=i)) for n in names))).astype(dtype)
                             for i in range(depth_of(path))])
        return np.asarray(convert(*(reader.get(n) for n in names))).astype(dtype)

    return {"params": load_variables(reader, boxed_params, lookup, dtype=dtype, mesh=mesh, source=source)}


def load_variables(reader: safetensors_io.Checkpoint, boxed_variables, lookup: Callable[[str, Any], np.ndarray], *,
                   dtype: Any, mesh: jax.sharding.Mesh | None = None, source: str = "",
                   unused_suffixes: tuple[str, ...] = ()) -> dict:
    """The variables tree of the abstract (Flax-boxed) `boxed_variables`, each leaf read from `reader` by `lookup`.

    lookup(path, leaf): the converted value of the leaf at the "/"-joined `path` (read through `reader.get`, so the
    tensors it uses are counted); it raises for a path it cannot name. Each value must have the leaf's shape; it is
    cast to `dtype` and placed (onto its shards over `mesh` when given) before the next is read. Every tensor of the
    checkpoint must be used, except names ending in one of `unused_suffixes` (e.g. BatchNorm's counters).
    The name-table ports go through `load_params`; ports whose tensor names follow from the path by rules call this.
    """
    abstract = traverse_util.flatten_dict(nn.unbox(boxed_variables), sep="/")
    shardings = (traverse_util.flatten_dict(sharding_lib.variable_shardings(boxed_variables, mesh), sep="/")
                 if mesh is not None else {})
    variables = {}
    for path, leaf in abstract.items():
        value = lookup(path, leaf)
        if value.shape != leaf.shape:
            raise ValueError(f"from_diffusers: {path} converts to {value.shape}, the module expects {leaf.shape}; "
                             f"config.json and the weights disagree")
        variables[path] = _place(value.astype(dtype, copy=False), shardings.get(path))
    leftover = sorted(n for n in set(reader.names) - reader.used if not n.endswith(unused_suffixes))
    if leftover:
        raise ValueError(f"from_diffusers: {len(leftover)} tensors in {source} map to nothing: {leftover[:5]}")
    return traverse_util.unflatten_dict(variables, sep="/")


def _place(value: np.ndarray, sharding):
    if sharding is None:
        return jax.device_put(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
