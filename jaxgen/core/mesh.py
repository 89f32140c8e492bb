"""Device mesh from config: named axes `data`, `fsdp`, `tensor`; a size of -1 takes whatever devices are left.

The physical mesh is the only place mesh axes are named; models speak in logical axes (see `sharding.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from jaxgen.core.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes. Exactly one may be -1 (auto): it absorbs the remaining devices.

    `data` replicates parameters and splits the batch; `fsdp` splits the batch *and* shards parameters (ZeRO-3
    style); `tensor` shards parameters along model dimensions (heads, MLP width) and replicates the batch.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    num_devices: int | None = None  # use only the first N devices (scaling studies, debugging); None: all

    def axis_sizes(self, num_devices: int) -> tuple[int, ...]:
        sizes = [self.data, self.fsdp, self.tensor]
        autos = [i for i, s in enumerate(sizes) if s == -1]
        if len(autos) > 1:
            raise ConfigError(f"At most one mesh axis may be -1 (auto); got {dict(zip(MESH_AXES, sizes))}")
        if any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"Mesh axis sizes must be positive or -1; got {dict(zip(MESH_AXES, sizes))}")
        fixed = math.prod(s for s in sizes if s != -1)
        if autos:
            if num_devices % fixed:
                raise ConfigError(
                    f"{num_devices} devices cannot be split into mesh {dict(zip(MESH_AXES, sizes))}: "
                    f"{num_devices} is not a multiple of {fixed}"
                )
            sizes[autos[0]] = num_devices // fixed
        elif fixed != num_devices:
            raise ConfigError(f"Mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but {num_devices} are present")
        return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the mesh over all (global) devices, laid out to follow the physical topology where jax knows it.

    Axis types are `Auto`: `jax.make_mesh`'s default of Explicit axes broke plain optax train steps (DESIGN.md).
    """
    devices = list(jax.devices() if devices is None else devices)
    if config.num_devices is not None:
        if not 0 < config.num_devices <= len(devices):
            raise ConfigError(f"num_devices={config.num_devices} but {len(devices)} devices are present")
        devices = devices[: config.num_devices]
    shape = config.axis_sizes(len(devices))
    try:
        device_grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        device_grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def describe(mesh: Mesh) -> dict:
    """A JSON-friendly summary for run_info.json."""
    return {
        "axes": dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape))),
        "devices": int(mesh.devices.size),
        "processes": jax.process_count(),
    }
