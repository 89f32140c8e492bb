"""adaLN's norm-modulate in plain jnp: the specification, the test oracle and the "xla" implementation.

    y[b, s] = LayerNorm(x[b, s]) * (1 + scale[b]) + shift[b]

and with the gated residual before it (a DiT block's `x + gate * attn(...)` followed by the MLP's norm-modulate):

    z = x + gate[b] * h,   y = LayerNorm(z) * (1 + scale[b]) + shift[b]   ->   (z, y)

x `[batch, seq, width]`; shift, scale `[batch, width]`, one modulation per sample (DiT's adaLN-Zero: the
conditioning vector's Dense gives them). The LayerNorm has no affine parameters (adaLN's modulation is its affine
part), normalises over `width` with the biased variance, and everything is computed in float32, rounded once to x's
dtype at the end; z is rounded to x's dtype (the residual stream's) before it is normalised.
"""

import jax
import jax.numpy as jnp


def layer_norm_modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """See the module docstring; shapes already validated by `ops.layer_norm_modulate`."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  centered = x32 - mean
  variance = jnp.mean(centered * centered, axis=-1, keepdims=True)
  normed = centered * jax.lax.rsqrt(variance + eps)
  y = normed * (1 + scale.astype(jnp.float32)[:, None]) + shift.astype(jnp.float32)[:, None]
  return y.astype(x.dtype)


def residual_layer_norm_modulate(x: jax.Array, h: jax.Array, gate: jax.Array, shift: jax.Array, scale: jax.Array,
                                 eps: float) -> tuple[jax.Array, jax.Array]:
  """See the module docstring; h like x, gate like shift."""
  z = (x.astype(jnp.float32) + gate.astype(jnp.float32)[:, None] * h.astype(jnp.float32)).astype(x.dtype)
  return z, layer_norm_modulate(z, shift, scale, eps)
