"""SIGE-aware Linen layers: plain layers on their own, a caching pass and a sparse pass under an engine.

A model built from these layers is an ordinary Linen module (`module.apply(params, x)` runs it densely). The engine
(`engine.IncrementalEngine`) runs it twice more, announcing the pass in a context variable that the layers read:

- **full**: each layer computes densely and stores what a later edit reuses in the `"sige"` collection: its output
  (after any residual add), GroupNorm statistics as a per-channel `scale` / `shift`, attention keys and values.
  It also records its conv site (input size and block `Geometry`) and its MACs, so the engine can plan edits.
- **sparse**: every tensor between layers is a full-size *merged* map: fresh values where the edit reached, cached
  values elsewhere. A conv gathers the blocks of its active tiles from the merged input (applying the cached norm
  scale / shift and the activation on the way in, zero outside the image), runs a VALID conv on the blocks, and
  writes the tiles into its cached output through the plan's scatter map (a gather: `where(map ≥ 0, tiles[map],
  cached)`), adding the residual there. Attention recomputes queries only for the tokens of active tiles, with
  self-attention keys / values of the merged map (fresh rows merged into cached ones) and cached cross-attention
  keys / values. A site the plan leaves out (a low resolution) runs densely on the merged map — still exact.

GroupNorm in the sparse pass uses the statistics of the full pass, as in the paper: exact for conv-only networks,
an approximation otherwise (tests compare with a dense pass on the same statistics).

How a sparse conv site runs is the pass's `implementation` (`IMPLEMENTATIONS`): "xla" (the default) is the chain
above as separate XLA ops (gather → pre-activation → VALID conv → merge); the "pallas*" names run the whole site as
one launch of `pallas_kernels.sparse_conv` (gather with halo, scale / shift, activation, k² shifted matrix products,
bias and residual, written into the cached map in place; no tile array reaches HBM). A site that kernel cannot take
(SPADE modulation, an activation outside its table, channel counts below its smallest dot, e.g. an RGB `conv_in`)
keeps the XLA chain; `Pass.fused` lists the sites that were fused.
Layout NHWC; tiles of a site are laid row-major, pixel `(i, j)` of tile `n` at flat row `n·tile² + i·tile + j`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.projects.sige.masks import CONV1, Geometry
from pallas_kernels import sparse_conv as fused_site

Array = jax.Array
CACHE = "sige"


@dataclasses.dataclass
class Cost:
    """MACs of one layer: all of it when dense, `per_tile` for each active tile of site `key` when sparse."""

    layer: str
    key: str
    dense: int
    per_tile: int


@dataclasses.dataclass
class Pass:
    """What the engine is running: `mode` "full" (cache, record sites) or "sparse" (read `plan`, the site key ->
    {"idx": [slots, 2] tile coordinates, "count": [] active tiles, "map": [H_out·W_out] scatter map}), with sparse conv
    sites run by `implementation` (a key of `IMPLEMENTATIONS`; the layers append the sites they fused to `fused`);
    `kernel_blocks`: the fused kernel's `pallas_kernels.sparse_conv.BlockSizes`, None for its tuned defaults."""

    mode: str
    plan: Mapping[str, Mapping[str, Array]] = dataclasses.field(default_factory=dict)
    sites: dict[str, tuple[int, int, Geometry]] = dataclasses.field(default_factory=dict)
    costs: list[Cost] = dataclasses.field(default_factory=list)
    implementation: str = "xla"
    fused: list[str] = dataclasses.field(default_factory=list)
    kernel_blocks: Any = None


# How a sparse conv site runs: "xla" is the chain of XLA ops; every other name is the fused site kernel with the
# `pallas_kernels.sparse_conv` implementation it maps to (None: the platform's default — the Triton-lowered kernel on
# a GPU, its jnp reference on CPU; "pallas_interpret": the kernel body interpreted, for CPU tests).
FUSED_SITE_KERNELS: dict[str, str | None] = {
    "pallas": None,
    "pallas_interpret": "triton_interpret",
    "pallas_reference": "reference",
}
IMPLEMENTATIONS = ("xla", *FUSED_SITE_KERNELS)

# The pre-activations the fused site kernel applies, by the callable a model passes as `act`.
_FUSED_ACTIVATIONS: dict[Callable | None, str | None] = {None: None, nn.silu: "silu", nn.relu: "relu"}


_PASS: contextvars.ContextVar[Pass | None] = contextvars.ContextVar("sige_pass", default=None)


@contextlib.contextmanager
def running(state: Pass):
    """Run SIGE-aware layers in `state`'s pass for the duration of the block (the engine wraps `apply` with it)."""
    token = _PASS.set(state)
    try:
        yield state
    finally:
        _PASS.reset(token)


def site_key(height: int, width: int, geometry: Geometry) -> str:
    return f"{height}x{width}/{geometry.key}"


def _sparse_entry(key: str):
    state = _PASS.get()
    if state is not None and state.mode == "sparse":
        return state.plan.get(key)
    return None


def _record(module: nn.Module, key: str, height: int, width: int, geometry: Geometry, dense: int, per_tile: int):
    state = _PASS.get()
    if state is not None and state.mode == "full":
        state.sites[key] = (height, width, geometry)
        state.costs.append(Cost("/".join(module.scope.path), key, int(dense), int(per_tile)))


def _full() -> bool:
    state = _PASS.get()
    return state is not None and state.mode == "full"


def pass_mode() -> str | None:
    """The pass an engine is running ("full" or "sparse"), None for a plain `apply`."""
    state = _PASS.get()
    return None if state is None else state.mode


def channel_parts(x) -> tuple[Array, ...]:
    """A map, or a tuple of maps meant concatenated on channels (a skip connection), as a tuple."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _pre(h: Array, scale: Array | None, shift: Array | None, act: Callable | None,
         modulation: Array | None = None) -> Array:
    """`act(h · scale + shift)` with per-(image, channel) `scale` / `shift` broadcast over the spatial axes; with a
    `modulation` of the same spatial shape holding `(γ, β)` on channels, `act((h · scale + shift)(1 + γ) + β)`
    (SPADE)."""
    if scale is not None:
        expand = (slice(None),) + (None,) * (h.ndim - 2) + (slice(None),)
        h = h * scale[expand] + shift[expand]
    if modulation is not None:
        gamma, beta = jnp.split(modulation.astype(h.dtype), 2, axis=-1)
        h = h * (1 + gamma) + beta
    return act(h) if act is not None else h


def gather_blocks(parts: Sequence[Array], idx: Array, geometry: Geometry, upsample: int = 1) -> tuple[Array, Array]:
    """`[B, n, block, block, C]` input blocks of the tiles `idx` ([n, 2]) from NHWC `parts` (concatenated on
    channels), read from a `upsample`× nearest-upsampled view without materialising it; and the `[n, block, block]`
    mask of pixels inside the image (the caller zeroes the rest after its pre-activation: conv zero padding)."""
    height, width = parts[0].shape[1] * upsample, parts[0].shape[2] * upsample
    offsets = jnp.arange(geometry.block)
    rows = idx[:, 0, None] * geometry.block_stride - geometry.padding + offsets
    cols = idx[:, 1, None] * geometry.block_stride - geometry.padding + offsets
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    rows, cols = jnp.clip(rows, 0, height - 1) // upsample, jnp.clip(cols, 0, width - 1) // upsample
    blocks = [p[:, rows[:, :, None], cols[:, None, :], :] for p in parts]
    return (blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=-1)), inside


def merge_rows(fresh: Array, scatter_map: Array, cached: Array) -> Array:
    """`[B, N, C]`: row `r` of `fresh` (`[B, n·tile², C]`) where `scatter_map[r] ≥ 0`, else `cached`."""
    picked = jnp.take(fresh, jnp.maximum(scatter_map, 0), axis=1)
    return jnp.where((scatter_map >= 0)[None, :, None], picked, cached.astype(picked.dtype))


def merge_tiles(tiles: Array, scatter_map: Array, cached: Array, residual: Array | None = None) -> Array:
    """The cached NHWC map with the `[B, n, t, t, C]` tiles written in through `scatter_map`, `residual` added to the
    fresh pixels only (the cached ones already hold it)."""
    batch, n, tile, _, channels = tiles.shape
    _, height, width, _ = cached.shape
    picked = jnp.take(tiles.reshape(batch, n * tile * tile, channels), jnp.maximum(scatter_map, 0), axis=1)
    picked = picked.reshape(batch, height, width, channels)
    if residual is not None:
        picked = picked + residual.astype(picked.dtype)
    return jnp.where((scatter_map >= 0).reshape(1, height, width, 1), picked, cached.astype(picked.dtype))


def token_ids(idx: Array, height: int, width: int, tile: int) -> Array:
    """`[n·tile²]` flat token ids (row-major pixels) of the tiles `idx`; pixels past the border repeat the edge
    (computed, never merged back)."""
    offsets = jnp.arange(tile)
    rows = jnp.clip(idx[:, 0, None] * tile + offsets, 0, height - 1)
    cols = jnp.clip(idx[:, 1, None] * tile + offsets, 0, width - 1)
    return (rows[:, :, None] * width + cols[:, None, :]).reshape(-1)


def _conv(x: Array, kernel: Array, stride: int, padding) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _init(axes):
    return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def _zeros(axes):
    return nn.with_logical_partitioning(nn.initializers.zeros, axes)


class SigeConv(nn.Module):
    """A conv whose input is `act(x · scale + shift)` (the norm and activation before it, fused into its gather),
    optionally nearest-2×-upsampled first, plus an optional `residual`. `x` may be a tuple of maps concatenated on
    channels (a UNet's skip connection), gathered part by part. `modulation` (`[B, H, W, 2C]` at the conv's input
    resolution, after any upsampling: SPADE's `(γ, β)` maps) modulates the normalised input spatially before `act`;
    in the sparse pass its blocks are gathered alongside the input's."""

    features: int
    kernel: int = 3
    stride: int = 1
    padding: int | None = None
    upsample: bool = False
    use_bias: bool = True
    dtype: Any = jnp.float32

    @property
    def geometry(self) -> Geometry:
        padding = self.kernel // 2 if self.padding is None else self.padding
        return Geometry(self.kernel, self.stride, padding, tile=4 if self.stride == 1 else 2)

    @nn.compact
    def __call__(self, x, scale=None, shift=None, act=None, residual=None, modulation=None):
        parts = channel_parts(x)
        channels = sum(p.shape[-1] for p in parts)
        kernel = self.param("kernel", _init((None, None, "embed", "mlp")),
                            (self.kernel, self.kernel, channels, self.features)).astype(self.dtype)
        bias = self.param("bias", _zeros(("mlp",)), (self.features,)).astype(self.dtype) if self.use_bias else 0
        geometry, up = self.geometry, 2 if self.upsample else 1
        batch, height, width = parts[0].shape[0], parts[0].shape[1] * up, parts[0].shape[2] * up
        if modulation is not None and modulation.shape != (batch, height, width, 2 * channels):
            raise ValueError(f"SigeConv: modulation {modulation.shape} must be (γ, β) at the conv's input, "
                             f"{(batch, height, width, 2 * channels)}")
        key = site_key(height, width, geometry)
        entry = _sparse_entry(key)
        if entry is not None:
            takes = modulation is None and act in _FUSED_ACTIVATIONS
            fused = self._fused_site(parts, key) if takes else None
            if fused is not None:
                expand = lambda v: None if v is None else jnp.broadcast_to(v, (batch, channels))  # noqa: E731
                return fused_site.sparse_conv(
                    parts, entry["idx"], entry["count"], kernel, self.get_variable(CACHE, "out"),
                    bias=bias if self.use_bias else None, scale=expand(scale), shift=expand(shift),
                    activation=_FUSED_ACTIVATIONS[act], residual=residual, stride=self.stride,
                    padding=geometry.padding, tile=geometry.tile, upsample=up, implementation=fused,
                    block_sizes=_PASS.get().kernel_blocks)
            blocks, inside = gather_blocks(parts, entry["idx"], geometry, up)
            if modulation is not None:
                modulation, _ = gather_blocks((modulation,), entry["idx"], geometry)
            blocks = jnp.where(inside[None, ..., None], _pre(blocks, scale, shift, act, modulation), 0)
            blocks = blocks.astype(self.dtype)
            n, size = blocks.shape[1], geometry.block
            tiles = _conv(blocks.reshape(batch * n, size, size, channels), kernel, self.stride, "VALID") + bias
            tiles = tiles.reshape(batch, n, geometry.tile, geometry.tile, self.features)
            return merge_tiles(tiles, entry["map"], self.get_variable(CACHE, "out"), residual)

        h = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
        if self.upsample:
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        pad = geometry.padding
        h = _pre(h, scale, shift, act, modulation).astype(self.dtype)
        out = _conv(h, kernel, self.stride, ((pad, pad), (pad, pad)))
        out = out + bias
        if residual is not None:
            out = out + residual.astype(out.dtype)
        out_h, out_w = out.shape[1:3]
        macs = self.kernel * self.kernel * channels * self.features
        _record(self, key, height, width, geometry, batch * out_h * out_w * macs, batch * geometry.tile ** 2 * macs)
        if _full():
            self.put_variable(CACHE, "out", out)
        return out


    def _fused_site(self, parts, key: str) -> str | None:
        """The `pallas_kernels.sparse_conv` implementation for this sparse site, or None for the XLA chain (the pass
        asks for "xla", or the kernel cannot take these channel counts); records a fused site in the pass."""
        state = _PASS.get()
        if state.implementation not in FUSED_SITE_KERNELS:
            return None
        implementation = FUSED_SITE_KERNELS[state.implementation]
        if fused_site.unsupported(tuple(p.shape[-1] for p in parts), self.features, self.geometry.tile,
                                  implementation) is not None:
            return None
        state.fused.append(f"{'/'.join(self.scope.path)} @ {key}")
        return implementation or fused_site.default_implementation()


class SigeGroupNorm(nn.Module):
    """GroupNorm as a per-(image, channel) `(scale, shift)` for the next conv to apply in its gather. `bias`
    ([B, C], e.g. a projected time embedding) is added to the input before normalising. The sparse pass reuses the
    full pass's statistics."""

    groups: int = 32
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x, bias=None) -> tuple[Array, Array]:
        parts = channel_parts(x)
        channels = sum(p.shape[-1] for p in parts)
        if channels % self.groups:
            raise ValueError(f"SigeGroupNorm: {channels} channels do not split into {self.groups} groups")
        gamma = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (channels,))
        beta = self.param("bias", _zeros(("embed",)), (channels,))
        state = _PASS.get()
        if state is not None and state.mode == "sparse":
            scale, shift = self.get_variable(CACHE, "scale"), self.get_variable(CACHE, "shift")
        else:
            h = (parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)).astype(jnp.float32)
            if bias is not None:
                h = h + bias[:, None, None, :].astype(jnp.float32)
            grouped = h.reshape(h.shape[0], -1, self.groups, channels // self.groups)
            mean, var = grouped.mean(axis=(1, 3)), grouped.var(axis=(1, 3))
            per_channel = channels // self.groups
            scale = gamma * jnp.repeat(jax.lax.rsqrt(var + self.eps), per_channel, axis=-1)
            shift = beta - jnp.repeat(mean, per_channel, axis=-1) * scale
            if state is not None and state.mode == "full":
                self.put_variable(CACHE, "scale", scale)
                self.put_variable(CACHE, "shift", shift)
        if bias is not None:
            shift = shift + bias.astype(jnp.float32) * scale
        return scale, shift


def attend(q: Array, k: Array, v: Array, heads: int) -> Array:
    """Softmax attention of `[B, Nq, C]` queries over `[B, Nk, C]` keys / values, `heads` heads of `C / heads`."""
    batch, nq, channels = q.shape
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, channels // heads)  # noqa: E731
    out = jax.nn.dot_product_attention(split(q), split(k), split(v))
    return out.reshape(batch, nq, channels)


class SigeAttention(nn.Module):
    """Multi-head attention over tokens `h` ([B, N, C]). Self-attention (`context` None): in the sparse pass `h`
    holds only the active tokens, whose fresh keys / values are merged into the cached ones through `scatter_map`.
    Cross-attention: keys / values of `context`, computed once in the full pass and read from the cache after."""

    heads: int
    qkv_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, context=None, scatter_map=None):
        channels = h.shape[-1]
        dense = lambda name, bias: nn.Dense(channels, use_bias=bias, dtype=self.dtype, name=name,  # noqa: E731
                                            kernel_init=_init(("embed", "mlp")), bias_init=_zeros(("mlp",)))
        q = dense("to_q", self.qkv_bias)(h)
        sparse = scatter_map is not None
        if context is None:
            k, v = dense("to_k", self.qkv_bias)(h), dense("to_v", self.qkv_bias)(h)
            if sparse:
                k = merge_rows(k, scatter_map, self.get_variable(CACHE, "k"))
                v = merge_rows(v, scatter_map, self.get_variable(CACHE, "v"))
        elif sparse:
            k, v = self.get_variable(CACHE, "k"), self.get_variable(CACHE, "v")
        else:
            k, v = dense("to_k", self.qkv_bias)(context), dense("to_v", self.qkv_bias)(context)
        if _full():
            self.put_variable(CACHE, "k", k)
            self.put_variable(CACHE, "v", v)
        return dense("to_out", True)(attend(q, k.astype(q.dtype), v.astype(q.dtype), self.heads))


def _attention_macs(tokens: int, channels: int, context: int | None, context_dim: int | None) -> tuple[int, int]:
    """(MACs per query token, MACs paid once per pass) of one attention: self if `context` is None."""
    if context is None:
        return 4 * channels * channels + 2 * tokens * channels, 0
    return 2 * channels * channels + 2 * context * channels, 2 * context * context_dim * channels


class _TokenSite(nn.Module):
    """Shared plumbing of the attention blocks: the site of their token tiles and the tokens of the sparse pass."""

    def tokens(self, x: Array):
        """(`[B, N, C]` tokens to process, scatter map or None) — all tokens when dense, active ones when sparse."""
        batch, height, width, channels = x.shape
        entry = _sparse_entry(site_key(height, width, CONV1))
        flat = x.reshape(batch, height * width, channels)
        if entry is None:
            return flat, None, None
        return flat[:, token_ids(entry["idx"], height, width, CONV1.tile)], entry["map"], entry

    def finish(self, out: Array, x: Array, entry, per_token: int, once: int) -> Array:
        """Tokens back to NHWC with the residual `x`: merged into the cached output when sparse."""
        batch, height, width, channels = x.shape
        if entry is not None:
            tile = CONV1.tile
            tiles = out.reshape(batch, -1, tile, tile, channels)
            residual_ids = token_ids(entry["idx"], height, width, tile)
            residual = x.reshape(batch, height * width, channels)[:, residual_ids].reshape(tiles.shape)
            return merge_tiles(tiles + residual.astype(tiles.dtype), entry["map"], self.get_variable(CACHE, "out"))
        out = out.reshape(x.shape) + x.astype(out.dtype)
        key = site_key(height, width, CONV1)
        _record(self, key, height, width, CONV1, batch * (height * width * per_token + once),
                batch * CONV1.tile ** 2 * per_token)
        if _full():
            self.put_variable(CACHE, "out", out)
        return out


class SigeAttnBlock(_TokenSite):
    """The DDPM / `UNet2DModel` attention block: GroupNorm, single-map self-attention, output projection, residual."""

    heads: int = 1
    groups: int = 32
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale, shift = SigeGroupNorm(self.groups, self.eps, name="group_norm")(x)
        tokens, scatter_map, entry = self.tokens(x)
        h = _pre(tokens, scale, shift, None).astype(self.dtype)
        out = SigeAttention(self.heads, qkv_bias=True, dtype=self.dtype, name="attention")(h, scatter_map=scatter_map)
        tokens_total, channels = x.shape[1] * x.shape[2], x.shape[-1]
        per_token, once = _attention_macs(tokens_total, channels, None, None)
        return self.finish(out, x, entry, per_token, once)


class SigeTransformer(_TokenSite):
    """The Stable Diffusion `Transformer2DModel` with one `BasicTransformerBlock`: GroupNorm, 1×1 `proj_in`,
    LayerNorm + self-attention, LayerNorm + cross-attention on `context`, LayerNorm + GEGLU feed-forward, 1×1
    `proj_out`, residual. Everything but self-attention is per token, so the sparse pass runs it on active tokens."""

    heads: int
    groups: int = 32
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        channels = x.shape[-1]
        scale, shift = SigeGroupNorm(self.groups, self.eps, name="norm")(x)
        tokens, scatter_map, entry = self.tokens(x)
        dense = lambda features, name: nn.Dense(features, dtype=self.dtype, name=name,  # noqa: E731
                                                kernel_init=_init(("embed", "mlp")), bias_init=_zeros(("mlp",)))
        norm = lambda name: nn.LayerNorm(1e-5, dtype=self.dtype, name=name)  # noqa: E731
        h = dense(channels, "proj_in")(_pre(tokens, scale, shift, None).astype(self.dtype))
        h = h + SigeAttention(self.heads, qkv_bias=False, dtype=self.dtype, name="attn1")(
            norm("norm1")(h), scatter_map=scatter_map)
        h = h + SigeAttention(self.heads, qkv_bias=False, dtype=self.dtype, name="attn2")(
            norm("norm2")(h), context=context, scatter_map=scatter_map)
        value, gate = jnp.split(dense(8 * channels, "ff_proj")(norm("norm3")(h)), 2, axis=-1)
        h = h + dense(channels, "ff_out")(value * nn.gelu(gate, approximate=False))
        out = dense(channels, "proj_out")(h)
        tokens_total = x.shape[1] * x.shape[2]
        self_macs, _ = _attention_macs(tokens_total, channels, None, None)
        cross_macs, once = _attention_macs(tokens_total, channels, context.shape[1], context.shape[-1])
        per_token = self_macs + cross_macs + 2 * channels * channels + 12 * channels * channels
        return self.finish(out, x, entry, per_token, once)
