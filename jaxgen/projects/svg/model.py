"""A text-to-video diffusion transformer in the style of CogVideoX / HunyuanVideo, sized from CPU-tiny to 13B.

Sequence: caption tokens first, then the video's 3D patches in frame-major order (CogVideoX), all in one full 3D
attention, so `VideoDiT.layout(...)` is exactly the `VideoLayout` that SVG's masks and profiling expect. Pieces:
  - 3D patch embedding: non-overlapping `(pt, ph, pw)` patches, one Dense (a strided Conv3d in the originals).
  - Captions: ids from a small fixed vocabulary embedded by the model (no external text encoder); a masked mean of
    the caption embedding joins the timestep in the adaLN vector, as HunyuanVideo adds its pooled CLIP vector.
  - 3D RoPE on the video tokens only (head dim split into time / height / width parts, HunyuanVideo's 16/56/56 at
    head dim 128); caption tokens carry a learned position embedding instead, as in CogVideoX.
  - QK RMSNorm (both originals) keeps bf16 logits tame in deep stacks.
  - adaLN-Zero blocks with separate modulation for caption and video tokens (CogVideoX's "expert" adaLN): the two
    kinds of token live at different scales, but they share the attention and MLP weights.
  - The blocks are `jaxgen.nn.transformer`'s adaLN-Zero block, the one the image DiT uses, as one `nn.scan`
    (optionally rematerialised): unrolled deep DiTs took minutes to compile on an H100.
Attention goes through `jaxgen.nn.attention` by backend name ("dense" to train, "svg" to sample), with an
`AttentionContext` carrying the layout, the (traced) layer index, the denoising step and a per-layer key; backend
diagnostics (SVG's `head_is_temporal`) are sown into "intermediates", stacked over layers by the scan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn import attention as nn_attention
from jaxgen.nn.embeddings import timestep_embedding
from jaxgen.nn.transformer import scanned_blocks
from jaxgen.projects.svg.layout import VideoLayout


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Default (time, height, width) split of the head dim: CogVideoX's 2/8, 3/8, 3/8, rounded to even sizes."""
    if head_dim % 8:
        raise ValueError(f"3D RoPE needs head_dim divisible by 8; got {head_dim}")
    time = 2 * (head_dim // 8)
    rest = head_dim - time
    height = 2 * (rest // 4)
    return time, height, rest - height


def rope_3d(grid: Sequence[int], axis_dims: Sequence[int],
            theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """cos, sin `[frames * height * width, sum(axis_dims) // 2]` for the frame-major token grid.

    Each axis rotates its own slice of channel pairs by `position * theta ** (-2i / dim)`, so the product of a
    rotated query and key depends only on the difference of their (t, y, x) positions.
    """
    if len(grid) != 3 or len(axis_dims) != 3 or any(d % 2 for d in axis_dims):
        raise ValueError(f"rope_3d needs a 3-axis grid and 3 even axis dims; got grid {grid}, dims {axis_dims}")
    positions = jnp.stack(jnp.meshgrid(*(jnp.arange(n, dtype=jnp.float32) for n in grid), indexing="ij"), -1)
    positions = positions.reshape(-1, 3)
    angles = [positions[:, a:a + 1] * theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
              for a, d in enumerate(axis_dims)]
    angles = jnp.concatenate(angles, -1)
    return jnp.cos(angles), jnp.sin(angles)


def patch_grid(video_shape: Sequence[int], patch: Sequence[int], channels: int,
               what: str = "video") -> tuple[int, int, int]:
    """Token grid (frames, height, width) of a video `[batch, frames, height, width, channels]` cut into `patch`es; a
    ValueError naming `what` if the shape is not that or does not divide."""
    if len(video_shape) != 5 or video_shape[-1] != channels or any(n % p for n, p in zip(video_shape[1:4], patch)):
        raise ValueError(f"{what} must be [batch, frames, height, width, {channels}] with frames/height/width "
                         f"divisible by patch {tuple(patch)}; got {tuple(video_shape)}")
    return tuple(n // p for n, p in zip(video_shape[1:4], patch))


def patchify(video: jax.Array, patch: Sequence[int]) -> jax.Array:
    """`[batch, frames, height, width, c]` -> `[batch, tokens, pt * ph * pw * c]`, tokens frame-major: the token of
    patch (f, y, x) sits at `f * (height // ph) * (width // pw) + y * (width // pw) + x`."""
    batch, frames, height, width, channels = video.shape
    (pt, ph, pw), grid = patch, (frames // patch[0], height // patch[1], width // patch[2])
    x = video.reshape(batch, grid[0], pt, grid[1], ph, grid[2], pw, channels)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, grid[0] * grid[1] * grid[2], -1)


def unpatchify(tokens: jax.Array, grid: Sequence[int], patch: Sequence[int], channels: int) -> jax.Array:
    """The inverse of `patchify`."""
    (pt, ph, pw), (f, h, w) = patch, grid
    x = tokens.reshape(tokens.shape[0], f, h, w, pt, ph, pw, channels).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(tokens.shape[0], f * pt, h * ph, w * pw, channels)


class VideoDiT(nn.Module):
    """Predicts the flow-matching velocity of a video `[batch, frames, height, width, channels]` at time `t`.

    `caption` is int `[batch, text_tokens]` from a vocabulary of `vocab_size` ids, id 0 padding (an all-padding
    caption is the unconditional input of classifier-free guidance). `attention_backend` and `attention_options`
    are passed to `jaxgen.nn.attention`; they create no parameters, so the same variables serve "dense" and "svg".
    """

    vocab_size: int
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch: tuple[int, int, int] = (2, 4, 4)
    in_channels: int = 3
    rope_dims: tuple[int, int, int] | None = None
    rope_theta: float = 10000.0
    attention_backend: str = "dense"
    attention_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        super().__post_init__()

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def grid(self, video_shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid (frames, height, width) of a video `[batch, frames, height, width, channels]`."""
        return patch_grid(video_shape, self.patch, self.in_channels)

    def layout(self, video_shape: Sequence[int], text_tokens: int) -> VideoLayout:
        """Where caption and video tokens sit in this model's attention sequence."""
        frames, height, width = self.grid(video_shape)
        return VideoLayout(num_frames=frames, frame_tokens=height * width, text_tokens=text_tokens, text_first=True)

    @nn.compact
    def __call__(self, video: jax.Array, t: jax.Array, caption: jax.Array, *, step=None, num_steps: int | None = None,
                 rng: jax.Array | None = None) -> jax.Array:
        """Velocity `[batch, frames, height, width, channels]` (float32); `step`/`num_steps`/`rng` feed the
        attention context (SVG's gate and profiling)."""
        batch = video.shape[0]
        if t.shape != (batch,) or caption.ndim != 2 or caption.shape[0] != batch:
            raise ValueError(f"expected t [{batch}] and caption [{batch}, text_tokens] for video {video.shape}; got "
                             f"t {t.shape}, caption {caption.shape}")
        grid = self.grid(video.shape)
        layout = self.layout(video.shape, caption.shape[1])
        x_video = nn.Dense(self.width, dtype=self.dtype, name="patch_embed")(
            patchify(video, self.patch).astype(self.dtype))

        text = nn.Embed(self.vocab_size, self.width, name="caption_embed")(caption)
        text = text + self.param("caption_pos", nn.initializers.normal(0.02), (1, caption.shape[1], self.width))
        keep = (caption != 0)[..., None]
        pooled = jnp.sum(text * keep, 1) / jnp.maximum(jnp.sum(keep, 1), 1)
        c = nn.Dense(self.width, name="t_embed_1")(timestep_embedding(t, 256, freq_shift=0.0, scale=1000.0))
        c = nn.Dense(self.width, name="t_embed_2")(nn.silu(c)) + nn.Dense(self.width, name="caption_pool")(pooled)

        x = jnp.concatenate([text.astype(self.dtype), x_video], axis=1)
        # RoPE on the video tokens only: caption rows rotate by angle 0 (the identity).
        video_cos, video_sin = rope_3d(grid, self.rope_dims or rope_axis_dims(self.head_dim), self.rope_theta)
        video = slice(layout.video_start, layout.video_start + layout.video_tokens)
        rope = (jnp.ones((layout.seq_len, video_cos.shape[1])).at[video].set(video_cos),
                jnp.zeros((layout.seq_len, video_sin.shape[1])).at[video].set(video_sin))
        groups = np.ones(layout.seq_len, np.int32)  # modulation group 0: caption tokens, 1: video tokens
        groups[:video.start], groups[video.stop:] = 0, 0
        context = nn_attention.AttentionContext(rng=rng, step=step, video_layout=layout, num_steps=num_steps,
                                                num_layers=self.depth)
        blocks = scanned_blocks(self.depth, self.remat, width=self.width, num_heads=self.num_heads,
                                mlp_ratio=self.mlp_ratio, modulation_groups=2, qk_norm=True,
                                backend=self.attention_backend, backend_options=self.attention_options,
                                dtype=self.dtype, name="blocks")
        x, _ = blocks(x, jnp.arange(self.depth), c, rope, groups, context)

        shift, scale = jnp.split(nn.Dense(2 * self.width, kernel_init=nn.initializers.zeros, name="final_adaln")(
            nn.silu(c))[:, None], 2, axis=-1)
        video_tokens = x[:, layout.video_start:layout.video_start + layout.video_tokens]
        x = nn.LayerNorm(use_scale=False, use_bias=False)(video_tokens) * (1 + scale) + shift
        x = nn.Dense(math.prod(self.patch) * self.in_channels, kernel_init=nn.initializers.zeros, name="unpatchify",
                     dtype=jnp.float32)(x)
        return unpatchify(x, grid, self.patch, self.in_channels).astype(jnp.float32)
