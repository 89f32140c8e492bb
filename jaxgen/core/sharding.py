"""Logical-axis sharding: modules name their axes ("embed", "mlp", "heads"), config maps names to mesh axes.

Three sources decide a parameter's logical axes, in order:
1. Flax metadata (`nn.with_logical_partitioning`) on the parameter itself;
2. the task's `partition_rules`: `(regex, logical_axes)` matched against the "/"-joined parameter path;
3. otherwise, on a mesh with an `fsdp` axis larger than 1, the largest dimension divisible by it is sharded over
   `fsdp` (ZeRO-3 without annotations); on other meshes the parameter is replicated.
Logical names become mesh axes through `LOGICAL_AXIS_RULES` (overridable per run). A dimension that the mapped mesh
axes do not divide stays replicated rather than failing: small heads or odd vocabularies still run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

LOGICAL_AXIS_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("classes", None),
    ("layers", None),  # the stacked axis of `nn.scan`-ned blocks: every device keeps all layers
)

BATCH_AXES = ("data", "fsdp")


def path_to_str(path) -> str:
    """'params/Dense_0/kernel' for a jax key path."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _axis_size(mesh: Mesh, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[name] for name in names)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """Maps logical names to mesh axes; a mesh axis is used at most once, and only where it divides the dimension."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"Logical axes {tuple(logical_axes)} do not match a parameter of shape {tuple(shape)}")
    rule_map = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        if name is not None and name not in rule_map:
            raise ValueError(f"Logical axis {name!r} has no rule; known logical axes: {sorted(rule_map)}")
        axes = rule_map.get(name) if name is not None else None
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        names = tuple(a for a in names if a not in used and mesh.shape[a] > 1)
        if names and dim % _axis_size(mesh, names) == 0:
            used.update(names)
            spec.append(names[0] if len(names) == 1 else names)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def _auto_fsdp_spec(shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    fsdp = mesh.shape.get("fsdp", 1)
    spec = [None] * len(shape)
    if fsdp > 1:
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if shape[dim] % fsdp == 0:
                spec[dim] = "fsdp"
                break
    return PartitionSpec(*spec)


def variable_shardings(
    abstract_variables,
    mesh: Mesh,
    partition_rules: Sequence[tuple[str, Sequence[str | None]]] = (),
    logical_axis_rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_AXIS_RULES,
):
    """NamedShardings for a (possibly Flax-boxed) abstract variables tree; the result matches `nn.unbox(tree)`."""
    compiled = [(re.compile(pattern), tuple(axes)) for pattern, axes in partition_rules]

    def leaf_sharding(path, leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.unbox()
            spec = logical_to_spec(leaf.names, value.shape, mesh, logical_axis_rules)
        elif isinstance(leaf, nn.Partitioned):
            value = leaf.unbox()
            spec = PartitionSpec(*leaf.names)
        else:
            value = leaf
            name = path_to_str(path)
            match = next((axes for pattern, axes in compiled if pattern.search(name)), None)
            if match is not None:
                spec = logical_to_spec(match, value.shape, mesh, logical_axis_rules)
            else:
                spec = _auto_fsdp_spec(value.shape, mesh)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(
        leaf_sharding, abstract_variables, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) dimension splits over `data` and `fsdp`; everything else is replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def process_rows(global_batch_size: int, mesh: Mesh) -> np.ndarray:
    """Indices of the global-batch rows that this process's devices hold, in order.

    The loader reads exactly these rows, so the global batch of a step is the same whatever the process count.
    """
    shards = _axis_size(mesh, BATCH_AXES)
    if global_batch_size % shards:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {shards} batch shards of mesh "
            f"{dict(mesh.shape)} (axes {BATCH_AXES})"
        )
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    starts = sorted({(idx[0].start or 0, idx[0].stop or global_batch_size) for idx in index_map.values()})
    return np.concatenate([np.arange(start, stop) for start, stop in starts])


def _local_batch_shards(mesh: Mesh) -> int:
    """How many distinct batch shards this process's devices hold (devices that differ only on other axes share one)."""
    dims = [mesh.axis_names.index(a) for a in BATCH_AXES if a in mesh.axis_names]
    me = jax.process_index()
    return len({tuple(position[d] for d in dims)
                for position, device in np.ndenumerate(mesh.devices) if device.process_index == me})


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: int | None = None):
    """Assembles each process's rows (see `process_rows`) into global arrays sharded over the batch axes.

    The global leading size is this process's leading size scaled by (batch shards) / (this process's batch shards):
    the examples of the global batch for ordinary batches, one entry per device for batches packed per device
    (graphs, see `jaxgen.data.loader`). `global_batch_size`, when given, must agree.
    """
    sharding = batch_sharding(mesh)
    total, local = _axis_size(mesh, BATCH_AXES), _local_batch_shards(mesh)

    def assemble(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local:
            raise ValueError(f"A batch leaf of shape {x.shape} cannot split over the {local} batch shards of this "
                             f"process's devices (mesh {dict(mesh.shape)}): its leading axis must be a multiple of "
                             f"{local}")
        global_size = x.shape[0] // local * total
        if global_batch_size is not None and global_size != global_batch_size:
            raise ValueError(f"A batch leaf of shape {x.shape} makes a global leading size {global_size} on mesh "
                             f"{dict(mesh.shape)}; expected {global_batch_size}")
        return jax.make_array_from_process_local_data(sharding, x, (global_size, *x.shape[1:]))

    return jax.tree.map(assemble, dict(local_batch))


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global order (for pictures and host-side stats)."""
    shards = {}
    for shard in array.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard.data)
    return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])
