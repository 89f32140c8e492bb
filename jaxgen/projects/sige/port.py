"""`from_diffusers(model_dir)`: a diffusers `UNet2DModel` (DDPM, e.g. google/ddpm-church-256) or
`UNet2DConditionModel` (Stable Diffusion 1.x) `save_pretrained` folder as a `SigeUNet` and its params.

The module names mirror diffusers' paths (`down_blocks_0_resnets_1` for `down_blocks.0.resnets.1`), so the name
table is a handful of rewrites: the top-level name's underscores back to dots, a few renamed sub-paths (the
resamplers' `.conv`, `to_out.0`, the transformer block and its GEGLU), and layouts (conv OIHW -> HWIO, linear
(out, in) -> (in, out), 1×1-conv projections to linear). Configurations the port does not build are refused with
the field that differs, so a checkpoint never loads into a different network silently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn import porting, safetensors_io
from jaxgen.projects.sige.unet import SigeUNet

# Fields the port builds only at one value: (field, value it must have; a missing field has diffusers' default).
_FIXED = {"act_fn": "silu", "time_embedding_type": "positional", "resnet_time_scale_shift": "default",
          "center_input_sample": False, "mid_block_scale_factor": 1, "downsample_padding": 1, "class_embed_type": None,
          "num_class_embeds": None, "downsample_type": "conv", "upsample_type": "conv", "attn_norm_num_groups": None,
          "addition_embed_type": None, "encoder_hid_dim": None, "time_cond_proj_dim": None, "conv_in_kernel": 3,
          "conv_out_kernel": 3, "use_linear_projection": False, "only_cross_attention": False,
          "dual_cross_attention": False, "upcast_attention": False, "transformer_layers_per_block": 1,
          "resnet_out_scale_factor": 1.0, "time_embedding_dim": None, "attention_type": "default",
          "mid_block_only_cross_attention": None, "cross_attention_norm": None, "add_attention": True}
_ATTENTION_BLOCKS = {"UNet2DModel": ("AttnDownBlock2D", "AttnUpBlock2D"),
                     "UNet2DConditionModel": ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")}
_PLAIN_BLOCKS = ("DownBlock2D", "UpBlock2D")


def module_from_config(config: dict[str, Any], **overrides) -> SigeUNet:
    """The `SigeUNet` of a diffusers UNet config (its `config.json` as a dict)."""
    kind = config.get("_class_name", "UNet2DModel")
    if kind not in _ATTENTION_BLOCKS:
        raise ValueError(f"from_diffusers: {kind} is not a UNet this port builds (UNet2DModel, UNet2DConditionModel)")
    for field, value in _FIXED.items():
        if config.get(field, value) != value:
            raise ValueError(f"from_diffusers: {field}={config[field]!r} is not supported (only {value!r})")
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    attn_down, attn_up = _ATTENTION_BLOCKS[kind]
    if any(t not in (attn_down, _PLAIN_BLOCKS[0]) for t in down) or any(t not in (attn_up, _PLAIN_BLOCKS[1])
                                                                         for t in up):
        raise ValueError(f"from_diffusers: block types {down} / {up} are not {attn_down}/{attn_up}/DownBlock2D/"
                         f"UpBlock2D")
    levels = tuple(t == attn_down for t in down)
    if tuple(t == attn_up for t in reversed(up)) != levels:
        raise ValueError(f"from_diffusers: up blocks {up} do not mirror down blocks {down}")
    head_dim = config.get("attention_head_dim")
    fields = dict(in_channels=config["in_channels"], out_channels=config["out_channels"],
                  block_out_channels=tuple(config["block_out_channels"]), layers_per_block=config["layers_per_block"],
                  attention_levels=levels, groups=config.get("norm_num_groups", 32),
                  eps=config.get("norm_eps", 1e-5), flip_sin_to_cos=config.get("flip_sin_to_cos", True),
                  freq_shift=float(config.get("freq_shift", 0)))
    if kind == "UNet2DModel":
        fields.update(head_dim=head_dim, mid_attention=config.get("add_attention", True))
    else:
        heads = config.get("num_attention_heads") or head_dim   # SD-1.x: attention_head_dim holds the head count
        if not isinstance(heads, int):
            raise ValueError(f"from_diffusers: per-level head counts {heads} are not supported (one count)")
        if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"from_diffusers: mid_block_type {config['mid_block_type']} is not supported")
        fields.update(num_heads=heads, cross_attention_dim=config["cross_attention_dim"], mid_attention=True)
    return SigeUNet(**{**fields, **overrides})


_TOP = [(re.compile(r"^(down_blocks|up_blocks)_(\d+)_(resnets|attentions)_(\d+)$"), r"\1.\2.\3.\4"),
        (re.compile(r"^(down_blocks|up_blocks)_(\d+)_(downsamplers|upsamplers)_0$"), r"\1.\2.\3.0.conv"),
        (re.compile(r"^mid_block_(resnets|attentions)_(\d+)$"), r"mid_block.\1.\2"),
        (re.compile(r"^time_embedding_(linear_\d)$"), r"time_embedding.\1")]
_INNER = {"attention": "", "to_out": "to_out.0", "norm1": "transformer_blocks.0.norm1",
          "norm2": "transformer_blocks.0.norm2", "norm3": "transformer_blocks.0.norm3",
          "attn1": "transformer_blocks.0.attn1", "attn2": "transformer_blocks.0.attn2",
          "ff_proj": "transformer_blocks.0.ff.net.0.proj", "ff_out": "transformer_blocks.0.ff.net.2"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def diffusers_name(path: tuple[str, ...]) -> str:
    """The diffusers tensor name of a flax parameter path, e.g. ('down_blocks_1_attentions_0', 'attention',
    'to_out', 'kernel') -> 'down_blocks.1.attentions.0.to_out.0.weight'."""
    top = path[0]
    for pattern, replacement in _TOP:
        if pattern.match(top):
            top = pattern.sub(replacement, top)
            break
    rename = _INNER if "attentions" in path[0] else {}  # a resnet's norm1 stays norm1
    inner = [rename.get(p, p) for p in path[1:-1]]
    return ".".join(p for p in [top, *inner, _LEAF[path[-1]]] if p)


def _convert(value: np.ndarray, target_ndim: int) -> np.ndarray:
    if value.ndim == 4 and target_ndim == 4:
        return porting.conv(value)
    if value.ndim == 4 and target_ndim == 2:           # a 1×1 conv used as a linear map (proj_in / proj_out)
        return porting.linear(value[:, :, 0, 0])
    if value.ndim == 2:
        return porting.linear(value)
    return value


def from_diffusers(model_dir: str | Path, *, dtype: Any = jnp.float32, **overrides):
    """`(module, params)` from a diffusers UNet `save_pretrained` folder (config.json and
    `diffusion_pytorch_model.safetensors`, or its sharded index), params as `dtype` arrays read one tensor at a time;
    `overrides` set module fields (e.g. the compute `dtype`). Call as `module.apply(params, x, timesteps)` for a
    `UNet2DModel`, `module.apply(params, x, timesteps, context)` for a `UNet2DConditionModel`; NHWC images."""
    module = module_from_config(porting.read_config(model_dir, tuple(_ATTENTION_BLOCKS)), **overrides)
    reader = safetensors_io.open_checkpoint(model_dir, "diffusion_pytorch_model")
    size = 2 ** (len(module.block_out_channels) - 1)
    args = [jnp.zeros((1, size, size, module.in_channels)), jnp.zeros((1,))]
    if module.cross_attention_dim is not None:
        args.append(jnp.zeros((1, 1, module.cross_attention_dim)))
    boxed = jax.eval_shape(module.init, jax.random.key(0), *args)

    def lookup(path: str, leaf) -> np.ndarray:
        _, *rest = path.split("/")                      # drop the "params" collection
        return _convert(reader.get(diffusers_name(tuple(rest))), leaf.ndim)

    return module, porting.load_variables(reader, boxed, lookup, dtype=dtype, source=str(model_dir))
