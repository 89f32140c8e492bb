"""Key discipline: one seed, named streams, and `fold_in(key, step)` so that no key is ever used twice.

A run derives independent streams from its seed by name (init, train, eval); inside the loop the key of step `s` is
`fold_in(train_stream, s)`, which makes every step's randomness a pure function of (seed, step): a resumed run draws
exactly the keys the uninterrupted run would have drawn.
"""

from __future__ import annotations

import zlib

import jax

STREAMS = ("init", "train", "eval")


def stream(seed: int, name: str) -> jax.Array:
    """A key for the named stream, independent of the others (`fold_in` with a stable hash of the name)."""
    if name not in STREAMS:
        raise ValueError(f"Unknown random stream {name!r}; known streams: {STREAMS}")
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))


def step_key(stream_key: jax.Array, step: int | jax.Array) -> jax.Array:
    """The key of one step of a stream."""
    return jax.random.fold_in(stream_key, step)
