"""The fused sparse conv site as one Pallas kernel (Triton lowering); the same body runs in interpret mode on CPU.

One program owns `tiles_per_program` active tiles (their `tiles_per_program · tile²` output pixels are the rows of its
matrix products), one batch image and `block_n` output channels. It

1. reads the tiles' coordinates from the index list and turns every output pixel into a flat pixel id of the cached
   output map, clipped to the map (a tile past the edge recomputes the edge pixel: the duplicate store writes the
   value already there, so no store mask is needed);
2. for each of the k × k taps, computes the input pixel each output pixel reads (stride, padding and nearest
   upsampling are integer arithmetic on the ids) and whether it lies inside the image;
3. loops over the input channels `block_k` at a time; per tap it gathers the `[rows, block_k]` input values straight
   from the full input map in HBM (rows are arbitrary pixel ids: a pointer gather, no tile array is ever written),
   applies `x · scale + shift`, the activation and the zero padding in registers, and adds its product with the tap's
   `[block_k, block_n]` weights to a float32 accumulator — the conv as k² shifted matrix products;
4. adds the bias and the residual (gathered at the output pixels) and stores the rows into the output map, which is
   the cached map itself (`input_output_aliases`): pixels no active tile covers are never touched.

Padding slots of the bucket (slot ≥ count) are redirected to the program's first tile (the same values are stored
twice); a program whose first slot is past `count` returns at once.

Trade-off: each input pixel is gathered, scaled and activated once per tap that reads it (k² times, from L1 / L2 after
the first), rather than once per block into shared memory: Triton has no row gather from a register tile, and the
matrix products (k² · block_k · block_n multiply-adds per row) dwarf the elementwise work (k² · block_k per row).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu_triton

from pallas_kernels.sparse_conv import reference


def _loop(count, body, carry, unrolled):
  """carry = body(t, carry) for t in range(count): a Python loop (static t, every tap's index arithmetic folded)
  when compiled; a fori_loop when interpreted, running the same body (for a 3×3 site it halved the interpreted
  program's HLO and cut its CPU compile from 1.0 to 0.7 s here, which the engine tests pay once per site)."""
  if not unrolled:
    return jax.lax.fori_loop(0, count, body, carry)
  for t in range(count):
    carry = body(t, carry)
  return carry


def _site_kernel(*refs, num_parts, has_norm, has_bias, has_residual, activation, size, stride, padding, tile, upsample,
                 in_hw, out_hw, tiles_per_program, block_k, block_n, interpret):
  refs = list(refs)
  idx_ref, count_ref = refs.pop(0), refs.pop(0)
  part_refs = [refs.pop(0) for _ in range(num_parts)]
  scale_ref, shift_ref = (refs.pop(0), refs.pop(0)) if has_norm else (None, None)
  w_ref = refs.pop(0)
  bias_ref = refs.pop(0) if has_bias else None
  residual_ref = refs.pop(0) if has_residual else None
  _, out_ref = refs  # the aliased cached map (never read), then the output

  group, b, n = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  (height, width), (out_h, out_w) = in_hw, out_hw
  pixels = tile * tile
  rows = tiles_per_program * pixels
  first = group * tiles_per_program
  count = count_ref[0]

  @pl.when(first < count)
  def _():
    r = jnp.arange(rows, dtype=jnp.int32)
    slot = first + r // pixels
    slot = jnp.where(slot < count, slot, first)
    ty, tx = idx_ref[slot, 0], idx_ref[slot, 1]
    oy = jnp.minimum(ty * tile + (r % pixels) // tile, out_h - 1)
    ox = jnp.minimum(tx * tile + r % tile, out_w - 1)

    def tap_input(t):
      """Flat input pixel ids (in the map as stored, before upsampling) and inside-the-image flags of tap t."""
      dy, dx = t // size, t % size
      iy, ix = oy * stride - padding + dy, ox * stride - padding + dx
      inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
      low_y, low_x = jnp.clip(iy, 0, height - 1) // upsample, jnp.clip(ix, 0, width - 1) // upsample
      return low_y * (width // upsample) + low_x, inside[:, None]

    cols = pl.ds(n * block_n, block_n)
    acc = jnp.zeros((rows, block_n), jnp.float32)
    offset = 0
    for part_ref in part_refs:

      def step(i, acc, part_ref=part_ref, offset=offset):
        k0 = pl.multiple_of(i * block_k, block_k)
        if has_norm:
          scale = scale_ref[b, pl.ds(offset + k0, block_k)][None, :]
          shift = shift_ref[b, pl.ds(offset + k0, block_k)][None, :]

        def tap(t, acc):
          pixel, inside = tap_input(t)
          h = part_ref[b, pixel, pl.ds(k0, block_k)].astype(jnp.float32)
          if has_norm:
            h = h * scale + shift
          if activation is not None:
            h = reference.ACTIVATIONS[activation](h)
          h = jnp.where(inside, h, 0.0).astype(w_ref.dtype)
          return acc + jnp.dot(h, w_ref[t, pl.ds(offset + k0, block_k), cols], preferred_element_type=jnp.float32)

        return _loop(size * size, tap, acc, unrolled=not interpret)

      acc = jax.lax.fori_loop(0, part_ref.shape[2] // block_k, step, acc)
      offset += part_ref.shape[2]

    if has_bias:
      acc += bias_ref[cols][None, :].astype(jnp.float32)
    out_pixel = oy * out_w + ox
    if has_residual:
      acc += residual_ref[b, out_pixel, cols].astype(jnp.float32)
    out_ref[b, out_pixel, cols] = acc.astype(out_ref.dtype)


def sparse_conv(idx, count, parts, kernel, bias, cached, scale, shift, residual, *, activation, stride, padding, tile,
                upsample, tiles_per_program, blocks, interpret):
  """`ops.sparse_conv` on validated operands; `blocks` (block_k, block_n) already divide the channel counts."""
  batch, low_h, low_w = parts[0].shape[:3]
  size, _, channels, cout = kernel.shape
  out_h, out_w = cached.shape[1:3]
  flat = lambda a: a.reshape(a.shape[0], a.shape[1] * a.shape[2], a.shape[3])  # noqa: E731
  operands = [idx, count.reshape(1)] + [flat(p) for p in parts]
  if scale is not None:
    operands += [scale.astype(jnp.float32), shift.astype(jnp.float32)]
  operands.append(kernel.reshape(size * size, channels, cout))
  if bias is not None:
    operands.append(bias)
  if residual is not None:
    operands.append(flat(residual))
  operands.append(flat(cached))
  body = functools.partial(
      _site_kernel, num_parts=len(parts), has_norm=scale is not None, has_bias=bias is not None,
      has_residual=residual is not None, activation=activation, size=size, stride=stride, padding=padding, tile=tile,
      upsample=upsample, in_hw=(low_h * upsample, low_w * upsample), out_hw=(out_h, out_w),
      tiles_per_program=tiles_per_program, block_k=blocks.block_k, block_n=blocks.block_n, interpret=interpret)
  groups = -(-idx.shape[0] // tiles_per_program)
  out = pl.pallas_call(
      body,
      out_shape=jax.ShapeDtypeStruct(operands[-1].shape, cached.dtype),
      grid=(groups, batch, cout // blocks.block_n),
      input_output_aliases={len(operands) - 1: 0},
      compiler_params=None if interpret else plgpu_triton.CompilerParams(num_warps=blocks.num_warps,
                                                                         num_stages=blocks.num_stages),
      interpret=interpret, name="sige_sparse_conv",
  )(*operands)
  return out.reshape(cached.shape)
