"""Where the tokens of a text-conditioned video sit in the sequence, and the frame-major <-> token-major transform.

A video DiT flattens `num_frames x frame_tokens` latent patches frame by frame (frame-major: position
`frame * frame_tokens + patch`) and puts the text tokens before the video (CogVideoX) or after it (HunyuanVideo).
Token-major order lists the same patch across all frames next to each other (`patch * num_frames + frame`), which
turns a temporal head's "same place in every frame" pattern into a contiguous band. The transform only moves video
tokens; text tokens keep their positions, so the text rows and columns of a mask are the same in both orders.

The transform is a reshape and a transpose of the video slice: a permutation, exactly invertible, with no index
array in memory. Per-head selection (`*_heads`) is a `where` on a per-(batch, head) flag, i.e. runtime data, so a
new head classification never recompiles anything.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class VideoLayout:
    """Token layout of one sequence: `text_tokens` text tokens first or last, then/before the frame-major video.

    `text_padding`: how many of the text tokens, at the very end of the sequence (text last), are padding, as
    HunyuanVideo pads its prompt to 256 tokens. Padding tokens see only padding and real tokens never see padding
    (the official SVG's HunyuanVideo mask), so attention splits into the real sequence (`real`) and a padding block;
    it is static, like the official code's `prompt_length`.
    """

    num_frames: int
    frame_tokens: int
    text_tokens: int = 0
    text_first: bool = True
    text_padding: int = 0

    def __post_init__(self):
        if self.num_frames < 1 or self.frame_tokens < 1 or self.text_tokens < 0:
            raise ValueError(f"VideoLayout needs num_frames >= 1, frame_tokens >= 1, text_tokens >= 0; got "
                             f"num_frames={self.num_frames}, frame_tokens={self.frame_tokens}, "
                             f"text_tokens={self.text_tokens}")
        if not 0 <= self.text_padding <= self.text_tokens or (self.text_padding and self.text_first):
            raise ValueError(f"VideoLayout's text_padding must be in [0, text_tokens] with the text last (padding "
                             f"ends the sequence); got text_padding={self.text_padding}, "
                             f"text_tokens={self.text_tokens}, text_first={self.text_first}")

    @property
    def real(self) -> VideoLayout:
        """The layout of the sequence without its padding tokens (itself when there are none)."""
        return dataclasses.replace(self, text_tokens=self.text_tokens - self.text_padding, text_padding=0)

    @property
    def video_tokens(self) -> int:
        return self.num_frames * self.frame_tokens

    @property
    def seq_len(self) -> int:
        return self.video_tokens + self.text_tokens

    @property
    def video_start(self) -> int:
        """Sequence position of the first video token."""
        return self.text_tokens if self.text_first else 0

    def check_seq_len(self, seq_len: int, what: str) -> None:
        if seq_len != self.seq_len:
            raise ValueError(f"{what} has sequence length {seq_len}, but {self} holds {self.video_tokens} video + "
                             f"{self.text_tokens} text = {self.seq_len} tokens")


def _swap_video_axes(x: jax.Array, layout: VideoLayout, outer: int, inner: int, axis: int) -> jax.Array:
    """Views the video slice of `axis` as `[outer, inner]`, swaps the two, and puts the text back around it."""
    start, stop = layout.video_start, layout.video_start + layout.video_tokens
    video = lax.slice_in_dim(x, start, stop, axis=axis)
    video = video.reshape(x.shape[:axis] + (outer, inner) + x.shape[axis + 1:])
    video = jnp.swapaxes(video, axis, axis + 1).reshape(video.shape[:axis] + (-1,) + video.shape[axis + 2:])
    pieces = [lax.slice_in_dim(x, 0, start, axis=axis), video, lax.slice_in_dim(x, stop, x.shape[axis], axis=axis)]
    return jnp.concatenate([p for p in pieces if p.shape[axis]], axis=axis)


def to_token_major(x: jax.Array, layout: VideoLayout, axis: int = 1) -> jax.Array:
    """Frame-major -> token-major along `axis` (the sequence axis); text tokens stay where they are."""
    layout.check_seq_len(x.shape[axis], f"array of shape {x.shape} (axis {axis})")
    return _swap_video_axes(x, layout, layout.num_frames, layout.frame_tokens, axis)


def to_frame_major(x: jax.Array, layout: VideoLayout, axis: int = 1) -> jax.Array:
    """Token-major -> frame-major along `axis`: the exact inverse of `to_token_major`."""
    layout.check_seq_len(x.shape[axis], f"array of shape {x.shape} (axis {axis})")
    return _swap_video_axes(x, layout, layout.frame_tokens, layout.num_frames, axis)


def token_major_position(position: jax.Array, layout: VideoLayout) -> jax.Array:
    """Where frame-major sequence position(s) land after `to_token_major` (text positions map to themselves)."""
    video = position - layout.video_start
    is_video = (video >= 0) & (video < layout.video_tokens)
    frame, patch = video // layout.frame_tokens, video % layout.frame_tokens
    return jnp.where(is_video, layout.video_start + patch * layout.num_frames + frame, position)


def _check_heads(x: jax.Array, head_is_temporal: jax.Array) -> None:
    if x.ndim != 4 or head_is_temporal.shape not in ((x.shape[0], x.shape[2]), (1, x.shape[2])):
        raise ValueError(f"expected x [batch, seq, heads, head_dim] and head_is_temporal [batch or 1, heads]; got x "
                         f"{x.shape}, head_is_temporal {head_is_temporal.shape}")


def heads_to_token_major(x: jax.Array, head_is_temporal: jax.Array, layout: VideoLayout) -> jax.Array:
    """`[batch, seq, heads, head_dim]`: token-major for the heads flagged temporal, unchanged for the others."""
    _check_heads(x, head_is_temporal)
    return jnp.where(head_is_temporal[:, None, :, None], to_token_major(x, layout), x)


def heads_to_frame_major(x: jax.Array, head_is_temporal: jax.Array, layout: VideoLayout) -> jax.Array:
    """The inverse of `heads_to_token_major` for the same flags."""
    _check_heads(x, head_is_temporal)
    return jnp.where(head_is_temporal[:, None, :, None], to_frame_major(x, layout), x)
