"""U-ViT (Bao et al., "All are Worth Words: A ViT Backbone for Diffusion Models", CVPR 2023) in Linen.

A plain ViT over image patches in which everything is a token: the timestep and the class label are two extra tokens
in front of the patches, and long skip connections join shallow and deep blocks as in a U-Net (the output of in-block
i is concatenated to the input of the out-block mirroring it and projected back by a linear layer). No adaLN, no
down- or up-sampling; optionally a 3 × 3 convolution after unpatchifying.

Layout and conventions:
- `UViT()(x, t, y)`: images x NHWC `[batch, height, width, channels]`; timesteps t `[batch]` (float, embedded as they
  are: the official code passes its discrete or continuous times directly); class labels y `[batch]` int, or None
  for an unconditional model (`num_classes=0`). Output: NHWC, same shape as x, float32.
- `depth` counts in-blocks plus out-blocks, as the official configs do; a mid block sits between them, so a model
  has `depth + 1` transformer blocks. The paper's table lists the total: U-ViT-H is "29 layers", its config (and
  DC-AE's paper, "UViT-H 28 × 1152") says depth 28. Tiers (configs/diffusion/model/uvit_*.gin, parameter counts from
  the paper's table 1, checked by tests/nn/test_uvit.py): S depth 12 × 512, 8 heads (44 M); M 16 × 768, 12 heads
  (131 M); L 20 × 1024, 16 heads (287 M); H 28 × 1152, 16 heads (501 M).
- For classifier-free guidance the official ImageNet models reserve one extra label as the null class
  (`num_classes=1001`); here too `num_classes` counts every embedding row, the null one included.

Parameter names mirror the official PyTorch module (baofff/U-ViT, libs/uvit.py) so its checkpoints map over with one
small table: `patch_embed/proj`, `time_embed/{linear_1,linear_2}` (its `time_embed.0/.2`), `label_emb`, `pos_embed`,
`in_blocks`, `mid_block`, `out_blocks` (each with `norm1`, `attn/{qkv,proj}`, `norm2`, `mlp/{fc1,fc2}` and, in the
out-blocks, `skip_linear`), `norm`, `decoder_pred`, `final_layer`. The in- and out-blocks are each one `nn.scan`, so
their parameters carry a leading "layers" axis (stack the official `in_blocks.{i}` along it; out-block i of the scan
is the official `out_blocks.{i}`). Kernels are the transposes of PyTorch's weights (qkv reshaped to
`[embed, 3, heads, head_dim]`, the patch convolution HWIO).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import attention as nn_attention

_INIT = nn.initializers.truncated_normal(0.02)  # the official init: trunc_normal(std=.02) weights, zero biases


def _dense(features: int, axes: tuple[str | None, str | None], name: str, dtype, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(_INIT, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name,  # PyTorch's LayerNorm epsilon
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal `[batch, dim]` embedding of (possibly fractional) timesteps, cosines first as in the official
    code; an odd `dim` gets a zero last column."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(embedding, ((0, 0), (0, dim % 2)))


def patchify(x: jax.Array, patch: int) -> jax.Array:
    """NHWC `[b, h*p, w*p, c]` -> `[b, h*w, p*p*c]` (rows of patches, each patch row-major, channels last)."""
    b, height, width, c = x.shape
    x = x.reshape(b, height // patch, patch, width // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (height // patch) * (width // patch), patch * patch * c)


def unpatchify(tokens: jax.Array, grid: tuple[int, int], patch: int, channels: int) -> jax.Array:
    """The inverse of `patchify`: `[b, h*w, p*p*c]` -> NHWC `[b, h*p, w*p, c]`."""
    b = tokens.shape[0]
    h, w = grid
    x = tokens.reshape(b, h, w, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * patch, w * patch, channels)


class Attention(nn.Module):
    """Multi-head self-attention, the core a registered `jaxgen.nn.attention` backend (dense, cuDNN, ...)."""

    num_heads: int
    qkv_bias: bool
    backend: str
    backend_options: Mapping[str, Any] | None
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        qkv = nn.DenseGeneral((3, self.num_heads, head_dim), use_bias=self.qkv_bias, dtype=self.dtype, name="qkv",
                              kernel_init=nn.with_logical_partitioning(_INIT, ("embed", None, "heads", "kv")),
                              bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None, "heads", "kv")))(x)
        out, aux = nn_attention.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], backend=self.backend,
                                          **dict(self.backend_options or {}))
        for name, value in aux.items():
            self.sow("intermediates", name, value)
        return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="proj",
                               kernel_init=nn.with_logical_partitioning(_INIT, ("heads", "kv", "embed")),
                               bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(out)


class Mlp(nn.Module):
    hidden: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _dense(self.hidden, ("embed", "mlp"), "fc1", self.dtype)(x)
        return _dense(x.shape[-1], ("mlp", "embed"), "fc2", self.dtype)(nn.gelu(h, approximate=False))


class Block(nn.Module):
    """Pre-LayerNorm transformer block; an out-block first merges its long skip: `skip_linear([x, skip])`.

    Signature `(x, skip) -> (x, x)` so that `nn.scan` stacks the in-blocks' outputs (the skips) and feeds them,
    reversed, to the out-blocks.
    """

    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    long_skip: bool
    backend: str
    backend_options: Mapping[str, Any] | None
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        width = x.shape[-1]
        if self.long_skip:
            x = nn.Dense(width, dtype=self.dtype, name="skip_linear",
                         kernel_init=nn.with_logical_partitioning(_INIT, (None, "embed")),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(
                jnp.concatenate([x, skip.astype(x.dtype)], axis=-1))
        x = x + Attention(self.num_heads, self.qkv_bias, self.backend, self.backend_options, self.dtype,
                          name="attn")(_layer_norm("norm1", self.dtype)(x))
        x = x + Mlp(int(width * self.mlp_ratio), self.dtype, name="mlp")(_layer_norm("norm2", self.dtype)(x))
        return x, x


class UViT(nn.Module):
    """U-ViT noise (or velocity) predictor; see the module docstring for shapes, tiers and parameter names.

    `attention_backend`/`attention_options` go to `jaxgen.nn.attention` and create no parameters; `remat`
    rematerialises each block in the backward pass (the official code's `use_checkpoint`); `conv` adds the
    official 3 × 3 output convolution (on by default there, off in its latent-space configs).
    """

    num_classes: int = 0
    patch_size: int = 2
    in_channels: int = 3
    embed_dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    mlp_time_embed: bool = False
    conv: bool = True
    attention_backend: str = "dense"
    attention_options: Mapping[str, Any] | None = None
    dtype: Any = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.depth % 2:
            raise ValueError(f"depth counts in-blocks plus out-blocks and must be even; got {self.depth} (a mid "
                             "block is added: depth 28 is the paper's 29-layer U-ViT-H)")
        super().__post_init__()

    def grid(self, image_shape) -> tuple[int, int]:
        """Token grid (height, width) of images `[batch, height, width, channels]`."""
        if (len(image_shape) != 4 or image_shape[-1] != self.in_channels
                or image_shape[1] % self.patch_size or image_shape[2] % self.patch_size):
            raise ValueError(f"images must be [batch, height, width, {self.in_channels}] with height and width "
                             f"divisible by patch_size {self.patch_size}; got {tuple(image_shape)}")
        return image_shape[1] // self.patch_size, image_shape[2] // self.patch_size

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
        batch = x.shape[0]
        grid = self.grid(x.shape)
        conditional = self.num_classes > 0
        if t.shape != (batch,) or (y is None) == conditional or (y is not None and y.shape != (batch,)):
            wanted = f"labels y [{batch}]" if conditional else "no labels (num_classes=0)"
            raise ValueError(f"expected timesteps t [{batch}] and {wanted} for images {x.shape}; got t {t.shape}, "
                             f"y {None if y is None else y.shape}")
        p, width = self.patch_size, self.embed_dim
        tokens = PatchEmbed(p, width, self.dtype, name="patch_embed")(x)

        time_token = timestep_embedding(t, width)
        if self.mlp_time_embed:
            time_token = TimeEmbed(width, self.dtype, name="time_embed")(time_token)
        extras = [time_token[:, None].astype(tokens.dtype)]
        if conditional:
            label = nn.Embed(self.num_classes, width, name="label_emb", embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("classes", "embed")))(y)  # PyTorch's nn.Embedding init: N(0, 1)
            extras.insert(0, label[:, None].astype(tokens.dtype))  # order of the official code: [label, time, x]
        x = jnp.concatenate([*extras, tokens], axis=1)
        pos = self.param("pos_embed", nn.with_logical_partitioning(_INIT, (None, None, "embed")),
                         (1, x.shape[1], width))
        x = x + pos.astype(x.dtype)

        block = nn.remat(Block) if self.remat else Block
        options = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                       backend=self.attention_backend, backend_options=self.attention_options, dtype=self.dtype)

        def stack(long_skip: bool, name: str):
            return nn.scan(block, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                           length=self.depth // 2, metadata_params={nn.PARTITION_NAME: "layers"})(
                long_skip=long_skip, name=name, **options)

        x, skips = stack(False, "in_blocks")(x)
        x, _ = block(long_skip=False, name="mid_block", **options)(x)
        x, _ = stack(True, "out_blocks")(x, skips[::-1])

        x = _layer_norm("norm", self.dtype)(x)
        x = nn.Dense(p * p * self.in_channels, dtype=jnp.float32, name="decoder_pred",
                     kernel_init=nn.with_logical_partitioning(_INIT, ("embed", None)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(x)
        x = unpatchify(x[:, len(extras):], grid, p, self.in_channels)
        if self.conv:
            x = nn.Conv(self.in_channels, (3, 3), padding=1, dtype=jnp.float32, name="final_layer",
                        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                 (None, None, "conv_in", "conv_out")),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))(x)
        return x.astype(jnp.float32)


class PatchEmbed(nn.Module):
    """A stride-p convolution over the image: one token per patch, rows of patches in order."""

    patch: int
    width: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj",
                    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                             (None, None, "conv_in", "embed")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x.astype(self.dtype))
        return x.reshape(x.shape[0], -1, self.width)


class TimeEmbed(nn.Module):
    """The optional MLP on the sinusoidal time embedding (`mlp_time_embed`): Linear(4D), SiLU, Linear(D)."""

    width: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _dense(4 * self.width, ("embed", "mlp"), "linear_1", self.dtype)(x)
        return _dense(self.width, ("mlp", "embed"), "linear_2", self.dtype)(nn.silu(h))


def params_from_official(state_dict: Mapping[str, Any], model: UViT, image_shape: tuple[int, int, int]) -> dict:
    """The `params` of `model` from an official U-ViT `state_dict` (baofff/U-ViT's `nnet` checkpoints; values as
    numpy arrays, e.g. `{k: v.numpy() for k, v in torch.load(path).items()}`), for images `[height, width,
    channels]` (they fix the length of `pos_embed`).

    Every parameter of `model` must come from the checkpoint and every checkpoint entry must be used: a wrong tier,
    patch size or option fails here, naming the keys, not later as wrong samples.
    """
    import numpy as np

    heads, width = model.num_heads, model.embed_dim
    remaining = dict(state_dict)

    def take(key: str, transform=lambda a: a):
        if key not in remaining:
            raise KeyError(f"the checkpoint has no {key!r}; is it a U-ViT state_dict of this configuration? "
                           f"({model.embed_dim=}, {model.depth=}, {model.num_classes=}, {model.conv=})")
        return np.asarray(transform(np.asarray(remaining.pop(key))), np.float32)

    def dense(prefix: str, bias: bool = True) -> dict:
        out = {"kernel": take(f"{prefix}.weight", np.transpose)}
        if bias:
            out["bias"] = take(f"{prefix}.bias")
        return out

    def norm(prefix: str) -> dict:
        return {"scale": take(f"{prefix}.weight"), "bias": take(f"{prefix}.bias")}

    def block(prefix: str, long_skip: bool) -> dict:
        qkv = {"kernel": take(f"{prefix}.attn.qkv.weight", lambda w: w.T.reshape(width, 3, heads, -1))}
        if model.qkv_bias:
            qkv["bias"] = take(f"{prefix}.attn.qkv.bias", lambda b: b.reshape(3, heads, -1))
        params = {"norm1": norm(f"{prefix}.norm1"), "norm2": norm(f"{prefix}.norm2"),
                  "attn": {"qkv": qkv, "proj": {"kernel": take(f"{prefix}.attn.proj.weight",
                                                               lambda w: w.T.reshape(heads, -1, width)),
                                                "bias": take(f"{prefix}.attn.proj.bias")}},
                  "mlp": {"fc1": dense(f"{prefix}.mlp.fc1"), "fc2": dense(f"{prefix}.mlp.fc2")}}
        if long_skip:
            params["skip_linear"] = dense(f"{prefix}.skip_linear")
        return params

    def stacked(prefix: str, long_skip: bool) -> dict:
        layers = [block(f"{prefix}.{i}", long_skip) for i in range(model.depth // 2)]
        return jax.tree.map(lambda *a: np.stack(a), *layers)

    conv = lambda w: np.transpose(w, (2, 3, 1, 0))  # noqa: E731  PyTorch OIHW -> Flax HWIO
    params = {
        "patch_embed": {"proj": {"kernel": take("patch_embed.proj.weight", conv),
                                 "bias": take("patch_embed.proj.bias")}},
        "pos_embed": take("pos_embed"),
        "in_blocks": stacked("in_blocks", False),
        "mid_block": block("mid_block", False),
        "out_blocks": stacked("out_blocks", True),
        "norm": norm("norm"),
        "decoder_pred": dense("decoder_pred"),
    }
    if model.mlp_time_embed:
        params["time_embed"] = {"linear_1": dense("time_embed.0"), "linear_2": dense("time_embed.2")}
    if model.num_classes > 0:
        params["label_emb"] = {"embedding": take("label_emb.weight")}
    if model.conv:
        params["final_layer"] = {"kernel": take("final_layer.weight", conv), "bias": take("final_layer.bias")}
    if remaining:
        raise ValueError(f"checkpoint entries this UViT has no place for: {sorted(remaining)[:8]} "
                         f"({len(remaining)} in all); check num_classes, mlp_time_embed, qkv_bias and conv")

    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((1,), jnp.int32) if model.num_classes > 0 else None
    expected = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x, jax.ShapeDtypeStruct((1,), jnp.float32),
                                       y))["params"]
    if jax.tree.structure(params) != jax.tree.structure(expected):
        raise ValueError(f"the mapped parameters do not form this UViT's tree: {jax.tree.structure(params)} vs "
                         f"{jax.tree.structure(expected)}")
    wrong = [f"{jax.tree_util.keystr(path)}: checkpoint {a.shape}, model {b.shape}"
             for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(expected))
             if a.shape != b.shape]
    if wrong:
        raise ValueError(f"checkpoint shapes do not fit this UViT for images {image_shape}: {wrong[:8]}")
    return params
