"""Conditioning and position embeddings of the diffusion models, numerically as diffusers computes them, so ported
weights see the features they were trained on.

`timestep_embedding` is diffusers' `get_timestep_embedding` (the DDPM/ADM sinusoid); `TimestepEmbedding` its
two-layer MLP; `LabelEmbedding` a class table with one extra row, the "null" class of classifier-free guidance
(index `num_classes`), as diffusers' `LabelEmbedding`; `sincos_2d` the fixed 2D position table of DiT/MAE.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.transformer import partitioned


def timestep_embedding(t: jax.Array, dim: int, *, freq_shift: float = 1.0, scale: float = 1.0,
                       max_period: float = 10000.0) -> jax.Array:
    """`[batch]` -> `[batch, dim]` features `[cos(a), sin(a)]`, `a_i = scale * t * max_period ** (-i / (dim / 2 -
    freq_shift))`. diffusers' DiT uses `freq_shift=1` (its `downscale_freq_shift`), the original DiT 0."""
    if t.ndim != 1 or dim % 2:
        raise ValueError(f"timestep_embedding needs t [batch] and an even dim; got t {t.shape}, dim {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = scale * t.astype(jnp.float32)[:, None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)


def sincos_2d(dim: int, height: int, width: int, base_size: int | None = None) -> jax.Array:
    """Fixed position table `[height * width, dim]` for row-major tokens: the first half of the channels encodes the
    column, the second the row, each as `[sin(p w_i), cos(p w_i)]`, `w_i = 10000 ** (-i / (dim / 4))` (diffusers'
    `get_2d_sincos_pos_embed`). With `base_size` (diffusers: `sample_size // patch_size`) positions are rescaled to
    span `base_size` tokens, so a model run off its training resolution sees positions in its trained range."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4; got {dim}")
    omega = 1.0 / 10000 ** (jnp.arange(dim // 4, dtype=jnp.float32) / (dim / 4))

    def axis(n: int) -> jax.Array:
        positions = jnp.arange(n, dtype=jnp.float32) * ((base_size / n) if base_size else 1.0)
        angles = positions[:, None] * omega
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)

    rows, cols = axis(height), axis(width)
    return jnp.concatenate([jnp.broadcast_to(cols[None], (height, width, dim // 2)),
                            jnp.broadcast_to(rows[:, None], (height, width, dim // 2))], -1).reshape(-1, dim)


class TimestepEmbedding(nn.Module):
    """Sinusoid of `t` -> Dense -> SiLU -> Dense (diffusers' `Timesteps` + `TimestepEmbedding`)."""

    width: int
    frequency_dim: int = 256
    freq_shift: float = 1.0
    scale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        features = timestep_embedding(t, self.frequency_dim, freq_shift=self.freq_shift, scale=self.scale)
        h = nn.Dense(self.width, dtype=self.dtype, name="linear_1",
                     kernel_init=partitioned(nn.initializers.normal(0.02), None, "embed"),
                     bias_init=partitioned(nn.initializers.zeros, "embed"))(features)
        return nn.Dense(self.width, dtype=self.dtype, name="linear_2",
                        kernel_init=partitioned(nn.initializers.normal(0.02), "mlp", "embed"),
                        bias_init=partitioned(nn.initializers.zeros, "embed"))(nn.silu(h))


class LabelEmbedding(nn.Module):
    """Class labels `[batch]` in `[0, num_classes]` -> `[batch, width]`; label `num_classes` is the null class.

    Dropping labels for classifier-free guidance is the task's business (`drop_labels`), not a hidden training flag.
    """

    num_classes: int
    width: int

    @nn.compact
    def __call__(self, labels: jax.Array) -> jax.Array:
        table = self.param("embedding", partitioned(nn.initializers.normal(0.02), "classes", "embed"),
                           (self.num_classes + 1, self.width))
        return jnp.take(table, labels, axis=0)


def drop_labels(rng: jax.Array, labels: jax.Array, prob: float, num_classes: int) -> jax.Array:
    """Replaces each label by the null class `num_classes` with probability `prob` (CFG training)."""
    return jnp.where(jax.random.bernoulli(rng, prob, labels.shape), num_classes, labels)
