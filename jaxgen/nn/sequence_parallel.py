"""Sequence parallelism for attention (DeepSpeed-Ulysses, Jacobs et al. 2023) around any registered backend.

A long video sequence (HunyuanVideo 720p x 129 frames: 119,056 tokens) is split over the devices of one mesh axis.
Everything in a DiT block except attention works token by token, so it runs on each device's slice as it is;
attention needs every token. Ulysses trades the split: an all-to-all turns "my tokens, all heads" into "all tokens,
my heads", the inner backend runs unchanged on `heads / n` full-length heads, and a second all-to-all turns the
output back. Each device then moves `3/n + 1/n` of the sequence's q, k, v and output per call, whatever `n`, so the
communication per device shrinks as devices are added (ring attention's K/V passes do not).

Why this shape, and what it means for the backends:
  - A backend sees the whole sequence of its heads, in the original order. Anything per head runs as on one device:
    SVG's profiling (it draws the same rows on every device, from the same key), its spatial/temporal
    classification and its token-major layout transform, and dense/cuDNN attention. Only the head count changes.
  - Joint attention (text tokens in the same sequence as the video, first as in CogVideoX or last as in
    HunyuanVideo) keeps the text whole: only the video tokens are split over the sequence. The text's q, k, v enter
    split over heads instead (each device takes its own heads' slice, no communication), are put back in place
    around the gathered video, and their output leaves split over heads; the layer after (the output projection
    contracts heads) gathers it. So the video length, not video + text, must divide by the axis size: 226 or 256
    text tokens need not.
  - The heads must divide by the axis size (Wan-14B's 40 heads: 2, 4, 5, 8; HunyuanVideo's 24: 2, 3, 4, 6, 8): a
    ValueError says so rather than padding heads.
  - It is `shard_map` over the ambient mesh (`with jax.set_mesh(mesh):` around the jitted call), on the axis the
    `axis` option names; other mesh axes see the computation replicated. The wrapper works on global arrays, so it is
    correct whatever the inputs' sharding; it is fast when the surrounding activations are already split over
    `axis` on the sequence, which XLA does not always choose by itself (with the weights split over the same axis it
    gathered the sequence in whole blocks): models pin it at block boundaries with `keep_sequence_split`.
  - Cross-attention (queries from the video, keys from captions of another length, as in Wan) needs no exchange:
    the queries stay split, every device holds the captions whole, and each attends its own tokens.
  - Diagnostics (`aux`) of the inner backend come back whole: `[batch, heads, ...]` leaves are joined over heads,
    scalars are the same on every device (SVG's computed density) and are taken as they are.

Select it in gin like any backend: `attention_backend = 'ulysses'`, `attention_options = {'axis': 'fsdp',
'inner': 'svg', 'density': 0.25, ...}`: every option except `axis`, `inner`, `text_tokens` and `text_first` goes to
the inner backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxgen.nn import attention as nn_attention


def _text_placement(context: nn_attention.AttentionContext, text_tokens: int | None,
                    text_first: bool | None) -> tuple[int, bool]:
    """(text token count, text before video?) from the options, else from `context.video_layout` (any object with
    `text_tokens` and `text_first`, as SVG's `VideoLayout`), else no text."""
    layout = context.video_layout
    if text_tokens is None:
        text_tokens = getattr(layout, "text_tokens", 0)
    if text_first is None:
        text_first = getattr(layout, "text_first", True)
    if layout is not None and (text_tokens, text_first) != (getattr(layout, "text_tokens", text_tokens),
                                                            getattr(layout, "text_first", text_first)):
        raise ValueError(f"ulysses options text_tokens={text_tokens}, text_first={text_first} disagree with "
                         f"context.video_layout {layout}")
    return int(text_tokens), bool(text_first)


def _mesh_axis_size(axis: str | None, q: jax.Array) -> int:
    if axis is None:
        raise ValueError(f"attention backend 'ulysses' needs the option `axis`: the mesh axis that splits the sequence "
                         f"(q {q.shape})")
    mesh = jax.sharding.get_abstract_mesh()
    if axis not in mesh.axis_names:
        found = f"the ambient mesh has axes {tuple(mesh.axis_names)}" if mesh.axis_names else "no mesh is set"
        raise ValueError(f"attention backend 'ulysses' splits the sequence over mesh axis {axis!r}, but {found}; "
                         f"run the jitted model under `with jax.set_mesh(mesh):` (q {q.shape})")
    return mesh.shape[axis]


def ulysses_backend(q, k, v, *, bias=None, mask=None, context: nn_attention.AttentionContext, axis: str | None = None,
                    inner: str = "dense", text_tokens: int | None = None, text_first: bool | None = None,
                    **inner_options):
    """The "ulysses" entry of `jaxgen.nn.attention.BACKENDS`: `inner` run sequence-parallel over mesh axis `axis`.

    q, k, v: global `[batch, seq, heads, head_dim]`; `text_tokens` of the sequence are text, placed first
    (`text_first`) or last; by default both come from `context.video_layout`, and no text without one. Returns the
    inner backend's `(out, aux)`, equal to running it on one device.
    """
    nn_attention.reject_bias_and_mask("ulysses", q, bias, mask)
    if q.ndim != 4 or k.shape != v.shape or (k.shape[0], *k.shape[2:]) != (q.shape[0], *q.shape[2:]):
        raise ValueError(f"ulysses needs q [batch, seq, heads, head_dim] and k, v [batch, kv_seq, heads, head_dim]; "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    backend = nn_attention.get_backend(inner)
    size = _mesh_axis_size(axis, q)
    if k.shape[1] != q.shape[1]:
        return _cross_attention(q, k, v, backend, axis, size, context, inner_options)
    text, first = _text_placement(context, text_tokens, text_first)
    heads, video = q.shape[2], q.shape[1] - text
    if heads % size:
        raise ValueError(f"ulysses gives each of the {size} devices of mesh axis {axis!r} whole heads, but q {q.shape} "
                         f"has {heads} heads, not a multiple of {size}; use an axis size that divides {heads}")
    if video <= 0 or video % size:
        raise ValueError(f"ulysses splits the {video} non-text tokens of q {q.shape} ({text} text tokens) over the "
                         f"{size} devices of mesh axis {axis!r}; {video} is not a positive multiple of {size}")

    def split_text(x):
        return (x[:, :text], x[:, text:]) if first else (x[:, video:], x[:, :video])

    def join_text(text_part, video_part):
        return jnp.concatenate([text_part, video_part] if first else [video_part, text_part], axis=1)

    def local(q_video, k_video, v_video, *text_qkv):
        """On one device: its sequence slice of the video, all heads -> all tokens of its heads, and back."""
        gathered = [lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)
                    for x in (q_video, k_video, v_video)]
        if text:
            gathered = [join_text(t, x) for t, x in zip(text_qkv, gathered)]
        out, aux = backend(*gathered, context=context, **inner_options)
        text_out, video_out = split_text(out) if text else (None, out)
        video_out = lax.all_to_all(video_out, axis, split_axis=1, concat_axis=2, tiled=True)
        return (video_out, text_out, aux) if text else (video_out, aux)

    local_shape = jax.ShapeDtypeStruct((q.shape[0], q.shape[1], heads // size, q.shape[3]), q.dtype)
    _, aux_shapes = jax.eval_shape(lambda x: backend(x, x, x, context=context, **inner_options), local_shape)
    aux_specs = jax.tree.map(lambda leaf: P(None, axis) if leaf.ndim >= 2 else P(), aux_shapes)
    video_spec, heads_spec = P(None, axis), P(None, None, axis)
    pieces = [split_text(x) if text else (None, x) for x in (q, k, v)]
    args = [video_part for _, video_part in pieces] + ([text_part for text_part, _ in pieces] if text else [])
    in_specs = (video_spec,) * 3 + ((heads_spec,) * 3 if text else ())
    out_specs = (video_spec, heads_spec, aux_specs) if text else (video_spec, aux_specs)
    # check_vma=False: Pallas kernels (SVG's, block-sparse) declare outputs without per-axis variance. It is safe
    # here because every output that carries gradients leaves split over `axis`; only invariant scalars leave whole.
    results = jax.shard_map(local, in_specs=in_specs, out_specs=out_specs, axis_names={axis},
                            check_vma=False)(*args)
    if text:
        video_out, text_out, aux = results
        return join_text(text_out, video_out), aux
    return results


def _cross_attention(q, k, v, backend, axis: str, size: int, context, inner_options):
    """Keys from another, short sequence (Wan's captions) that every device holds whole: each device attends its own
    query tokens to all keys, with no communication at all."""
    if q.shape[1] % size:
        raise ValueError(f"ulysses splits the {q.shape[1]} query tokens of q {q.shape} over the {size} devices of "
                         f"mesh axis {axis!r}; {q.shape[1]} is not a multiple of {size}")

    def local(q, k, v):
        return backend(q, k, v, context=context, **inner_options)

    local_q = jax.ShapeDtypeStruct((q.shape[0], q.shape[1] // size, *q.shape[2:]), q.dtype)
    _, aux_shapes = jax.eval_shape(local, local_q, k, v)
    aux_specs = jax.tree.map(lambda leaf: P(), aux_shapes)
    return jax.shard_map(local, in_specs=(P(None, axis), P(), P()), out_specs=(P(None, axis), aux_specs),
                         axis_names={axis}, check_vma=False)(q, k, v)


nn_attention.register_backend("ulysses", ulysses_backend)


def keep_sequence_split(x: jax.Array, backend: str, options) -> jax.Array:
    """`x` `[batch, seq, ...]` pinned split over the "ulysses" backend's mesh axis on its sequence dimension (its other
    dimensions left to XLA); as it is for any other backend.

    Why: the wrapper is correct whatever the activations' sharding, but fast only when they arrive split as its
    all-to-alls want them. XLA's sharding propagation does not guarantee that through a scanned block's carry: with
    the weights split over the same axis (FSDP, the `*_sp.gin` recipes) it gathered the whole sequence in Wan's and
    HunyuanVideo's blocks on 4 CPU devices. The video ports call this on their video tokens on entering and leaving
    each block (docs/scale_out.md)."""
    if backend != "ulysses":
        return x
    axis = dict(options or {}).get("axis")
    free = P.UNCONSTRAINED
    return jax.lax.with_sharding_constraint(x, P(free, axis, *(free,) * (x.ndim - 2)))
