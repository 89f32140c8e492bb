"""Multi-host start-up: `jax.distributed.initialize()` when a run spans several processes, and who is still alive.

On a TPU pod or a SLURM/Kubernetes GPU cluster jax detects the coordinator itself (`auto=True`). Elsewhere, give the
coordinator address, the process count and this process's id explicitly (the 2-process localhost test does that).

Losing a process: jax's coordination service declares a process dead after `heartbeat_timeout_s` without
heartbeats and then aborts every other process from C++ (a fatal log line and a stack trace). jaxlib offers no
Python hook: its client's `missed_heartbeat_callback` cannot be handed the error status (jaxlib 0.12.1 aborts with
std::bad_cast), and `jax.distributed.initialize` passes none. So the timeout is kept under a minute, and each
process beats a counter in the coordination service's key-value store from a daemon thread. When a collective
fails (gloo reports a closed connection at once), `lost_processes()` sees whose counter stopped; when nothing fails
(a hung host, a collective that never times out, as NCCL's), the beacon itself notices a counter standing still
for half the heartbeat timeout. Either way `jaxgen.core.preemption` reports the lost process in one line and exits
before jax's abort.

What remains: process 0 hosts the coordination service, and when it dies jaxlib's error poll aborts every other
process within about a second ("Terminating process because the JAX distributed service detected fatal errors
... the leader task was preempted/died"), before Python can run; and outside the training loop (set-up, final
clean-up) a lost process still ends in jax's abort after `heartbeat_timeout_s`.
"""

from __future__ import annotations

import atexit
import dataclasses
import threading
import time
from collections.abc import Callable

import jax
from jax._src import distributed as jax_distributed  # the coordination client (no public handle to its key-value store)

BEAT_PREFIX = "jaxgen/alive/"
BEAT_INTERVAL_S = 1.0
EXITED = "exited"


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
        _start_beacon(lost_after_s=config.heartbeat_timeout_s / 2)


class _Beacon(threading.Thread):
    """Raises this process's counter in the coordination service every `BEAT_INTERVAL_S`; while `on_lost` is set,
    also watches the others' counters and calls it with those that stood still for `lost_after_s`."""

    def __init__(self, client, lost_after_s: float):
        super().__init__(name="jaxgen-liveness-beacon", daemon=True)
        self.client, self.key, self.stop = client, f"{BEAT_PREFIX}{jax.process_index()}", threading.Event()
        self.lost_after_s = lost_after_s
        self.on_lost: Callable[[list[int], float], None] | None = None

    def run(self) -> None:
        count, changed = 0, {}  # process -> (its last counter, when this process saw it change)
        while True:
            count += 1
            try:
                self.client.key_value_set(self.key, str(count), allow_overwrite=True)
            except Exception:  # the coordination service is gone (process 0 died): jax itself ends this process
                return
            on_lost = self.on_lost
            if on_lost is not None and (beats := _read_beats()) is not None:
                now = time.monotonic()
                for i in range(jax.process_count()):
                    if i != jax.process_index() and changed.get(i, (None,))[0] != beats.get(i):
                        changed[i] = (beats.get(i), now)
                lost = [i for i, (beat, since) in sorted(changed.items())
                        if beat != EXITED and now - since > self.lost_after_s]
                if lost:
                    on_lost(lost, self.lost_after_s)
            if self.stop.wait(BEAT_INTERVAL_S):
                return

    def finish(self) -> None:
        """At exit: a process that ends on purpose is not lost, however long the others still run."""
        self.stop.set()
        self.join(timeout=5)
        try:
            self.client.key_value_set(self.key, EXITED, allow_overwrite=True)
        except Exception:
            pass  # the coordination service is already gone


_beacon: _Beacon | None = None


def _start_beacon(lost_after_s: float) -> None:
    global _beacon
    _beacon = _Beacon(jax_distributed.global_state.client, lost_after_s)
    _beacon.start()
    atexit.register(_beacon.finish)  # runs before jax's own atexit shutdown (registered earlier, runs later)


def watch_for_lost_processes(on_lost: Callable[[list[int], float], None] | None) -> None:
    """From now on (None: no longer), `on_lost(processes, seconds)` runs on the beacon's thread when other processes
    have shown no sign of life for `seconds`; a no-op in a single-process run."""
    if _beacon is not None:
        _beacon.on_lost = on_lost


def _read_beats() -> dict[int, str] | None:
    try:
        entries = jax_distributed.global_state.client.key_value_dir_get(BEAT_PREFIX)
    except Exception:
        return None
    return {int(key.rsplit("/", 1)[-1]): value for key, value in entries}


def lost_processes() -> list[int]:
    """The other processes whose counter stood still over three beat intervals; [] in a single-process run or when
    the key-value store cannot be read."""
    if _beacon is None:
        return []
    before = _read_beats()
    time.sleep(3 * BEAT_INTERVAL_S)
    after = _read_beats()
    if before is None or after is None:
        return []
    return [i for i in range(jax.process_count())
            if i != jax.process_index() and after.get(i) != EXITED and after.get(i) == before.get(i)]
