"""Which attention calls stay dense: the first fraction of denoising steps and the first fraction of layers.

SVG keeps early steps dense because they lay out the video's structure, where sparse attention costs most quality.
The gate is keyed on the step *index* (0 = the first, noisiest step), not the raw diffusion timestep: the official
code compared timesteps with a threshold, and under the shifted flow-matching schedules of HunyuanVideo/CogVideoX
the timesteps crowd near the top of the range, so a "first 10 %" threshold kept far more steps dense than intended
(their issue #35). Step and layer may be traced (a `scan` over steps or layers), so the gate returns a jnp bool.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DenseGate:
    """Attention is dense when `step < dense_step_fraction * num_steps` or `layer < dense_layer_fraction * num_layers`.
    """

    dense_step_fraction: float = 0.0
    dense_layer_fraction: float = 0.0

    def __post_init__(self):
        for name in ("dense_step_fraction", "dense_layer_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")

    @property
    def never_dense(self) -> bool:
        return self.dense_step_fraction == 0.0 and self.dense_layer_fraction == 0.0

    def is_dense(self, *, step, num_steps: int, layer, num_layers: int) -> jax.Array:
        if num_steps < 1 or num_layers < 1:
            raise ValueError(f"num_steps and num_layers must be >= 1; got {num_steps}, {num_layers}")
        return (jnp.asarray(step) < self.dense_step_fraction * num_steps) | (
            jnp.asarray(layer) < self.dense_layer_fraction * num_layers)
