"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers") for images NHWC `[batch, height, width, ch]`.

The image is cut into `patch_size`² patches (one Dense per patch, the strided Conv2d of the original), a fixed 2D
sin-cos position table is added, and `depth` adaLN-Zero blocks (`jaxgen.nn.transformer`, one `nn.scan`) run full
attention over the tokens, conditioned on `c = timestep embedding + class embedding`. A final adaLN LayerNorm and a
zero-initialised Dense give `patch_size² * out_channels` values per token, folded back to NHWC. With learned sigma
(`out_channels = 2 * in_channels`) the first half of the channels is the ε (or v) prediction, the second the
variance interpolation, as in diffusers and the original.

Timesteps are counted as diffusers counts them (`t` in [0, num_train_timesteps), float or int); labels are ints in
[0, num_classes], `num_classes` being the classifier-free guidance null class (`jaxgen.nn.embeddings.drop_labels`).
`from_diffusers` loads a diffusers `DiTTransformer2DModel` folder (the official DiT-XL/2 checkpoints among them).

Optional caption tokens (`caption_dim`), as PixArt-α conditions a DiT on text: a sequence of caption embeddings
`[batch, length, caption_dim]` (a frozen text encoder's output, T5's 4,096 in PixArt) is projected to the model width
by a two-layer MLP (GELU-tanh), and every block cross-attends to it between self-attention and the MLP
(`jaxgen.nn.transformer.CrossAttention`, zero-initialised output, so a fresh model is still the zero function).
PixArt rather than the joint sequence of MMDiT/CogVideoX (captions concatenated to the image tokens, which the block
also supports through `modulation_groups`, as SVG's video DiT uses): cross-attention keeps the image sequence and its
attention cost unchanged whatever the caption length, and it is what PixArt-α/Σ (SVDQuant's and DC-AE's text-to-image
models) do. `caption_mask [batch, length]` leaves padding out. Classifier-free guidance's unconditional input is the
empty caption, a mask with no true entry: cross-attention then adds nothing (PixArt learns a null caption embedding
instead; the empty caption needs no parameter and no fixed caption length). Class labels stay optional beside
captions: `y=None` uses the timestep alone for adaLN, as PixArt does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn import attention as nn_attention
from jaxgen.nn import porting, safetensors_io
from jaxgen.nn.embeddings import LabelEmbedding, TimestepEmbedding, sincos_2d
from jaxgen.nn.transformer import XAVIER, adaln_norm_modulate, partitioned, scanned_blocks


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """`[batch, height, width, c]` -> `[batch, (height / p) * (width / p), p * p * c]`, tokens row-major, features
    ordered (row in patch, column in patch, channel)."""
    batch, height, width, channels = images.shape
    x = images.reshape(batch, height // patch, patch, width // patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, (height // patch) * (width // patch), -1)


def unpatchify(tokens: jax.Array, grid: tuple[int, int], patch: int, channels: int) -> jax.Array:
    """The inverse of `patchify`."""
    (h, w), batch = grid, tokens.shape[0]
    x = tokens.reshape(batch, h, w, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, h * patch, w * patch, channels)


class CaptionProjection(nn.Module):
    """Caption embeddings -> model width: Dense -> GELU (tanh) -> Dense, PixArt-α's caption MLP."""

    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, captions):
        h = nn.Dense(self.width, dtype=self.dtype, name="Dense_0", kernel_init=partitioned(XAVIER, None, "mlp"),
                     bias_init=partitioned(nn.initializers.zeros, "mlp"))(captions)
        return nn.Dense(self.width, dtype=self.dtype, name="Dense_1", kernel_init=partitioned(XAVIER, "mlp", "embed"),
                        bias_init=partitioned(nn.initializers.zeros, "embed"))(nn.gelu(h, approximate=True))


class DiT(nn.Module):
    """Class-conditional DiT; `__call__(x, t, y)` -> `[batch, height, width, out_channels]` float32.

    sample_size: the training resolution in pixels (diffusers' config field); positions of other resolutions are
        rescaled to its token grid. None: positions are plain token indices.
    timestep_freq_shift: diffusers' DiT embeds timesteps with `downscale_freq_shift=1`; the original DiT with 0.
    mlp_norm_eps: the MLP LayerNorm's epsilon (diffusers' `norm_eps`, 1e-5; the original DiT 1e-6).
    attention_backend / attention_options: a `jaxgen.nn.attention` backend ("dense" on CPU, "cudnn" on GPU).
    caption_dim: the width of caption embeddings; None (default) builds the class-conditional DiT without captions.
    norm_implementation: how every adaLN LayerNorm + modulation runs (`jaxgen.nn.transformer.NORM_MODULATE`): "xla"
        (default) or "pallas_gpu", the fused kernels of `pallas_kernels.norm_modulate` (the MLP's norm with the
        attention residual before it); no effect on the parameters.
    remat / scan_unroll: rematerialise each block in the backward pass / run `scan_unroll` blocks per iteration of the
        block scan (`jaxgen.nn.transformer.scan_layers`; `depth` unrolls it); neither changes the parameters.
    """

    num_classes: int = 1000
    width: int = 1152
    depth: int = 28
    num_heads: int = 16
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int | None = None
    mlp_ratio: float = 4.0
    sample_size: int | None = None
    timestep_freq_shift: float = 1.0
    mlp_norm_eps: float = 1e-6
    approximate_gelu: bool = True
    qkv_bias: bool = True
    attention_backend: str = "dense"
    attention_options: Mapping[str, Any] | None = None
    caption_dim: int | None = None
    dtype: Any = jnp.float32
    remat: bool = False
    scan_unroll: int = 1
    norm_implementation: str = "xla"

    def __post_init__(self):
        if self.width % self.num_heads or self.width % 4:
            raise ValueError(f"DiT width {self.width} must be divisible by num_heads {self.num_heads} and by 4")
        super().__post_init__()

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    def grid(self, shape) -> tuple[int, int]:
        """Token grid (rows, columns) of images of `shape` `[batch, height, width, in_channels]`."""
        if len(shape) != 4 or shape[-1] != self.in_channels or shape[1] % self.patch_size or shape[2] % self.patch_size:
            raise ValueError(f"DiT takes images [batch, height, width, {self.in_channels}] with height and width "
                             f"divisible by patch_size {self.patch_size}; got {tuple(shape)}")
        return shape[1] // self.patch_size, shape[2] // self.patch_size

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, captions: jax.Array | None = None,
                 caption_mask: jax.Array | None = None) -> jax.Array:
        """x NHWC, t `[batch]`, y `[batch]` class labels (None: no class conditioning), captions `[batch, length,
        caption_dim]` when the model has `caption_dim`, caption_mask bool `[batch, length]` (None: all tokens)."""
        grid = self.grid(x.shape)
        if t.shape != (x.shape[0],) or (y is not None and y.shape != (x.shape[0],)):
            raise ValueError(f"DiT takes t [{x.shape[0]}] and y [{x.shape[0]}] for images {x.shape}; got t "
                             f"{t.shape}, y {None if y is None else y.shape}")
        if (captions is None) != (self.caption_dim is None) or (
                captions is not None and (captions.ndim != 3 or captions.shape[::2] != (x.shape[0], self.caption_dim))):
            raise ValueError(f"DiT with caption_dim={self.caption_dim} takes captions "
                             + (f"[{x.shape[0]}, length, {self.caption_dim}]" if self.caption_dim else "None")
                             + f"; got {None if captions is None else captions.shape}")
        h = nn.Dense(self.width, dtype=self.dtype, name="patch_embed", kernel_init=partitioned(XAVIER, None, "embed"),
                     bias_init=partitioned(nn.initializers.zeros, "embed"))(patchify(x, self.patch_size))
        base = self.sample_size // self.patch_size if self.sample_size else None
        h = (h + sincos_2d(self.width, *grid, base_size=base)).astype(self.dtype)

        c = TimestepEmbedding(self.width, freq_shift=self.timestep_freq_shift, dtype=self.dtype, name="t_embed")(t)
        if y is not None:
            c = c + LabelEmbedding(self.num_classes, self.width, name="class_embed")(y)
        caption_inputs = ()
        if captions is not None:
            caption_inputs = (CaptionProjection(self.width, self.dtype, name="caption_projection")(captions),
                              caption_mask)

        context = nn_attention.AttentionContext(num_layers=self.depth)
        blocks = scanned_blocks(self.depth, self.remat, self.scan_unroll, width=self.width, num_heads=self.num_heads,
                                mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, mlp_norm_eps=self.mlp_norm_eps,
                                approximate_gelu=self.approximate_gelu, cross_attention=captions is not None,
                                backend=self.attention_backend, backend_options=self.attention_options,
                                norm_implementation=self.norm_implementation, dtype=self.dtype, name="blocks")
        h, _ = blocks(h, jnp.arange(self.depth), c, None, None, context, *caption_inputs)

        shift, scale = jnp.split(nn.Dense(2 * self.width, name="final_adaln",
                                          kernel_init=partitioned(nn.initializers.zeros, "embed", "mlp"),
                                          bias_init=partitioned(nn.initializers.zeros, "mlp"))(nn.silu(c))[:, None],
                                 2, axis=-1)
        h = adaln_norm_modulate(h, shift, scale, eps=1e-6, implementation=self.norm_implementation)
        h = nn.Dense(self.patch_size ** 2 * self.output_channels, dtype=jnp.float32, name="unpatchify",
                     kernel_init=partitioned(nn.initializers.zeros, "embed", None),
                     bias_init=partitioned(nn.initializers.zeros, None))(h)
        return unpatchify(h, grid, self.patch_size, self.output_channels).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------------------
# diffusers weights
# ---------------------------------------------------------------------------------------------------------------------

def _patch_conv(w):  # Conv2d [width, c, p, p] -> Dense on patches ordered (row, column, channel)
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _qkv_kernel(heads):
    return lambda q, k, v: np.stack([porting.heads_in(heads)(w) for w in (q, k, v)], axis=1)


def _qkv_bias(heads):
    return lambda q, k, v: np.stack([porting.heads_bias(heads)(b) for b in (q, k, v)])


# Our parameter path <- diffusers tensor names (`{i}`: the block index; those rows are stacked over blocks) and the
# conversion. diffusers gives every block its own copy of the timestep and class embeddings (the official conversion
# writes the same tensors into each); we read block 0's, and `from_diffusers` checks that the copies agree.
_EMB = "transformer_blocks.0.norm1.emb."


def _table(heads: int) -> dict[str, tuple[list[str], Any]]:
    blk = "transformer_blocks.{i}."
    rows = [
        ("patch_embed/kernel", ["pos_embed.proj.weight"], _patch_conv),
        ("patch_embed/bias", ["pos_embed.proj.bias"], porting.same),
        ("t_embed/linear_1/kernel", [_EMB + "timestep_embedder.linear_1.weight"], porting.linear),
        ("t_embed/linear_1/bias", [_EMB + "timestep_embedder.linear_1.bias"], porting.same),
        ("t_embed/linear_2/kernel", [_EMB + "timestep_embedder.linear_2.weight"], porting.linear),
        ("t_embed/linear_2/bias", [_EMB + "timestep_embedder.linear_2.bias"], porting.same),
        ("class_embed/embedding", [_EMB + "class_embedder.embedding_table.weight"], porting.same),
        ("blocks/adaln/kernel", [blk + "norm1.linear.weight"], porting.linear),
        ("blocks/adaln/bias", [blk + "norm1.linear.bias"], porting.same),
        ("blocks/attn/qkv/kernel", [blk + f"attn1.to_{n}.weight" for n in "qkv"], _qkv_kernel(heads)),
        ("blocks/attn/qkv/bias", [blk + f"attn1.to_{n}.bias" for n in "qkv"], _qkv_bias(heads)),
        ("blocks/attn/out/kernel", [blk + "attn1.to_out.0.weight"], porting.heads_out(heads)),
        ("blocks/attn/out/bias", [blk + "attn1.to_out.0.bias"], porting.same),
        ("blocks/Dense_0/kernel", [blk + "ff.net.0.proj.weight"], porting.linear),
        ("blocks/Dense_0/bias", [blk + "ff.net.0.proj.bias"], porting.same),
        ("blocks/Dense_1/kernel", [blk + "ff.net.2.weight"], porting.linear),
        ("blocks/Dense_1/bias", [blk + "ff.net.2.bias"], porting.same),
        ("final_adaln/kernel", ["proj_out_1.weight"], porting.linear),
        ("final_adaln/bias", ["proj_out_1.bias"], porting.same),
        ("unpatchify/kernel", ["proj_out_2.weight"], porting.linear),
        ("unpatchify/bias", ["proj_out_2.bias"], porting.same),
    ]
    return {path: (names, convert) for path, names, convert in rows}


_GELU = {"gelu-approximate": True, "gelu": False}


def module_from_config(config: Mapping[str, Any], **overrides) -> DiT:
    """Our `DiT` for a diffusers `DiTTransformer2DModel` config.json; `overrides` set run-time fields (dtype,
    attention_backend, remat)."""
    unsupported = {}
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        unsupported["norm_type"] = config["norm_type"]
    if config.get("norm_elementwise_affine", False):
        unsupported["norm_elementwise_affine"] = True
    if config.get("num_embeds_ada_norm", 1000) is None:
        unsupported["num_embeds_ada_norm"] = None
    if config.get("activation_fn", "gelu-approximate") not in _GELU:
        unsupported["activation_fn"] = config["activation_fn"]
    if unsupported:
        raise ValueError(f"from_diffusers: this DiTTransformer2DModel config is not supported: {unsupported} "
                         f"(supported: norm_type 'ada_norm_zero', no elementwise affine norms, a class count in "
                         f"num_embeds_ada_norm, activation_fn in {sorted(_GELU)})")
    heads, head_dim = config.get("num_attention_heads", 16), config.get("attention_head_dim", 72)
    fields = dict(num_classes=config.get("num_embeds_ada_norm", 1000), width=heads * head_dim,
                  depth=config.get("num_layers", 28), num_heads=heads, patch_size=config.get("patch_size", 2),
                  in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels"),
                  sample_size=config.get("sample_size", 32), timestep_freq_shift=1.0,
                  mlp_norm_eps=config.get("norm_eps", 1e-5),
                  approximate_gelu=_GELU[config.get("activation_fn", "gelu-approximate")],
                  qkv_bias=config.get("attention_bias", True))
    return DiT(**{**fields, **overrides})


def from_diffusers(model_dir: str | Path, *, dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                   **overrides):
    """`(module, params)` from a diffusers `DiTTransformer2DModel.save_pretrained` folder (config.json and
    `diffusion_pytorch_model.safetensors`, or its sharded index).

    Parameters come as `dtype` arrays; tensors are read, converted and placed one parameter at a time, so the
    checkpoint is never in host memory whole. With `mesh`, each parameter goes straight into the shards its logical
    axes give it (`jaxgen.core.sharding.LOGICAL_AXIS_RULES`); without, onto the default device. `overrides` set module
    fields (`dtype` of compute, `attention_backend`, `remat`); parameter shapes do not depend on them.
    Returns params as `{"params": ...}`, ready for `module.apply(params, x, t, y)`.
    """
    config = porting.read_config(model_dir, ["DiTTransformer2DModel"])
    module = module_from_config(config, **overrides)
    reader = safetensors_io.open_checkpoint(model_dir, "diffusion_pytorch_model")
    _check_tied_embeddings(reader, module.depth)
    boxed = jax.eval_shape(module.init, jax.random.key(0), *_example_inputs(module, 2 * module.patch_size))["params"]
    params = porting.load_params(reader, boxed, _table(module.num_heads), lambda path: module.depth, dtype=dtype,
                                 mesh=mesh, source=str(model_dir))
    return module, params


def _example_inputs(module: DiT, size: int):
    return (jnp.zeros((1, size, size, module.in_channels)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))


def _check_tied_embeddings(reader, depth: int) -> None:
    """Every block's copy of the timestep/class embedding must equal block 0's, as in the official checkpoints."""
    for name in [n for n in reader.names if n.startswith(_EMB)]:
        first = reader.get(name)
        for i in range(1, depth):
            if not np.array_equal(reader.get(name.replace(".0.", f".{i}.", 1)), first):
                raise ValueError(f"from_diffusers: block {i}'s {name[len(_EMB):]} differs from block 0's; this DiT "
                                 f"keeps one timestep/class embedding shared by all blocks (the official checkpoints "
                                 f"tie them)")


def num_params(module: DiT, image_size: int) -> int:
    """Parameter count from shapes alone (no allocation)."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), *_example_inputs(module, image_size))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(abstract)))
