"""Multi-host start-up: `jax.distributed.initialize()` when a run spans several processes, and who is still alive.

On a TPU pod or a SLURM/Kubernetes GPU cluster jax detects the coordinator itself (`auto=True`). Elsewhere, give the
coordinator address, the process count and this process's id explicitly (the 2-process localhost test does that).

Losing a process: jax's coordination service declares a process dead after `heartbeat_timeout_s` without
heartbeats and then aborts every other process from C++ (a fatal log and a stack trace; jaxlib offers no Python
hook: its `missed_heartbeat_callback` cannot be handed the error status and aborts with std::bad_cast). So the
timeout is kept under a minute, and each process also beats a counter in the coordination service's key-value
store from a daemon thread: when a collective fails, `lost_processes()` sees whose counter stopped (or, when the
store itself is gone, that process 0, which hosts it, died) and `jaxgen.core.preemption` reports it and exits
before jax's abort. What remains: a survivor blocked where no error surfaces (a collective that never times out,
e.g. NCCL) is still ended by jax's abort after `heartbeat_timeout_s`.
"""

from __future__ import annotations

import atexit
import dataclasses
import threading
import time

import jax
from jax._src import distributed as jax_distributed  # the coordination client (no public handle to its key-value store)

BEAT_PREFIX = "jaxgen/alive/"
BEAT_INTERVAL_S = 1.0


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    auto: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout_s: int = 45  # jax's default is 100 s; a lost process should end the run within a minute

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
    explicit_kwargs = {} if config.auto else dict(coordinator_address=config.coordinator_address,
                                                  num_processes=config.num_processes, process_id=config.process_id)
    jax.distributed.initialize(**explicit_kwargs, heartbeat_timeout_seconds=config.heartbeat_timeout_s)
    if jax.process_count() > 1:
        _start_beacon()


def is_main_process() -> bool:
    """Process 0 writes config, metrics and pictures; every process takes part in checkpoints and collectives."""
    return jax.process_index() == 0


class _Beacon(threading.Thread):
    """Raises this process's counter in the coordination service every `BEAT_INTERVAL_S` while the process lives."""

    def __init__(self, client):
        super().__init__(name="jaxgen-liveness-beacon", daemon=True)
        self.client, self.key, self.stop = client, f"{BEAT_PREFIX}{jax.process_index()}", threading.Event()

    def run(self) -> None:
        count = 0
        while True:
            count += 1
            try:
                self.client.key_value_set(self.key, str(count), allow_overwrite=True)
            except Exception:  # the coordination service is gone: lost_processes() finds that out itself
                return
            if self.stop.wait(BEAT_INTERVAL_S):
                return


_beacon: _Beacon | None = None


def _start_beacon() -> None:
    global _beacon
    _beacon = _Beacon(jax_distributed.global_state.client)
    _beacon.start()
    atexit.register(_beacon.stop.set)  # runs before jax's own atexit shutdown (registered earlier, runs later)


def _read_beats() -> dict[int, str] | None:
    try:
        entries = jax_distributed.global_state.client.key_value_dir_get(BEAT_PREFIX)
    except Exception:
        return None
    return {int(key.rsplit("/", 1)[-1]): value for key, value in entries}


def lost_processes() -> list[int]:
    """The other processes whose beat stopped (checked over three beat intervals); [] in a single-process run.

    When the key-value store itself is unreachable, process 0 (which hosts it) is the one lost."""
    if _beacon is None:
        return []
    before = _read_beats()
    time.sleep(3 * BEAT_INTERVAL_S)
    after = _read_beats()
    if before is None or after is None:
        return [] if jax.process_index() == 0 else [0]
    return [i for i in range(jax.process_count())
            if i != jax.process_index() and (i not in after or after[i] == before.get(i))]
