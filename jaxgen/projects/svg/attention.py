"""SVG attention: profile the heads, move temporal heads to token-major order, one block-sparse call, move back.

How per-head layouts meet one kernel call. SVG's spatial mask is a band in frame-major order and its temporal mask
is the same band in token-major order (`masks.py`). So rather than giving temporal heads a striped mask in
frame-major order, we permute the q/k/v of the temporal heads to token-major (`layout.heads_to_token_major`, a
`where` between the tensor and its transposed video slice, keyed on the per-(batch, head) classification), after
which *every* head uses the same band block mask. One block-sparse call with that mask broadcast over heads
computes all heads; the output of temporal heads is permuted back. Why this shape:
  - Splitting heads into a spatial call and a temporal call would need data-dependent head counts (shapes that
    change with the classification), which jit cannot compile once; a per-head flag is runtime data.
  - A temporal mask left in frame-major order is a set of thin stripes: at the kernel's 64-128-token blocks almost
    every block it touches is mostly masked, so the kernel would compute several times the useful work. In
    token-major order the same pattern is a dense band.
  - The permutation is exact (no index array, no rounding), so SVG at density 1.0 equals dense attention.
  - Cost: the select reads the tensor twice and writes it once, for q, k, v and the output; at HunyuanVideo 720p
    (119k tokens, 24 heads, head dim 128, bf16: 0.73 GB a tensor) about 9 GB of traffic, a small share of dense
    attention's time (measured with the rest of the block: experiments/bench/README.md, `svg_block.py`). Folding
    the permutation into the kernel's index maps (per-head token offsets) would remove it; that needs a kernel
    change, left for later.
Padded text (HunyuanVideo's prompt, `VideoLayout.text_padding`): the real tokens and the padding attend apart
(`with_padding_apart`), the official mask, so the kernel never sees a block that mixes the two.
The masks are runtime data too: the band is found on device from `density` (a traced scalar is fine), so changing
the density, the classification or the gate never recompiles the kernel.

Profiling and its cost are described in `profiling.py` (`2 t / S` of dense FLOPs: 0.1 % at t = 64, S = 119k).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxgen.nn import attention as nn_attention
from jaxgen.projects.svg import masks
from jaxgen.projects.svg.gating import DenseGate
from jaxgen.projects.svg.layout import VideoLayout, heads_to_frame_major, heads_to_token_major
from jaxgen.projects.svg.profiling import CRITERIA, profile_heads_and_recall, sample_rows
from pallas_kernels.block_sparse_attention import block_sparse_attention


def _validate(q, k, v, layout: VideoLayout, num_sampled_rows: int, density) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape [batch, seq, heads, head_dim]; got q {q.shape}, k {k.shape}, "
                         f"v {v.shape}")
    layout.check_seq_len(q.shape[1], f"q of shape {q.shape}")
    if num_sampled_rows < 1:
        raise ValueError(f"num_sampled_rows must be >= 1; got {num_sampled_rows}")
    if isinstance(density, (int, float)) and not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1]; got {density}")


@dataclasses.dataclass(frozen=True)
class MaskOptions:
    """Per-model choices of the official code (static): `sink_first_frame` (Wan: every row also sees the first
    `frame_tokens` keys, `masks.py`), `profile` ("kernel" or "official", `profiling.CRITERIA`) and
    `official_frames` (the official candidates' band in frames: 2 for Wan, 1.5 for HunyuanVideo)."""

    sink_first_frame: bool = False
    profile: str = "kernel"
    official_frames: float = 2.0


def with_padding_apart(attend, q, k, v, layout: VideoLayout, sm_scale: float):
    """`attend(q, k, v, real_layout) -> (out, *aux)` on the real tokens; the padded text tokens that end the sequence
    (`layout.text_padding`) attend among themselves only, densely (a few hundred tokens at most).

    This is the official HunyuanVideo mask (real tokens never see padding, padding sees only padding), computed as two
    attentions rather than as a token-level mask: the block-sparse kernel masks at block granularity, and the
    real/padding boundary falls inside a block wherever the prompt length is no multiple of the block. The kernel runs
    on the real sequence, whose ragged last block it already masks exactly (its keys past the sequence end). The
    slices copy q, k, v once (0.2 % of HunyuanVideo 720p's tokens are padding; the copy is of the real part).
    """
    if not layout.text_padding:
        return attend(q, k, v, layout)
    real = layout.seq_len - layout.text_padding
    out, *aux = attend(q[:, :real], k[:, :real], v[:, :real], layout.real)
    padding = jax.nn.dot_product_attention(q[:, real:], k[:, real:], v[:, real:], scale=sm_scale)
    return (jnp.concatenate([out, padding.astype(out.dtype)], axis=1), *aux)


@functools.partial(jax.jit, static_argnames=("layout", "num_sampled_rows", "block_q", "block_kv", "sm_scale",
                                             "implementation", "mask_options"))
def _svg(q, k, v, density, rng, *, layout: VideoLayout, num_sampled_rows: int, block_q: int, block_kv: int,
         sm_scale: float, implementation: str | None, mask_options: MaskOptions):
    """Returns (out, head_is_temporal [batch, heads], the density the kernel ran at, recall [batch, heads]); with
    padded text, density and recall are those of the real tokens (`with_padding_apart`)."""

    def sparse(q, k, v, layout):
        sink = layout.frame_tokens if mask_options.sink_first_frame else 0
        band = masks.band_for_density(layout, density, block_q=block_q, block_kv=block_kv, sink_tokens=sink)
        band_mask = masks.band_block_mask(layout, band, block_q=block_q, block_kv=block_kv, sink_tokens=sink)
        rows = sample_rows(rng, layout, num_sampled_rows)
        head_is_temporal, _, recall = profile_heads_and_recall(
            q, k, v, rows, band_mask, layout, block_q=block_q, block_kv=block_kv, sm_scale=sm_scale,
            criterion=mask_options.profile, official_frames=mask_options.official_frames, sink_tokens=sink)
        q, k, v = (heads_to_token_major(x, head_is_temporal, layout) for x in (q, k, v))
        block_mask = jnp.broadcast_to(band_mask, (1, q.shape[2], *band_mask.shape))
        out = block_sparse_attention(q, k, v, block_mask, block_q=block_q, block_kv=block_kv, sm_scale=sm_scale,
                                     implementation=implementation)
        out = heads_to_frame_major(out, head_is_temporal, layout)
        density_run = masks.block_mask_density(band_mask, layout, block_q=block_q, block_kv=block_kv)
        return out, head_is_temporal, density_run, recall

    return with_padding_apart(sparse, q, k, v, layout, sm_scale)


def _run(q, k, v, layout, density, num_sampled_rows, rng, block_q, block_kv, sm_scale, implementation,
         mask_options):
    _validate(q, k, v, layout, num_sampled_rows, density)
    if mask_options.profile not in CRITERIA:
        raise ValueError(f"unknown SVG profiling criterion {mask_options.profile!r}; known: {sorted(CRITERIA)}")
    scale = float(1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale)
    return _svg(q, k, v, jnp.asarray(density, jnp.float32), rng, layout=layout, num_sampled_rows=num_sampled_rows,
                block_q=block_q, block_kv=block_kv, sm_scale=scale, implementation=implementation,
                mask_options=mask_options)


def svg_attention(q: jax.Array, k: jax.Array, v: jax.Array, layout: VideoLayout, *, density=0.25,
                  num_sampled_rows: int = 64, rng: jax.Array, block_q: int = 128, block_kv: int = 128,
                  sm_scale: float | None = None, implementation: str | None = None,
                  mask_options: MaskOptions = MaskOptions()) -> tuple[jax.Array, jax.Array]:
    """Sparse VideoGen attention.

    Args:
      q, k, v: `[batch, seq, heads, head_dim]` with `seq == layout.seq_len`, tokens in frame-major order.
      layout: where the video and text tokens sit.
      density: fraction of the attention map to compute, in (0, 1] (may be a traced scalar); 1.0 is dense.
      num_sampled_rows: query rows profiled per call to classify the heads.
      rng: key for drawing the profiled rows.
      block_q, block_kv, implementation: passed to the block-sparse kernel ("interpret"/"reference" on CPU).
      sm_scale: logits scale, 1 / sqrt(head_dim) by default.
      mask_options: the official per-model choices (first-frame sink, profiling criterion); defaults: neither.

    Returns:
      `(out [batch, seq, heads, head_dim] in q's dtype, head_is_temporal bool [batch, heads])`.
    """
    out, head_is_temporal, _, _ = _run(q, k, v, layout, density, num_sampled_rows, rng, block_q, block_kv, sm_scale,
                                    implementation, mask_options)
    return out, head_is_temporal


def svg_backend(q, k, v, *, bias=None, mask=None, context: nn_attention.AttentionContext, density=0.25,
                num_sampled_rows: int = 64, gate: DenseGate = DenseGate(), dense_backend: str = "dense",
                block_q: int = 128, block_kv: int = 128, sm_scale: float | None = None,
                implementation: str | None = None, mask_options: MaskOptions = MaskOptions()):
    """The "svg" entry of `jaxgen.nn.attention.BACKENDS`.

    Reads context.video_layout and context.rng; with a gate that can fire, also context.step/num_steps/layer/
    num_layers. Gated calls run `dense_backend` ("cudnn" on GPU) under `lax.cond`, so a traced step or layer index
    picks the branch at run time. aux: `head_is_temporal` `[batch, heads]` (all False on dense calls), `recall`
    `[batch, heads]` (the softmax mass the computed mask keeps on the profiled rows; 1.0 on dense calls) and `density`
    (what was computed, 1.0 on dense calls).
    """
    nn_attention.reject_bias_and_mask("svg", q, bias, mask)
    for field in ("video_layout", "rng"):
        if getattr(context, field) is None:
            raise ValueError(f"attention backend 'svg' needs context.{field} (q {q.shape})")

    def sparse(q, k, v):
        return _run(q, k, v, context.video_layout, density, num_sampled_rows, context.rng, block_q, block_kv,
                    sm_scale, implementation, mask_options)

    if gate.never_dense:
        out, head_is_temporal, density_run, recall = sparse(q, k, v)
    else:
        missing = [f for f in ("step", "num_steps", "layer", "num_layers") if getattr(context, f) is None]
        if missing:
            raise ValueError(f"attention backend 'svg' with {gate} needs context fields {missing} (q {q.shape})")

        def dense(q, k, v):
            def attend(q, k, v, layout):
                out, _ = nn_attention.get_backend(dense_backend)(q, k, v, context=context, sm_scale=scale)
                return (out.astype(q.dtype),)

            scale = float(1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale)
            out, = with_padding_apart(attend, q, k, v, context.video_layout, scale)
            heads = (q.shape[0], q.shape[2])
            return out, jnp.zeros(heads, bool), jnp.float32(1.0), jnp.ones(heads, jnp.float32)

        is_dense = gate.is_dense(step=context.step, num_steps=context.num_steps, layer=context.layer,
                                 num_layers=context.num_layers)
        out, head_is_temporal, density_run, recall = lax.cond(is_dense, dense, sparse, q, k, v)
    return out, {"head_is_temporal": head_is_temporal, "density": density_run, "recall": recall}


nn_attention.register_backend("svg", svg_backend)
