"""Quantized models on disk: an orbax checkpoint, or one safetensors file with a `quantization_config` entry.

Both store the same flat view of `QuantizedModel.params`: every array under its parameter path (`params/blocks/attn/
qkv/svdquant/w_packed`), and a JSON `quantization_config` mapping each quantized layer's path to the static fields of
its `QuantizedLinear` (activations, shift, group size, method) plus a format tag. Loading rebuilds the same pytree,
so a save/load round trip is exact (codes, scales, branch and 16-bit tensors bit for bit). The execution backend
(`implementation`) is not stored: it belongs to the machine that loads the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from jaxgen.projects.svdquant.linear import QuantizedLinear
from jaxgen.projects.svdquant.model import VARIABLE

FORMAT = "jaxgen-svdquant/1"
CONFIG_KEY = "quantization_config"
_ARRAY_FIELDS = ("w_packed", "w_scales", "bias", "smooth", "lowrank_down", "lowrank_up")
_STATIC_FIELDS = ("activations", "shift", "group_size", "method")


def flatten(variables: Mapping) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`({path: array}, quantization_config)` of quantized variables (paths joined by "/")."""
    arrays, layers = {}, {}
    for path, node in traverse_util.flatten_dict(dict(variables), sep="/").items():
        if isinstance(node, QuantizedLinear):
            layers[path.rsplit("/", 1)[0]] = {name: getattr(node, name) for name in _STATIC_FIELDS}
            for name in _ARRAY_FIELDS:
                if getattr(node, name) is not None:
                    arrays[f"{path}/{name}"] = np.asarray(getattr(node, name))
        else:
            arrays[path] = np.asarray(node)
    return arrays, {"format": FORMAT, "layers": layers}


def unflatten(arrays: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict:
    """The inverse of `flatten`."""
    if config.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} quantized model: quantization_config format is {config.get('format')!r}")
    tree = traverse_util.unflatten_dict({path: jax.numpy.asarray(value) for path, value in arrays.items()}, sep="/")
    for layer_path, static in config["layers"].items():
        node = tree
        for part in layer_path.split("/"):
            node = node[part]
        fields = node[VARIABLE]
        unknown = set(fields) - set(_ARRAY_FIELDS)
        if unknown:
            raise ValueError(f"quantized layer {layer_path} has unknown tensors {sorted(unknown)}")
        node[VARIABLE] = QuantizedLinear(**fields, **static)
    return tree


def save_orbax(directory: str | Path, variables: Mapping) -> None:
    """An orbax checkpoint at `directory` (which must not exist): item `arrays` and JSON item `quantization_config`."""
    import orbax.checkpoint as ocp

    arrays, config = flatten(variables)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(Path(directory).absolute(), ocp.args.Composite(
            arrays=ocp.args.StandardSave(traverse_util.unflatten_dict(arrays, sep="/")),
            **{CONFIG_KEY: ocp.args.JsonSave(config)}))


def load_orbax(directory: str | Path) -> dict:
    """Quantized variables from `save_orbax`."""
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(Path(directory).absolute(), ocp.args.Composite(
            arrays=ocp.args.StandardRestore(), **{CONFIG_KEY: ocp.args.JsonRestore()}))
    arrays = traverse_util.flatten_dict(restored["arrays"], sep="/")
    return unflatten({path: np.asarray(value) for path, value in arrays.items()}, restored[CONFIG_KEY])


def export_safetensors(path: str | Path, variables: Mapping) -> None:
    """One safetensors file: tensors named by parameter path, metadata `quantization_config` (JSON)."""
    from safetensors.numpy import save_file

    arrays, config = flatten(variables)
    save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(path),
              metadata={CONFIG_KEY: json.dumps(config)})


def import_safetensors(path: str | Path) -> dict:
    """Quantized variables from `export_safetensors`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
        if CONFIG_KEY not in metadata:
            raise ValueError(f"{path} has no {CONFIG_KEY!r} metadata entry: not an exported quantized model")
        arrays = {name: f.get_tensor(name) for name in f.keys()}
    return unflatten(arrays, json.loads(metadata[CONFIG_KEY]))
