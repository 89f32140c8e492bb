"""DC-AE (Chen et al., 2025): a deep-compression autoencoder whose blocks learn residuals on space-to-channel shortcuts.

The architecture of the official implementation (mit-han-lab/efficientvit `dc_ae.py`, ported to diffusers as
`AutoencoderDC`), NHWC, images in [-1, 1]:

- encoder: project-in (a 3x3 conv, or a downsampling block when the first stage is empty), stages of ResBlocks and
  EfficientViT blocks, each stage but the last ending in a downsampling block, then project-out to the latent;
- decoder: the mirror image: project-in from the latent, an upsampling block opening every stage but the last,
  RMSNorm + ReLU and a 3x3 conv (or an upsampling block) to pixels.

Residual autoencoding, the paper's first idea, lives in four non-parametric shortcuts (`space_to_channel_average`,
`channel_to_space_duplicate` and their factor-1 forms at project-out/project-in): a downsampling block adds the
pixel-unshuffled input averaged over channel groups to its conv output; an upsampling block adds the input with each
channel duplicated, pixel-shuffled. The learned layers then only model what the shortcut misses, which is what keeps
f64/f128 trainable. `residual_shortcuts=False` removes all four (the paper's ablation).

EfficientViT blocks: LiteMLA (ReLU linear attention `relu(q) (relu(k)^T v) / (relu(q) sum relu(k))`, computed in
float32; on maps with at most `attention_head_dim` positions the quadratic form, which is cheaper there), then GLUMBConv
(1x1 expand, depthwise 3x3, SiLU-gated, 1x1 project), both residual and both closed by RMSNorm2d with a bias.

Parameter names follow diffusers' module names (`down_blocks_1_0/conv1` is `down_blocks.1.0.conv1`) and channel
orders follow PyTorch's (pixel (un)shuffle as `F.pixel_(un)shuffle`, LiteMLA's head grouping as the official reshape),
so `jaxgen.projects.dcae.weights.from_diffusers` converts an official checkpoint by renaming and transposing alone.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# ======================================================================================================================
# The shortcut ops (no parameters): channel orders exactly PyTorch's.
# ======================================================================================================================


def pixel_unshuffle(x: jax.Array, factor: int) -> jax.Array:
    """`[b, h, w, c]` -> `[b, h/f, w/f, c*f*f]`; output channel `c*f*f + i*f + j` holds pixel (i, j) of each f x f
    block of channel c, as `torch.nn.functional.pixel_unshuffle` orders them."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // factor, factor, w // factor, factor, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // factor, w // factor, c * factor * factor)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """The inverse of `pixel_unshuffle`: `[b, h, w, c*f*f]` -> `[b, h*f, w*f, c]`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (factor * factor), factor, factor)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * factor, w * factor, c // (factor * factor))


def space_to_channel_average(x: jax.Array, out_channels: int, factor: int) -> jax.Array:
    """The downsampling shortcut: pixel-unshuffle by `factor`, then average groups of consecutive channels down to
    `out_channels` (factor 1: the encoder's project-out shortcut, channel averaging alone)."""
    y = pixel_unshuffle(x, factor) if factor > 1 else x
    group = y.shape[-1] // out_channels
    return y.reshape(*y.shape[:-1], out_channels, group).mean(-1)


def channel_to_space_duplicate(x: jax.Array, out_channels: int, factor: int) -> jax.Array:
    """The upsampling shortcut: repeat every channel (consecutively, as `repeat_interleave`) to `out_channels*f*f`,
    then pixel-shuffle by `factor` (factor 1: the decoder's project-in shortcut, duplication alone)."""
    y = jnp.repeat(x, out_channels * factor * factor // x.shape[-1], axis=-1)
    return pixel_shuffle(y, factor) if factor > 1 else y


# ======================================================================================================================
# Layers.
# ======================================================================================================================

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu, "relu": nn.relu, "relu6": nn.relu6, "gelu": lambda x: nn.gelu(x, approximate=False),
}


def lookup(registry: Mapping[str, Any], kind: str, name: str):
    """`registry[name]`, or a ValueError listing the known names (and the closest one)."""
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown {kind} {name!r}; known: {sorted(registry)}.{hint}")
    return registry[name]


# PyTorch's default for Conv2d and Linear weights (kaiming_uniform with a = sqrt(5): U(+-1/sqrt(fan_in))), which the
# official training code keeps. Uniform also compiles several times faster on CPU than (truncated) normal draws.
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _conv(features: int, kernel: int, name: str, *, stride: int = 1, groups: int = 1, bias: bool = True,
          dtype: Any = jnp.float32) -> nn.Conv:
    """A PyTorch-padded conv (padding kernel // 2 on each side) with logical axis names on its parameters."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=bias, dtype=dtype, name=name,
                   kernel_init=nn.with_logical_partitioning(TORCH_DEFAULT_INIT,
                                                            (None, None, "conv_in", "conv_out")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def _dense(features: int, name: str, dtype: Any) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(TORCH_DEFAULT_INIT, ("conv_in", "conv_out")))


class RMSNorm2d(nn.Module):
    """RMS normalisation over channels with a scale and a bias (DC-AE's `trms2d`), statistics in float32."""

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)), (channels,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (channels,))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * weight + bias).astype(self.dtype)


def _batch_norm(dtype: Any = jnp.float32, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm over (batch, height, width) with PyTorch's eps and momentum: the official f32/f64/f128 checkpoints
    use it in the decoder's ResBlock stages. Running statistics live in the `batch_stats` collection."""
    return nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


NORMS: dict[str, Callable[..., nn.Module]] = {"rms_norm": RMSNorm2d, "batch_norm": _batch_norm}


def _norm(norm_type: str, name: str, dtype: Any) -> nn.Module:
    return lookup(NORMS, "norm type", norm_type)(dtype=dtype, name=name)


def _apply_norm(norm: nn.Module, x, train: bool):
    return norm(x, use_running_average=not train) if isinstance(norm, nn.BatchNorm) else norm(x)


class ResBlock(nn.Module):
    """conv3x3 (bias) -> activation -> conv3x3 (no bias) -> norm, plus the input."""

    channels: int
    norm_type: str = "rms_norm"
    act_fn: str = "silu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = _conv(self.channels, 3, "conv1", dtype=self.dtype)(x)
        h = lookup(ACTIVATIONS, "activation", self.act_fn)(h)
        h = _conv(self.channels, 3, "conv2", bias=False, dtype=self.dtype)(h)
        return _apply_norm(_norm(self.norm_type, "norm", self.dtype), h, train) + x


class MultiscaleProjection(nn.Module):
    """Aggregates q, k, v over a k x k neighbourhood: a depthwise conv, then a 1x1 conv grouped per head and q/k/v."""

    num_heads: int
    kernel_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, qkv):
        channels = qkv.shape[-1]
        qkv = _conv(channels, self.kernel_size, "proj_in", groups=channels, bias=False, dtype=self.dtype)(qkv)
        return _conv(channels, 1, "proj_out", groups=3 * self.num_heads, bias=False, dtype=self.dtype)(qkv)


def relu_linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, eps: float = 1e-15) -> jax.Array:
    """`relu(q) (relu(k)^T v) / (relu(q) sum_n relu(k_n))` for `[b, heads, n, d]` inputs, in float32: O(n d^2)."""
    q, k, v = (t.astype(jnp.float32) for t in (jax.nn.relu(q), jax.nn.relu(k), v))
    kv = jnp.einsum("bhnd,bhne->bhde", k, v)
    numerator = jnp.einsum("bhnd,bhde->bhne", q, kv)
    denominator = jnp.einsum("bhnd,bhd->bhn", q, k.sum(axis=2))[..., None]
    return numerator / (denominator + eps)


def relu_quadratic_attention(q: jax.Array, k: jax.Array, v: jax.Array, eps: float = 1e-15) -> jax.Array:
    """The same attention through the n x n score matrix (cheaper when n <= d), in float32."""
    q, k, v = (t.astype(jnp.float32) for t in (jax.nn.relu(q), jax.nn.relu(k), v))
    scores = jnp.einsum("bhmd,bhnd->bhmn", q, k)
    scores = scores / (scores.sum(axis=-1, keepdims=True) + eps)
    return jnp.einsum("bhmn,bhnd->bhmd", scores, v)


class LiteMLA(nn.Module):
    """Lightweight multi-scale ReLU linear attention (EfficientViT), residual, closed by a norm.

    q, k, v (bias-free 1x1 projections) and their multi-scale aggregates are concatenated along channels and split
    into heads of `3 * head_dim` consecutive channels, each head's first third its query, then key, then value (the
    official layout, which the weights' channel order depends on).
    """

    channels: int
    head_dim: int = 32
    qkv_multiscales: tuple[int, ...] = ()
    norm_type: str = "rms_norm"
    eps: float = 1e-15
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        b, h, w, _ = x.shape
        heads = self.channels // self.head_dim
        inner = heads * self.head_dim
        qkv = jnp.concatenate([_dense(inner, n, self.dtype)(x) for n in ("to_q", "to_k", "to_v")], axis=-1)
        scales = [qkv] + [MultiscaleProjection(heads, k, self.dtype, name=f"to_qkv_multiscale_{i}")(qkv)
                          for i, k in enumerate(self.qkv_multiscales)]
        qkv = jnp.concatenate(scales, axis=-1).reshape(b, h * w, -1, 3 * self.head_dim).transpose(0, 2, 1, 3)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        attend = relu_linear_attention if h * w > self.head_dim else relu_quadratic_attention
        out = attend(q, k, v, self.eps).astype(self.dtype).transpose(0, 2, 1, 3).reshape(b, h, w, -1)
        out = _dense(self.channels, "to_out", self.dtype)(out)
        return _apply_norm(_norm(self.norm_type, "norm_out", self.dtype), out, train) + x


class GLUMBConv(nn.Module):
    """Gated MBConv: 1x1 to 2 x 4c (SiLU), depthwise 3x3, split into value and gate, value * SiLU(gate), 1x1 back
    to c (no bias), RMSNorm2d, plus the input."""

    channels: int
    expand_ratio: float = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        hidden = int(self.expand_ratio * self.channels)
        h = nn.silu(_conv(2 * hidden, 1, "conv_inverted", dtype=self.dtype)(x))
        h = _conv(2 * hidden, 3, "conv_depth", groups=2 * hidden, dtype=self.dtype)(h)
        value, gate = jnp.split(h, 2, axis=-1)
        h = _conv(self.channels, 1, "conv_point", bias=False, dtype=self.dtype)(value * nn.silu(gate))
        return RMSNorm2d(dtype=self.dtype, name="norm")(h) + x


class EfficientViTBlock(nn.Module):
    channels: int
    head_dim: int = 32
    qkv_multiscales: tuple[int, ...] = ()
    norm_type: str = "rms_norm"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LiteMLA(self.channels, self.head_dim, self.qkv_multiscales, self.norm_type, dtype=self.dtype,
                    name="attn")(x, train)
        return GLUMBConv(self.channels, dtype=self.dtype, name="conv_out")(x)


class DownBlock(nn.Module):
    """Halves the resolution: a 3x3 conv then pixel-unshuffle ("pixel_unshuffle") or a stride-2 3x3 conv ("conv"),
    plus, with `shortcut`, the space-to-channel averaging shortcut."""

    out_channels: int
    block_type: str = "pixel_unshuffle"
    shortcut: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.block_type == "pixel_unshuffle":
            h = pixel_unshuffle(_conv(self.out_channels // 4, 3, "conv", dtype=self.dtype)(x), 2)
        else:
            h = _conv(self.out_channels, 3, "conv", stride=2, dtype=self.dtype)(x)
        return h + space_to_channel_average(x, self.out_channels, 2) if self.shortcut else h


class UpBlock(nn.Module):
    """Doubles the resolution: a 3x3 conv then pixel-shuffle ("pixel_shuffle") or nearest upsampling then a 3x3
    conv ("interpolate"), plus, with `shortcut`, the channel-duplicating shortcut."""

    out_channels: int
    block_type: str = "pixel_shuffle"
    shortcut: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.block_type == "pixel_shuffle":
            h = pixel_shuffle(_conv(self.out_channels * 4, 3, "conv", dtype=self.dtype)(x), 2)
        else:
            up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            h = _conv(self.out_channels, 3, "conv", dtype=self.dtype)(up)
        return h + channel_to_space_duplicate(x, self.out_channels, 2) if self.shortcut else h


DOWNSAMPLE_TYPES = ("pixel_unshuffle", "conv")
UPSAMPLE_TYPES = ("pixel_shuffle", "interpolate")
BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")


def _block(block_type: str, channels: int, *, head_dim: int, scales: tuple[int, ...], norm_type: str, act_fn: str,
           dtype: Any, name: str) -> nn.Module:
    if block_type == "ResBlock":
        return ResBlock(channels, norm_type, act_fn, dtype=dtype, name=name)
    return EfficientViTBlock(channels, head_dim, scales, norm_type, dtype=dtype, name=name)


# ======================================================================================================================
# The autoencoder.
# ======================================================================================================================


def _per_stage(value, count: int, what: str) -> tuple:
    values = (value,) * count if isinstance(value, str) else tuple(value)
    if len(values) != count:
        raise ValueError(f"{what} has {len(values)} entries for {count} stages: {values}")
    return values


class Encoder(nn.Module):
    """Project-in, the stages (each but the last closed by a downsampling block), project-out to the latent."""

    latent_channels: int
    head_dim: int
    block_types: tuple[str, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    qkv_multiscales: tuple[tuple[int, ...], ...]
    downsample_block_type: str
    shortcuts: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        widths, depths, dtype, stages = self.widths, self.depths, self.dtype, len(self.widths)
        if depths[0] > 0:
            x = _conv(widths[0], 3, "conv_in", dtype=dtype)(x)
        else:
            x = DownBlock(widths[1], self.downsample_block_type, shortcut=False, dtype=dtype, name="conv_in")(x)
        for i, (width, depth) in enumerate(zip(widths, depths)):
            for j in range(depth):
                x = _block(self.block_types[i], width, head_dim=self.head_dim, scales=self.qkv_multiscales[i],
                           norm_type="rms_norm", act_fn="silu", dtype=dtype, name=f"down_blocks_{i}_{j}")(x, train)
            if i < stages - 1 and depth > 0:
                x = DownBlock(widths[i + 1], self.downsample_block_type, self.shortcuts, dtype=dtype,
                              name=f"down_blocks_{i}_{depth}")(x)
        h = _conv(self.latent_channels, 3, "conv_out", dtype=dtype)(x)
        return h + space_to_channel_average(x, self.latent_channels, 1) if self.shortcuts else h


class Decoder(nn.Module):
    """Project-in from the latent, the stages in reverse (each but the deepest opened by an upsampling block),
    RMSNorm, activation and project-out to pixels."""

    out_channels: int
    head_dim: int
    block_types: tuple[str, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    qkv_multiscales: tuple[tuple[int, ...], ...]
    norm_types: tuple[str, ...]
    act_fns: tuple[str, ...]
    conv_act_fn: str
    upsample_block_type: str
    shortcuts: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        widths, depths, dtype, stages = self.widths, self.depths, self.dtype, len(self.widths)
        x = _conv(widths[-1], 3, "conv_in", dtype=dtype)(z)
        if self.shortcuts:
            x = x + channel_to_space_duplicate(z, widths[-1], 1)
        for i in reversed(range(stages)):
            opened = i < stages - 1 and depths[i] > 0
            if opened:
                x = UpBlock(widths[i], self.upsample_block_type, self.shortcuts, dtype=dtype,
                            name=f"up_blocks_{i}_0")(x)
            for j in range(depths[i]):
                x = _block(self.block_types[i], widths[i], head_dim=self.head_dim, scales=self.qkv_multiscales[i],
                           norm_type=self.norm_types[i], act_fn=self.act_fns[i], dtype=dtype,
                           name=f"up_blocks_{i}_{j + opened}")(x, train)
        x = RMSNorm2d(dtype=dtype, name="norm_out")(x)
        x = lookup(ACTIVATIONS, "activation", self.conv_act_fn)(x)
        if depths[0] > 0:
            return _conv(self.out_channels, 3, "conv_out", dtype=dtype)(x)
        return UpBlock(self.out_channels, self.upsample_block_type, shortcut=False, dtype=dtype, name="conv_out")(x)


class DCAE(nn.Module):
    """The deep-compression autoencoder. Fields are diffusers' `AutoencoderDC` config keys (tuples: one entry per
    stage); `residual_shortcuts=False` is the ablation without the four non-parametric shortcuts. `dtype` is the
    compute dtype (LiteMLA's attention and the norms' statistics stay float32).

    `apply(variables, images, method="encode")`: images `[b, h, w, in_channels]` in [-1, 1], h and w multiples of
    `spatial_compression` -> latents `[b, h/f, w/f, latent_channels]`; `method="decode"` the way back;
    `apply(variables, images)` encodes and decodes. `train=True` updates BatchNorm statistics (configs with
    "batch_norm" only; apply with `mutable=["batch_stats"]`).
    """

    in_channels: int = 3
    latent_channels: int = 32
    attention_head_dim: int = 32
    encoder_block_types: str | tuple[str, ...] = "ResBlock"
    decoder_block_types: str | tuple[str, ...] = "ResBlock"
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    encoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 3, 3, 3)
    decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
    encoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
    upsample_block_type: str = "pixel_shuffle"
    downsample_block_type: str = "pixel_unshuffle"
    decoder_norm_types: str | tuple[str, ...] = "rms_norm"
    decoder_act_fns: str | tuple[str, ...] = "silu"
    decoder_conv_act_fn: str = "relu"
    residual_shortcuts: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self):
        self._validate()
        super().__post_init__()

    def _validate(self):
        for name in ("encoder", "decoder"):
            widths = getattr(self, f"{name}_block_out_channels")
            for field in ("layers_per_block", "qkv_multiscales"):
                values = getattr(self, f"{name}_{field}")
                if len(values) != len(widths):
                    raise ValueError(f"{name}_{field} has {len(values)} entries for {len(widths)} stages "
                                     f"({name}_block_out_channels={widths})")
            for t in _per_stage(getattr(self, f"{name}_block_types"), len(widths), f"{name}_block_types"):
                if t not in BLOCK_TYPES:
                    raise ValueError(f"Unknown {name} block type {t!r}; known: {BLOCK_TYPES}")
        if self.encoder_block_out_channels[-1] % self.latent_channels:
            raise ValueError(f"latent_channels {self.latent_channels} must divide the last encoder width "
                             f"{self.encoder_block_out_channels[-1]} (the project-out shortcut averages groups)")
        if self.downsample_block_type not in DOWNSAMPLE_TYPES or self.upsample_block_type not in UPSAMPLE_TYPES:
            raise ValueError(f"downsample_block_type must be one of {DOWNSAMPLE_TYPES} and upsample_block_type one of "
                             f"{UPSAMPLE_TYPES}; got {self.downsample_block_type!r}, {self.upsample_block_type!r}")

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.encoder_block_out_channels) - 1)

    def setup(self):
        enc_widths, dec_widths = self.encoder_block_out_channels, self.decoder_block_out_channels
        self.encoder = Encoder(
            self.latent_channels, self.attention_head_dim,
            _per_stage(self.encoder_block_types, len(enc_widths), "encoder_block_types"), tuple(enc_widths),
            tuple(self.encoder_layers_per_block), tuple(map(tuple, self.encoder_qkv_multiscales)),
            self.downsample_block_type, self.residual_shortcuts, dtype=self.dtype)
        self.decoder = Decoder(
            self.in_channels, self.attention_head_dim,
            _per_stage(self.decoder_block_types, len(dec_widths), "decoder_block_types"), tuple(dec_widths),
            tuple(self.decoder_layers_per_block), tuple(map(tuple, self.decoder_qkv_multiscales)),
            _per_stage(self.decoder_norm_types, len(dec_widths), "decoder_norm_types"),
            _per_stage(self.decoder_act_fns, len(dec_widths), "decoder_act_fns"), self.decoder_conv_act_fn,
            self.upsample_block_type, self.residual_shortcuts, dtype=self.dtype)

    def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
        f = self.spatial_compression
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise ValueError(f"DCAE.encode takes images [batch, height, width, {self.in_channels}] (NHWC); got shape "
                             f"{images.shape}")
        if images.shape[1] % f or images.shape[2] % f:
            raise ValueError(f"DCAE.encode: height and width must be multiples of the spatial compression {f}; got "
                             f"{images.shape[1]} x {images.shape[2]} (shape {images.shape})")
        return self.encoder(images.astype(self.dtype), train)

    def decode(self, latents: jax.Array, train: bool = False) -> jax.Array:
        if latents.ndim != 4 or latents.shape[-1] != self.latent_channels:
            raise ValueError(f"DCAE.decode takes latents [batch, height, width, {self.latent_channels}] (NHWC); got "
                             f"shape {latents.shape}")
        return self.decoder(latents.astype(self.dtype), train)

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.decode(self.encode(images, train), train)


# ======================================================================================================================
# Named configurations.
# ======================================================================================================================


def _official(widths: tuple[int, ...], latent: int) -> dict[str, Any]:
    """mit-han-lab's `dc-ae-f{2^(n-1)}c{latent}-in-1.0`: three ResBlock stages (the first empty: project-in
    downsamples), then EfficientViT stages without multi-scale aggregation; BatchNorm + ReLU in the decoder's ResBlock
    stages, RMSNorm + SiLU elsewhere; pixel (un)shuffle resampling."""
    n = len(widths)
    evit = n - 3
    return dict(latent_channels=latent, attention_head_dim=32,
                encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * evit,
                decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * evit,
                encoder_block_out_channels=widths, decoder_block_out_channels=widths,
                encoder_layers_per_block=(0, 4, 8) + (2,) * evit, decoder_layers_per_block=(0, 5, 10) + (2,) * evit,
                encoder_qkv_multiscales=((),) * n, decoder_qkv_multiscales=((),) * n,
                decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * evit,
                decoder_act_fns=("relu",) * 3 + ("silu",) * evit)


def _small(widths: tuple[int, ...], latent: int, head_dim: int, res_stages: int = 2) -> dict[str, Any]:
    """A CPU-sized DC-AE: the official layout (ResBlock stages, then EfficientViT stages; the first stage empty so
    project-in downsamples), one block per stage, RMSNorm everywhere (no BatchNorm state to train)."""
    n = len(widths)
    types = ("ResBlock",) * res_stages + ("EfficientViTBlock",) * (n - res_stages)
    return dict(latent_channels=latent, attention_head_dim=head_dim, encoder_block_types=types,
                decoder_block_types=types, encoder_block_out_channels=widths, decoder_block_out_channels=widths,
                encoder_layers_per_block=(0,) + (1,) * (n - 1), decoder_layers_per_block=(0,) + (1,) * (n - 1),
                encoder_qkv_multiscales=((),) * n, decoder_qkv_multiscales=((),) * n)


CONFIGS: dict[str, dict[str, Any]] = {
    # The paper's autoencoders (official widths and depths).
    "f32c32": _official((128, 256, 512, 512, 1024, 1024), 32),
    "f64c128": _official((128, 256, 512, 512, 1024, 1024, 2048), 128),
    "f128c512": _official((128, 256, 512, 512, 1024, 1024, 2048, 2048), 512),
    # CPU tiers for the shortcut ablation: the paper's compression and latent channels, 1/16 of its widths.
    "f32c32_cpu": _small((8, 16, 32, 32, 64, 64), 32, 16, res_stages=3),
    "f64c128_cpu": _small((8, 16, 32, 32, 64, 64, 128), 128, 16, res_stages=3),
    # Tests, smoke runs and the notebook: f4c4, one ResBlock stage and one EfficientViT stage (every kind of layer,
    # as few as possible: XLA's compile time on CPU grows with the number of layers, not their width).
    "tiny": _small((8, 16, 32), 4, 8, res_stages=2),
    # Latent diffusion at an equal token budget (configs/dcae/ldm_*.gin): the tiny DC-AE with 16 latent channels,
    # read with patch 1, against a conventional autoencoder (ResBlocks only; with residual_shortcuts=False the
    # SD-VAE-style arm) at f2c4, read with patch 2: both 3x compression and 8 x 8 tokens of a 32 px image.
    "tiny_c16": _small((8, 16, 32), 16, 8, res_stages=2),
    "tiny_f2c4": _small((16, 32), 4, 8, res_stages=2),
}


def config(name: str) -> dict[str, Any]:
    """The fields of the named configuration (a copy)."""
    return dict(lookup(CONFIGS, "DC-AE config", name))


def dcae(name: str, **overrides) -> DCAE:
    """`DCAE` of a named configuration (`CONFIGS`), with fields overridden (`residual_shortcuts=False`, `dtype`)."""
    fields = {f.name for f in dataclasses.fields(DCAE)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"dcae({name!r}): unknown fields {unknown}; DCAE has {sorted(fields - {'parent', 'name'})}")
    return DCAE(**{**config(name), **overrides})


def rbg_key(rng: jax.Array) -> jax.Array:
    """An RBG key derived from `rng` (any key), for drawing initial parameters.

    Why: Flax draws each of the model's ~100-300 parameters with its own threefry computation, and XLA on CPU
    compiles those several times slower than the forward pass itself (the tiny config's init took 35 s to compile on
    2 loaded cores with threefry keys, 3.6 s with RBG). The derived key is a pure function of `rng`: runs stay
    reproducible.
    """
    return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")


def init(module: DCAE, rng: jax.Array, images: jax.Array) -> dict:
    """`module.init` with parameters drawn from `rbg_key(rng)`."""
    return module.init(rbg_key(rng), images)


def latent_shape(module: DCAE, image_shape: tuple[int, int, int, int]) -> tuple[int, ...]:
    """The latent shape for `[b, h, w, c]` images, from shapes alone (nothing is allocated)."""
    images = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, method="encode"), images)
    return jax.eval_shape(lambda v, x: module.apply(v, x, method="encode"), variables, images).shape
