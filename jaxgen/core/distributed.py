"""Multi-host start-up: `jax.distributed.initialize()` when a run spans several processes.

On a TPU pod or a SLURM/Kubernetes GPU cluster jax detects the coordinator itself (`auto=True`). Elsewhere, give the
coordinator address, the process count and this process's id explicitly (the 2-process localhost test does that).
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    auto: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator_address is not None


def initialize(config: DistributedConfig) -> None:
    """Starts jax's distributed runtime if the config asks for it; a no-op otherwise.

    Must run before anything touches a jax backend. CPU-only processes exchange collectives through gloo.
    """
    if not config.enabled:
        return
    explicit = (config.coordinator_address, config.num_processes, config.process_id)
    if not config.auto and None in explicit:
        raise ValueError(
            "An explicit multi-process launch needs coordinator_address, num_processes and process_id; got "
            f"coordinator_address={explicit[0]!r}, num_processes={explicit[1]!r}, process_id={explicit[2]!r}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if config.auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
