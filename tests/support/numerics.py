"""Comparing low-precision kernel outputs with float32 references."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def rel_err(x, ref) -> float:
    """‖x − ref‖ / ‖ref‖ in float64 (a zero reference counts as tiny, not as a division by zero)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def as_f32(*xs):
    return [x.astype(jnp.float32) for x in xs]
