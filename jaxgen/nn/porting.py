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
checkpoint's dtype.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxgen.core import sharding as sharding_lib
from jaxgen.nn import safetensors_io

# our path -> (diffusers names, conversion taking one array per name)
NameTable = Mapping[str, tuple[Sequence[str], Callable[..., np.ndarray]]]


def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear weight `[out, in]` -> Dense kernel `[in, out]`."""
    return w.T


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
    abstract = nn.unbox(boxed_params)
    shardings = _flatten(sharding_lib.variable_shardings(boxed_params, mesh)) if mesh is not None else {}
    params = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        path = "/".join(k.key for k in key_path)
        if path not in table:
            raise ValueError(f"from_diffusers: parameter {path} {leaf.shape} has no entry in the name table")
        names, convert = table[path]
        if "{i}" in names[0]:  # each block cast on its own, so the stack is the only host copy of the parameter
            value = np.stack([np.asarray(convert(*(reader.get(n.format(i=i)) for n in names))).astype(dtype)
                              for i in range(depth_of(path))])
        else:
            value = np.asarray(convert(*(reader.get(n) for n in names))).astype(dtype)
        if value.shape != leaf.shape:
            raise ValueError(f"from_diffusers: {path} converts to {value.shape} from {list(names)[:3]}, the module "
                             f"expects {leaf.shape}; config.json and the weights disagree")
        params[path] = _place(value, shardings.get(path))
    leftover = sorted(set(reader.names) - reader.used)
    if leftover:
        raise ValueError(f"from_diffusers: {len(leftover)} tensors in {source} map to nothing: {leftover[:5]}")
    return {"params": _unflatten(params)}


def _place(value: np.ndarray, sharding):
    if sharding is None:
        return jax.device_put(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _flatten(tree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))[0]
    return {"/".join(k.key for k in key_path): leaf for key_path, leaf in leaves}


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
