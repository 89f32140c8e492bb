"""One sparse conv site in plain jnp: the specification, the test oracle and the CPU path.

    out = cached, except on the output pixels of the active tiles idx[:count], where
    out = conv(zero_pad(act(x · scale + shift)))[pixel] + bias + residual[pixel]

`x` is the channel concatenation of `parts` (NHWC, optionally nearest-`upsample`× enlarged, never materialised);
`scale` / `shift` are per (image, channel) (GroupNorm on cached statistics, or a time-embedding shift); the zero padding
is applied after the activation (it is the conv's padding). Tile `(ty, tx)` covers output rows `[ty·tile, ty·tile +
tile)` and columns alike, clipped to the output. The steps are the ones SIGE's layers take today (gather the input
blocks with their halo, pre-activate, VALID conv, write the tiles into the cached map), written independently of
`jaxgen.projects.sige.layers` so the kernel package stands alone.
"""

import jax
import jax.numpy as jnp

# Activation applied after the scale / shift, by name (names are static and hashable; the kernels use the same table).
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  return (size + 2 * padding - kernel) // stride + 1


def sparse_conv_reference(parts, idx, count, kernel, bias, cached, scale, shift, residual, *, activation, stride,
                          padding, tile, upsample):
  """See the module docstring; arguments as `ops.sparse_conv` takes them, already validated."""
  batch, height, width = parts[0].shape[0], parts[0].shape[1] * upsample, parts[0].shape[2] * upsample
  size = kernel.shape[0]
  out_h, out_w, cout = cached.shape[1:]
  block = (tile - 1) * stride + size
  offsets = jnp.arange(block)
  rows = idx[:, 0, None] * tile * stride - padding + offsets
  cols = idx[:, 1, None] * tile * stride - padding + offsets
  inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
  rows, cols = jnp.clip(rows, 0, height - 1) // upsample, jnp.clip(cols, 0, width - 1) // upsample
  blocks = jnp.concatenate([p[:, rows[:, :, None], cols[:, None, :], :] for p in parts], axis=-1)
  h = blocks.astype(jnp.float32)
  if scale is not None:
    h = h * scale[:, None, None, None, :] + shift[:, None, None, None, :]
  if activation is not None:
    h = ACTIVATIONS[activation](h)
  h = jnp.where(inside[None, ..., None], h, 0).astype(kernel.dtype)
  slots = idx.shape[0]
  tiles = jax.lax.conv_general_dilated(h.reshape(batch * slots, block, block, -1), kernel, (stride, stride), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
  tiles = tiles.reshape(batch, slots, tile, tile, cout)
  if bias is not None:
    tiles = tiles + bias.astype(jnp.float32)
  out_rows = idx[:, 0, None] * tile + jnp.arange(tile)
  out_cols = idx[:, 1, None] * tile + jnp.arange(tile)
  if residual is not None:
    picked = residual[:, jnp.minimum(out_rows, out_h - 1)[:, :, None], jnp.minimum(out_cols, out_w - 1)[:, None, :]]
    tiles = tiles + picked.astype(jnp.float32)
  # Pixels of padding slots and past the output's edge go to row `out_h`, which the scatter drops.
  valid = (jnp.arange(slots) < count)[:, None, None] & (out_rows < out_h)[:, :, None] & (out_cols < out_w)[:, None, :]
  target_rows = jnp.where(valid, out_rows[:, :, None], out_h)
  target_cols = jnp.broadcast_to(out_cols[:, None, :], valid.shape)
  return cached.at[:, target_rows, target_cols].set(tiles.astype(cached.dtype), mode="drop")
