"""Online head classification: spatial or temporal, decided per (batch, head) from a few sampled query rows.

For `t` query rows, exact attention over all keys is compared with attention restricted to each candidate mask
(spatial in frame-major order; the same mask in token-major order, mapped back to frame-major positions); the
candidate with the lower mean squared error wins. Everything is jnp inside the caller's jit.

Two criteria choose the candidates (`CRITERIA`, the backend's `profile` option):
  - "kernel" (jaxgen's default): the band block mask the kernel will run, at the run's density (sink included). A
    head is judged by exactly the work that will be done for it, so the choice adapts to the density.
  - "official" (the official Sparse-VideoGen code): fixed candidates whatever the density, a band of
    `|i // 128 - j // 128| < floor(frames * frame_tokens / 128)` blocks of 128 video tokens (`frames` = 2 for Wan,
    1.5 for HunyuanVideo), text rows and columns dense, plus the sink keys where the run has them (Wan).
    `floor(...)` is at least 1 here (the row's own block), where the official code would leave a row with no key
    at frames below 128 tokens; at the models' real shapes the two agree.

Rows are stratified over the video tokens (one uniform draw in each of `t` equal strata), so they cover the whole
video rather than a prefix (the official code draws from the first ~10k rows only, because it materialises a
`rows x seq` slice of a `seq x seq` mask). Text rows are never drawn: both candidates keep every text row dense, so
those rows have zero error under either and carry no signal.

Cost per (batch, head), with `S` the sequence length and `D` the head dim: the logits of `t` rows take `2 t S D`
FLOPs and each of the three outputs (exact, spatial, temporal) another `2 t S D`, so `8 t S D` in all against
`4 S^2 D` for dense attention: a fraction `2 t / S`, 0.1 % at t = 64 and S = 119k (HunyuanVideo 720p), 0.3 % at
S = 45k (CogVideoX-1.5). Being this thin it is bound by memory traffic instead: K and V read once (1.5 GB in bf16
at HunyuanVideo 720p) and the f32 logits `[batch, heads, t, S]` (0.73 GB there) written once and read by three
softmaxes, roughly 5 GB (its measured time against dense attention: experiments/bench/README.md, `svg_block.py`).
The bool row masks `[t, S]` are shared by every head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.projects.svg.layout import VideoLayout, token_major_position


def sample_rows(rng: jax.Array, layout: VideoLayout, num_rows: int) -> jax.Array:
    """int32 `[min(num_rows, video_tokens)]` sequence positions, one uniform draw in each stratum of the video."""
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1; got {num_rows}")
    num_rows = min(num_rows, layout.video_tokens)
    edges = (jnp.arange(num_rows + 1) * layout.video_tokens) // num_rows
    offsets = jax.random.randint(rng, (num_rows,), 0, edges[1:] - edges[:-1])
    return (layout.video_start + edges[:-1] + offsets).astype(jnp.int32)


OFFICIAL_BLOCK = 128  # the official candidates' block size, independent of the kernel's


def row_masks(rows: jax.Array, band_mask: jax.Array, layout: VideoLayout, *, block_q: int,
              block_kv: int, **unused) -> tuple[jax.Array, jax.Array]:
    """Bool `[t, seq]` (spatial, temporal): which keys each sampled row sees, in frame-major positions.

    The band block mask is what the kernel will run, so the rows are judged by exactly the blocks that will be
    computed: directly for spatial heads, through the token-major positions of query and keys for temporal heads.
    The official criterion's options (`unused`) do not apply: sink columns are already in `band_mask`.
    """
    del unused
    keys = jnp.arange(layout.seq_len, dtype=jnp.int32)
    spatial = band_mask[rows // block_q][:, keys // block_kv]
    moved_rows, moved_keys = token_major_position(rows, layout), token_major_position(keys, layout)
    temporal = band_mask[moved_rows // block_q][:, moved_keys // block_kv]
    return spatial, temporal


def official_row_masks(rows: jax.Array, band_mask: jax.Array, layout: VideoLayout, *, frames: float = 2.0,
                       sink_tokens: int = 0, **unused) -> tuple[jax.Array, jax.Array]:
    """Bool `[t, seq]` (spatial, temporal): the official fixed candidates (module docstring); `band_mask` unused."""
    del band_mask, unused
    width = max(1, int(frames * layout.frame_tokens // OFFICIAL_BLOCK))
    keys = jnp.arange(layout.seq_len, dtype=jnp.int32)

    def candidate(row_positions, key_positions):
        row_video, key_video = row_positions - layout.video_start, key_positions - layout.video_start
        row_is_video = (row_video >= 0) & (row_video < layout.video_tokens)
        key_is_video = (key_video >= 0) & (key_video < layout.video_tokens)
        near = jnp.abs(row_video[:, None] // OFFICIAL_BLOCK - key_video[None, :] // OFFICIAL_BLOCK) < width
        sink = key_is_video & (key_video < sink_tokens)
        return (row_is_video[:, None] & key_is_video[None, :] & near) | ~row_is_video[:, None] | (
            ~key_is_video | sink)[None, :]

    spatial = candidate(rows, keys)
    temporal = candidate(token_major_position(rows, layout), token_major_position(keys, layout))
    return spatial, temporal


CRITERIA = {"kernel": row_masks, "official": official_row_masks}


def _attend(logits: jax.Array, values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """logits `[batch, heads, t, seq]` (f32), values `[batch, seq, heads, dim]` -> f32 `[batch, heads, t, dim]`.

    Every sampled row keeps at least its own block under both masks, so no row is all -inf. The weights are cast to
    the values' dtype (as the attention kernels do) so that V is never copied to f32; the sum accumulates in f32.
    """
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
    return jnp.einsum("bhqk,bkhd->bhqd", weights, values, preferred_element_type=jnp.float32)


def profile_heads(q: jax.Array, k: jax.Array, v: jax.Array, rows: jax.Array, band_mask: jax.Array,
                  layout: VideoLayout, *, block_q: int, block_kv: int, sm_scale: float, criterion: str = "kernel",
                  official_frames: float = 2.0, sink_tokens: int = 0) -> tuple[jax.Array, jax.Array]:
    """Returns (head_is_temporal bool `[batch, heads]`, mse f32 `[2, batch, heads]` for (spatial, temporal)).

    `criterion` names the candidate masks (`CRITERIA`); "official" reads `official_frames` and `sink_tokens`."""
    head_is_temporal, mse, _ = profile_heads_and_recall(
        q, k, v, rows, band_mask, layout, block_q=block_q, block_kv=block_kv, sm_scale=sm_scale, criterion=criterion,
        official_frames=official_frames, sink_tokens=sink_tokens)
    return head_is_temporal, mse


def profile_heads_and_recall(q: jax.Array, k: jax.Array, v: jax.Array, rows: jax.Array, band_mask: jax.Array,
                             layout: VideoLayout, *, block_q: int, block_kv: int, sm_scale: float,
                             criterion: str = "kernel", official_frames: float = 2.0,
                             sink_tokens: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`profile_heads` plus the attention recall of the chosen masks, f32 `[batch, heads]`.

    Recall (the paper's quality measure) is the share of each sampled row's exact softmax mass that falls inside the
    keys the kernel will compute for that head (`band_mask`, seen through the head's chosen order), averaged over
    the rows: 1.0 when nothing is cut. It reuses the profiling logits, so it costs one more reduction over
    `[batch, heads, t, seq]`. Rows are video rows only; text rows are dense under every mask (recall 1).
    """
    layout.check_seq_len(q.shape[1], f"q of shape {q.shape}")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown SVG profiling criterion {criterion!r}; known: {sorted(CRITERIA)}")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q[:, rows], k, preferred_element_type=jnp.float32) * sm_scale
    exact = _attend(logits, v, None)
    spatial, temporal = CRITERIA[criterion](rows, band_mask, layout, block_q=block_q, block_kv=block_kv,
                                            frames=official_frames, sink_tokens=sink_tokens)
    mse = jnp.stack([jnp.mean((_attend(logits, v, mask) - exact) ** 2, axis=(2, 3))
                     for mask in (spatial, temporal)])
    head_is_temporal = mse[1] < mse[0]
    if criterion != "kernel":  # recall is measured against what the kernel runs, whatever chose the class
        spatial, temporal = row_masks(rows, band_mask, layout, block_q=block_q, block_kv=block_kv)
    probabilities = jax.nn.softmax(logits, axis=-1)
    kept = [jnp.mean(jnp.sum(jnp.where(mask, probabilities, 0.0), -1), -1) for mask in (spatial, temporal)]
    return head_is_temporal, mse, jnp.where(head_is_temporal, kept[1], kept[0])
