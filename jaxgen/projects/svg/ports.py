"""diffusers video transformers in Flax: a registry of ports keyed by config.json's `_class_name`.

A port is (module from config, name table, example inputs). The name table maps each of our parameter paths to the
diffusers tensor names it is built from (`{i}` marks a per-block tensor, stacked on the scan's "layers" axis) and
the conversion; `from_diffusers` picks the port by `_class_name` and loads through `jaxgen.nn.porting.load_params`,
the loader the image ports (DiT, FLUX.1) use: tensors are read lazily, converted, cast and placed into their shards
one parameter at a time (a per-block tensor block by block), so a 14B checkpoint never sits in host memory whole; the
largest host buffer is one parameter stacked over the blocks (Wan-14B's MLP input kernel, 40 x 5120 x 13824 in bf16:
5.7 GB). Tensors the table forgot, and parameters the table has no row for, are errors rather than silent zeros.

Each port registers itself when its module is imported (`register_port`); `jaxgen.projects.svg` imports them all.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn import porting, safetensors_io


@dataclasses.dataclass(frozen=True)
class Port:
    """module_from_config(config, **overrides) -> module; name_table(module) -> `jaxgen.nn.porting.NameTable`;
    example_inputs(module) -> the positional inputs `module.init` is traced with (any small valid shape), with
    example_kwargs(module) its keyword inputs; depth_of(module, path) -> how many blocks the `{i}` rows of parameter
    `path` stack (ports with one scan: `module.depth`)."""

    module_from_config: Callable[..., nn.Module]
    name_table: Callable[[nn.Module], porting.NameTable]
    example_inputs: Callable[[nn.Module], tuple]
    example_kwargs: Callable[[nn.Module], dict] = lambda module: {}
    depth_of: Callable[[nn.Module, str], int] = lambda module, path: module.depth


PORTS: dict[str, Port] = {}


def register_port(class_name: str, port: Port) -> None:
    if class_name in PORTS:
        raise ValueError(f"a port of {class_name!r} is already registered")
    PORTS[class_name] = port


def from_diffusers(model_dir: str | Path, *, dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                   compute_dtype: Any = None, **overrides) -> tuple[nn.Module, dict]:
    """`(module, {"params": ...})` from a diffusers `save_pretrained` folder, the port chosen by `_class_name`.

    Parameters come as `dtype` arrays, and the module computes in `compute_dtype` (default: `dtype`). With `mesh`,
    each parameter goes straight into the shards its logical axes give it (`jaxgen.core.sharding.LOGICAL_AXIS_RULES`);
    without, onto the default device. `overrides` set module fields that create no parameters
    (`attention_backend`, `attention_options`, `remat`).
    """
    config = porting.read_config(model_dir, sorted(PORTS))
    port = PORTS[config["_class_name"]]
    module = port.module_from_config(config, **{"dtype": compute_dtype or dtype, **overrides})
    reader = safetensors_io.open_checkpoint(model_dir, "diffusion_pytorch_model")
    boxed = jax.eval_shape(functools.partial(module.init, **port.example_kwargs(module)), jax.random.key(0),
                           *port.example_inputs(module))["params"]
    params = porting.load_params(reader, boxed, port.name_table(module), functools.partial(port.depth_of, module),
                                 dtype=dtype, mesh=mesh, source=str(model_dir))
    return module, params


def num_params(module: nn.Module, port: Port) -> int:
    """Parameter count from shapes alone (`jax.eval_shape`: a 14B model costs nothing)."""
    abstract = jax.eval_shape(functools.partial(module.init, **port.example_kwargs(module)), jax.random.key(0),
                              *port.example_inputs(module))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(abstract)))


def conv3d_patch(w):
    """Conv3d [width, c, pt, ph, pw] (stride = kernel) -> Dense on patches whose features are ordered (pt, ph, pw, c),
    as `jaxgen.projects.svg.model.patchify` lays them out."""
    return w.transpose(2, 3, 4, 1, 0).reshape(-1, w.shape[0])


def linear_patch_out(patch: Sequence[int], channels: int):
    """(kernel, bias) conversions of a `proj_out` Linear `[c * pt * ph * pw, width]` whose outputs are ordered channel
    first (CogVideoX, HunyuanVideo) -> a Dense on `[width, (pt, ph, pw, c)]`, the order `unpatchify` reads."""
    def kernel(w):
        return w.reshape(channels, *patch, -1).transpose(4, 1, 2, 3, 0).reshape(w.shape[1], -1)

    def bias(b):
        return b.reshape(channels, *patch).transpose(1, 2, 3, 0).reshape(-1)
    return kernel, bias
