"""The condition-aware product in plain jnp: the spec, the test oracle and the CPU path.

`y[b] = x[b] . (W + sum_j h[b, j] G[j])`: x `[batch, rows, in]`, W `[in, out]`, h `[batch, rank]`, G
`[rank, in, out]` -> `[batch, rows, out]`. This is CAN's condition-aware dense layer with the generated delta left in
its factored form (CAN: h = the condition projected to rank r, G the generator reshaped; AKS: h = the softmax
mixture, G the kernel bank), so that a kernel can build the per-sample weight tile by tile instead of reading it.
"""

import jax
import jax.numpy as jnp


def can_matmul(x: jax.Array, kernel: jax.Array, h: jax.Array, generator: jax.Array) -> jax.Array:
  """The per-sample weights materialised, then one batched product (what `jaxgen.projects.can.layers` does),
  accumulated in float32; result in x's dtype."""
  weights = kernel.astype(jnp.float32)[None] + jnp.einsum("br,rio->bio", h.astype(jnp.float32),
                                                          generator.astype(jnp.float32))
  y = jnp.einsum("bmi,bio->bmo", x.astype(jnp.float32), weights)
  return y.astype(x.dtype)
