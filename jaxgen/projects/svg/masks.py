"""SVG's sparse attention masks, built directly at block level from token indices (never a seq x seq array).

Token-level definition (the spec, and what the tests check the blocks against): with `v(i)` a token's index among
the video tokens in the current order, query `i` attends to key `j` when either is a text token or
`|v(i) - v(j)| <= band`. In frame-major order that band is SVG's spatial mask (the same and nearby frames: a band of
+-w frames is `band = w * frame_tokens`); in token-major order the same band is the temporal mask (the same and
nearby patches in every frame). So one function builds both; `layout.py` moves the tokens.

A block is active when any of its token pairs is: here, when the block holds a text token on either side, or when the
gap between the two blocks' video-index intervals is at most `band`. Each of those is a vector over blocks, so the
mask costs `O(num_q_blocks * num_kv_blocks)`, which is what lets it be rebuilt on device inside jit with a traced
`band` or `density` (runtime data: a new density does not recompile the kernel).

Sink keys (`sink_tokens`, the official Wan setting): every query row also sees the first `sink_tokens` video keys
in the current order. With `sink_tokens = frame_tokens` that is the first frame for spatial (frame-major) heads; for
temporal heads, whose keys are in token-major order, it is the first `frame_tokens / num_frames` patches of every
frame, which is exactly what the official code computes too (its mask is built once in the permuted order and
shared by both kinds of head, for the kernel and for profiling alike).

`density` is the fraction of the `seq x seq` attention map the kernel computes, i.e. the token area of the active
blocks, sink and text included. The official flag called "sparsity" is close to it but not the same number. The
official code (`sparsity_to_width`) subtracts the text rows and columns from `sparsity * seq^2`, takes the half-width
`w = seq (1 - sqrt(1 - s))` whose token-level band has that area, and then rounds `w` to a multiple of 128 tokens
per model: down, with `|i - j| < w` (HunyuanVideo: the area lands a little below `s`, e.g. 0.2489 for 0.25 at 720p
as measured when the two codes were compared), or up, with `|i - j| <= w` and the sink added on top (Wan: above).
It never measures the area of the blocks its kernel then computes. jaxgen instead searches for the narrowest band
whose block mask reaches `density` (sink and text counted), so the density computed is at least `density`, and it
reports it (`block_mask_density`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxgen.projects.svg.layout import VideoLayout


def num_blocks(seq_len: int, block: int) -> int:
    return math.ceil(seq_len / block)


def _block_spans(layout: VideoLayout, block: int):
    """Per block: sizes, the first/last video index inside it, whether it holds video, whether it holds text."""
    starts = jnp.arange(num_blocks(layout.seq_len, block), dtype=jnp.int32) * block
    ends = jnp.minimum(starts + block, layout.seq_len)
    video_start, video_stop = layout.video_start, layout.video_start + layout.video_tokens
    first = jnp.maximum(starts, video_start) - video_start
    last = jnp.minimum(ends, video_stop) - 1 - video_start
    # Text sits wholly before the video or wholly after it, so one of these two tests is always empty.
    has_text = (starts < video_start) | (ends > video_stop)
    return ends - starts, first, last, first <= last, has_text


def _check_blocks(block_q: int, block_kv: int) -> None:
    if block_q <= 0 or block_kv <= 0:
        raise ValueError(f"block sizes must be positive; got block_q={block_q}, block_kv={block_kv}")


def band_block_mask(layout: VideoLayout, band, *, block_q: int, block_kv: int, sink_tokens: int = 0) -> jax.Array:
    """Bool `[ceil(seq / block_q), ceil(seq / block_kv)]`: the band of half-width `band` video tokens plus text rows
    and columns, plus the columns of the first `sink_tokens` video keys; `band` may be a traced integer."""
    _check_blocks(block_q, block_kv)
    _, q_first, q_last, q_video, q_text = _block_spans(layout, block_q)
    _, k_first, k_last, k_video, k_text = _block_spans(layout, block_kv)
    gap = jnp.maximum(q_first[:, None] - k_last[None, :], k_first[None, :] - q_last[:, None])
    in_band = q_video[:, None] & k_video[None, :] & (gap <= band)
    sink = k_video & (k_first < sink_tokens)
    return in_band | q_text[:, None] | (k_text | sink)[None, :]


def block_mask_density(block_mask: jax.Array, layout: VideoLayout, *, block_q: int, block_kv: int) -> jax.Array:
    """Fraction of the `seq x seq` map covered by the active blocks (ragged last blocks counted by their real size);
    leading axes of `block_mask` are kept."""
    _check_blocks(block_q, block_kv)
    rows = _block_spans(layout, block_q)[0].astype(jnp.float32)
    cols = _block_spans(layout, block_kv)[0].astype(jnp.float32)
    expected = (rows.shape[0], cols.shape[0])
    if tuple(block_mask.shape[-2:]) != expected:
        raise ValueError(f"block_mask has shape {block_mask.shape}; its last two axes must be {expected} for "
                         f"{layout} with block_q={block_q}, block_kv={block_kv}")
    area = jnp.einsum("...qk,q,k->...", block_mask.astype(jnp.float32), rows, cols)
    return area / float(layout.seq_len) ** 2


def band_for_density(layout: VideoLayout, density, *, block_q: int, block_kv: int,
                     sink_tokens: int = 0) -> jax.Array:
    """The narrowest band (int32, in video tokens) whose block mask reaches `density`; `density` may be traced.

    Density grows with the band, so a binary search over `[0, video_tokens - 1]` finds it in a fixed number of
    steps (jit-friendly). The widest band is the full map, so `density=1.0` gives exactly dense attention; a
    density below the band-0 mask (text rows/columns, sink columns, diagonal blocks) gives band 0.
    """
    if isinstance(density, (int, float)) and not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1]; got {density}")

    def reaches(band):
        mask = band_block_mask(layout, band, block_q=block_q, block_kv=block_kv, sink_tokens=sink_tokens)
        return block_mask_density(mask, layout, block_q=block_q, block_kv=block_kv) >= density

    def step(_, bounds):
        low, high = bounds
        mid = (low + high) // 2
        ok = reaches(mid)
        return jnp.where(ok, low, mid + 1), jnp.where(ok, mid, high)

    widest = layout.video_tokens - 1
    steps = max(1, widest.bit_length())
    _, band = lax.fori_loop(0, steps, step, (jnp.int32(0), jnp.int32(widest)))
    return band
