"""diffusers video transformers in Flax: a registry of ports keyed by config.json's `_class_name`, and one loader.

A port is (module from config, name table, example inputs). The name table maps each of our parameter paths to the
diffusers tensor names it is built from (`{i}` marks a per-block tensor, stacked on the scan's "layers" axis) and
the conversion. `from_diffusers` walks the module's abstract parameters (`jax.eval_shape`: nothing allocated), reads
each tensor lazily from the safetensors files (`jaxgen.nn.safetensors_io`: one file or the shards of an index),
converts it, casts it to the target dtype and places it straight into its shards, one parameter at a time (a
per-block tensor is cast block by block before the blocks are stacked), so a 14B checkpoint never sits in host
memory whole, let alone twice: the largest host buffer is one parameter stacked over the blocks (Wan-14B's MLP
input kernel, 40 x 5120 x 13824 in bf16: 5.7 GB). Tensors the table forgot, and parameters the table has
no row for, are errors rather than silent zeros.

Each port registers itself when its module is imported (`register_port`); `jaxgen.projects.svg` imports them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core import sharding as sharding_lib
from jaxgen.nn import safetensors_io

NameTable = Mapping[str, tuple[list[str], Callable[..., np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class Port:
    """module_from_config(config, **overrides) -> module; name_table(module) -> NameTable; example_inputs(module) ->
    the positional inputs `module.init` is traced with (any small valid shape)."""

    module_from_config: Callable[..., nn.Module]
    name_table: Callable[[nn.Module], NameTable]
    example_inputs: Callable[[nn.Module], tuple]


PORTS: dict[str, Port] = {}


def register_port(class_name: str, port: Port) -> None:
    if class_name in PORTS:
        raise ValueError(f"a port of {class_name!r} is already registered")
    PORTS[class_name] = port


def get_port(class_name: str) -> Port:
    if class_name not in PORTS:
        close = difflib.get_close_matches(class_name, PORTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"no Flax port of diffusers class {class_name!r}; ported: {sorted(PORTS)}.{hint}")
    return PORTS[class_name]


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"from_diffusers: no config.json in {model_dir} (expected a save_pretrained folder)")
    config = json.loads(path.read_text())
    if "_class_name" not in config:
        raise ValueError(f"from_diffusers: {path} has no _class_name, so no port can be chosen")
    return config


def from_diffusers(model_dir: str | Path, *, dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                   compute_dtype: Any = None, **overrides) -> tuple[nn.Module, dict]:
    """`(module, {"params": ...})` from a diffusers `save_pretrained` folder, the port chosen by `_class_name`.

    Parameters come as `dtype` arrays, and the module computes in `compute_dtype` (default: `dtype`). With `mesh`,
    each parameter goes straight into the shards its logical axes give it (`jaxgen.core.sharding.LOGICAL_AXIS_RULES`);
    without, onto the default device. `overrides` set module fields that create no parameters
    (`attention_backend`, `attention_options`, `remat`).
    """
    config = read_config(model_dir)
    port = get_port(config["_class_name"])
    module = port.module_from_config(config, **{"dtype": compute_dtype or dtype, **overrides})
    reader = safetensors_io.open_checkpoint(model_dir, "diffusion_pytorch_model")
    boxed = jax.eval_shape(module.init, jax.random.key(0), *port.example_inputs(module))["params"]
    shardings = _flatten(sharding_lib.variable_shardings(boxed, mesh)) if mesh is not None else {}
    table = port.name_table(module)
    depth = module.depth
    params = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0]:
        path = "/".join(k.key for k in key_path)
        if path not in table:
            raise ValueError(f"from_diffusers: parameter {path} {leaf.shape} has no entry in the name table")
        names, convert = table[path]
        if "{i}" in names[0]:  # one tensor per block, cast one at a time, stacked on the scan's "layers" axis
            value = np.stack([np.asarray(convert(*(reader.get(n.format(i=i)) for n in names))).astype(dtype)
                              for i in range(depth)])
        else:
            value = np.asarray(convert(*(reader.get(n) for n in names))).astype(dtype)
        if value.shape != leaf.shape:
            raise ValueError(f"from_diffusers: {path} converts to {value.shape}, the module expects {leaf.shape}")
        params[path] = _place(value, shardings.get(path))
    leftover = sorted(set(reader.names) - reader.used)
    if leftover:
        raise ValueError(f"from_diffusers: {len(leftover)} tensors in {model_dir} map to nothing: {leftover[:5]}")
    return module, {"params": _unflatten(params)}


def num_params(module: nn.Module, port: Port) -> int:
    """Parameter count from shapes alone (`jax.eval_shape`: a 14B model costs nothing)."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), *port.example_inputs(module))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(abstract)))


def _place(value: np.ndarray, sharding):
    if sharding is None:
        return jnp.asarray(value)
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


# Conversions shared by the ports: torch Linear weight [out, in] -> Dense kernel [in, out], and friends.
def linear(w):
    return w.T


def same(x):
    return x


def heads_in(heads: int):
    """Linear [heads * head_dim, in] -> DenseGeneral kernel [in, heads, head_dim]."""
    return lambda w: w.T.reshape(w.shape[1], heads, -1)


def heads_bias(heads: int):
    return lambda b: b.reshape(heads, -1)


def heads_out(heads: int):
    """Linear [out, heads * head_dim] -> DenseGeneral kernel [heads, head_dim, out]."""
    return lambda w: w.T.reshape(heads, -1, w.shape[0])


def conv3d_patch(w):
    """Conv3d [width, c, pt, ph, pw] (stride = kernel) -> Dense on patches whose features are ordered (pt, ph, pw, c),
    as `jaxgen.projects.svg.model.patchify` lays them out."""
    return w.transpose(2, 3, 4, 1, 0).reshape(-1, w.shape[0])
