"""The public op: validation, fitting the block sizes to the shapes, dispatch through a registry.

`implementation` names an entry of `IMPLEMENTATIONS`; None picks the platform default: the Triton-lowered kernel on a
GPU, the jnp reference elsewhere (on CPU the Pallas body only runs interpreted, for tests). Inference only: SIGE
edits run forward passes, so no gradient is defined.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.sparse_conv import kernel_gpu
from pallas_kernels.sparse_conv import reference
from pallas_kernels.sparse_conv import tuning

_FLOAT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
_MIN_DOT = 16  # Triton's smallest dot dimension: block_k and block_n must reach it


def _largest_power_of_2_dividing(n: int) -> int:
  return n & -n


def _fit(blocks: tuning.BlockSizes, channels: tuple[int, ...], cout: int) -> tuning.BlockSizes:
  """block_k / block_n lowered to powers of two that divide every part's channels / the output channels."""
  block_k = min([blocks.block_k] + [_largest_power_of_2_dividing(c) for c in channels])
  block_n = min(blocks.block_n, _largest_power_of_2_dividing(cout))
  return tuning.BlockSizes(rows=blocks.rows, block_n=block_n, block_k=block_k, num_warps=blocks.num_warps,
                           num_stages=blocks.num_stages)


def _kernel_limits(channels: tuple[int, ...], cout: int, tile: int) -> str | None:
  """Why the Pallas kernel cannot run a site of these sizes, or None when it can."""
  if any(c % _MIN_DOT for c in channels) or cout % _MIN_DOT:
    return (f"every part's channels {channels} and the output channels {cout} must be multiples of {_MIN_DOT} "
            f"(Triton's smallest dot)")
  if tile & (tile - 1):
    return f"the tile ({tile}) must be a power of two (its pixels are rows of a Triton block)"
  return None


def _run_reference(idx, count, parts, kernel, bias, cached, scale, shift, residual, *, static, blocks):
  del blocks
  return reference.sparse_conv_reference(parts, idx, count, kernel, bias, cached, scale, shift, residual, **static)


def _run_triton(idx, count, parts, kernel, bias, cached, scale, shift, residual, *, static, blocks, interpret):
  channels = tuple(p.shape[-1] for p in parts)
  blocks = _fit(blocks, channels, kernel.shape[-1])
  pixels = static["tile"] ** 2
  tiles_per_program = max(1, blocks.rows // pixels)
  return kernel_gpu.sparse_conv(idx, count, parts, kernel, bias, cached, scale, shift, residual, **static,
                                tiles_per_program=tiles_per_program, blocks=blocks, interpret=interpret)


IMPLEMENTATIONS: dict[str, Callable] = {
    "reference": _run_reference,
    "triton": functools.partial(_run_triton, interpret=False),
    "triton_interpret": functools.partial(_run_triton, interpret=True),
}

# Which implementations run the Pallas kernel (and so have its size limits).
_KERNELS = ("triton", "triton_interpret")

DEFAULT_BY_PLATFORM = {"gpu": "triton", "cuda": "triton", "rocm": "triton", "cpu": "reference"}


def default_implementation() -> str:
  """The implementation `sparse_conv` runs on this platform when none is named."""
  return DEFAULT_BY_PLATFORM.get(jax.default_backend(), "reference")


def unsupported(part_channels: tuple[int, ...], cout: int, tile: int, implementation: str | None = None) -> str | None:
  """Why `implementation` (default: the platform's) cannot run a site with these channel counts and tile, or None.

  Callers with a fallback (the SIGE layers' XLA path) use it to route such sites there instead of raising.
  """
  implementation = implementation or default_implementation()
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown implementation {implementation!r}; choose one of {sorted(IMPLEMENTATIONS)}")
  return _kernel_limits(tuple(part_channels), cout, tile) if implementation in _KERNELS else None


@functools.partial(jax.jit, static_argnames=("static", "implementation", "blocks"))
def _dispatch(idx, count, parts, kernel, bias, cached, scale, shift, residual, *, static, implementation, blocks):
  return IMPLEMENTATIONS[implementation](idx, count, parts, kernel, bias, cached, scale, shift, residual,
                                         static=dict(static), blocks=blocks)


def _check_shape(name, value, shape):
  if value is not None and tuple(value.shape) != tuple(shape):
    raise ValueError(f"sparse_conv: {name} must have shape {tuple(shape)}, got {tuple(value.shape)}")


def sparse_conv(parts, idx, count, kernel, cached, *, bias=None, scale=None, shift=None, activation=None,
                residual=None, stride=1, padding=None, tile=4, upsample=1, implementation=None, block_sizes=None):
  """`cached` with the output tiles `idx[:count]` of `conv(act(x · scale + shift)) + bias + residual` written in.

  Args:
    parts: an NHWC map `[B, h, w, C]` or a tuple of maps `[B, h, w, C_i]` meant concatenated on channels (a UNet's
      skip connection), float.
    idx: int32 `[slots, 2]` (tile row, tile column) of the active output tiles; rows from `count` on are padding
      (their values do not matter: they are never computed or written).
    count: int32 scalar (or shape `[1]`), the number of active tiles; runtime data, so one compile serves every edit
      of the same bucket size.
    kernel: `[k, k, C, C_out]` (HWIO); the pre-activation is cast to its dtype before the products (float32
      accumulation).
    cached: `[B, H_out, W_out, C_out]`, the site's output from the full pass; the result has its shape and dtype and
      equals it outside the active tiles. The Pallas kernels write into it in place (inside a jit, XLA copies it
      first unless it is donated).
    bias: `[C_out]` or None. scale, shift: `[B, C]` (both or neither), applied in float32 before `activation`.
    activation: None or a name in `reference.ACTIVATIONS`.
    residual: `[B, H_out, W_out, C_out]` added to the fresh pixels, or None.
    stride, padding (default k // 2), tile: the site's geometry; output tile `(ty, tx)` covers rows `[ty·tile,
      ty·tile + tile)`, columns alike. upsample: the input is read `upsample`× nearest-enlarged (never materialised).
    implementation: a key of `IMPLEMENTATIONS`, None for `default_implementation()`.
    block_sizes: `tuning.BlockSizes` for the Pallas kernel; by default the tuned entry for this device.
  """
  parts = tuple(parts) if isinstance(parts, (tuple, list)) else (parts,)
  if not parts or any(p.ndim != 4 for p in parts) or len({p.shape[:3] for p in parts}) != 1:
    raise ValueError(f"sparse_conv: parts must be NHWC maps sharing [B, h, w], got {[p.shape for p in parts]}")
  if any(jnp.dtype(p.dtype) not in _FLOAT_DTYPES for p in parts + (kernel, cached)):
    raise ValueError(f"sparse_conv: parts, kernel and cached must be bf16/f16/f32, got parts "
                     f"{[str(p.dtype) for p in parts]}, kernel {kernel.dtype}, cached {cached.dtype}")
  batch, low_h, low_w = parts[0].shape[:3]
  channels = tuple(p.shape[-1] for p in parts)
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != sum(channels):
    raise ValueError(f"sparse_conv: kernel must be [k, k, C={sum(channels)}, C_out] (HWIO) for parts with channels "
                     f"{channels}, got {kernel.shape}")
  size, cout = kernel.shape[0], kernel.shape[3]
  padding = size // 2 if padding is None else padding
  if stride < 1 or tile < 1 or upsample < 1 or padding < 0:
    raise ValueError(f"sparse_conv: stride, tile and upsample must be >= 1 and padding >= 0, got stride={stride}, "
                     f"tile={tile}, upsample={upsample}, padding={padding}")
  height, width = low_h * upsample, low_w * upsample
  out_h, out_w = (reference.output_size(s, size, stride, padding) for s in (height, width))
  _check_shape("cached", cached, (batch, out_h, out_w, cout))
  if idx.ndim != 2 or idx.shape[1] != 2 or idx.shape[0] < 1 or not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"sparse_conv: idx must be integer [slots >= 1, 2], got {idx.shape} {idx.dtype}")
  count = jnp.asarray(count)
  if count.size != 1 or not jnp.issubdtype(count.dtype, jnp.integer):
    raise ValueError(f"sparse_conv: count must be one integer, got shape {count.shape} dtype {count.dtype}")
  _check_shape("bias", bias, (cout,))
  if (scale is None) != (shift is None):
    raise ValueError("sparse_conv: scale and shift come together, got "
                     f"{None if scale is None else scale.shape} and {None if shift is None else shift.shape}")
  _check_shape("scale", scale, (batch, sum(channels)))
  _check_shape("shift", shift, (batch, sum(channels)))
  _check_shape("residual", residual, (batch, out_h, out_w, cout))
  if activation is not None and activation not in reference.ACTIVATIONS:
    raise ValueError(f"sparse_conv: activation {activation!r} is not one of {sorted(reference.ACTIVATIONS)}")
  implementation = implementation or default_implementation()
  reason = unsupported(channels, cout, tile, implementation)
  if reason is not None:
    raise ValueError(f"sparse_conv: implementation {implementation!r} cannot run parts {[p.shape for p in parts]} "
                     f"with kernel {kernel.shape}: {reason}; use implementation='reference'")
  if block_sizes is None:
    block_sizes = tuning.block_sizes_for(jax.devices()[0].device_kind)
  static = (("activation", activation), ("stride", stride), ("padding", padding), ("tile", tile),
            ("upsample", upsample))
  return _dispatch(idx.astype(jnp.int32), count.reshape(()).astype(jnp.int32), parts, kernel, bias, cached, scale,
                   shift, residual, static=static, implementation=implementation, blocks=block_sizes)

