"""The int4 matmul spec in plain jnp: storage, quantization and the three products.

Every kernel in this package is tested against these functions, and `ops.py` falls back to them where no Pallas
path exists. They favour exactness over speed: products are computed in float32 at HIGHEST precision.

Storage. Signed 4-bit codes are packed two per uint8 along one axis: element 2i sits in the low nibble and 2i+1 in
the high nibble. This layout is independent of any kernel tiling, so checkpoints survive re-tuning.

Quantization. Symmetric per group of `group_size` consecutive elements along the contraction axis:
`scale = max|x| / 7`, `q = clip(round_half_to_even(x / scale), -8, 7)`; a group of zeros gets scale 0 and codes 0.
The division by 7 is computed as a float32 multiplication by fl(1/7): XLA rewrites a division by a constant into
exactly that (found by the bit-exact test), so spelling it out makes every backend, numpy included, agree bit for bit.
The unsigned variant (for non-negative inputs such as shifted post-GELU activations) uses `max(x) / 15` and
codes in [0, 15]. Activations are smoothed first, x / smooth, computed as x * fl(1 / smooth) (SVDQuant's
X diag(lambda)^-1) for the same reason: XLA turns a division by a broadcast vector into that multiplication in some
programs and not in others, and float32 division is not correctly rounded on every device (XLA's 1 / smooth on an
H100 differed from numpy's in the last bit for 32 of 256 channels). The kernels take the reciprocal as data, so
every path multiplies by the same float32 numbers, and the kernels multiply rather than divide per element.
"""

import jax
import jax.numpy as jnp

DEFAULT_GROUP_SIZE = 64
INT4_MAX = 7
INT4_MIN = -8
UINT4_MAX = 15
INT8_MAX = 127


def pack_int4(q, axis=-1):
  """Packs int8 codes in [-8, 15] two per uint8 along `axis` (element 2i low nibble, 2i+1 high nibble)."""
  q = jnp.asarray(q)
  if not jnp.issubdtype(q.dtype, jnp.integer):
    raise ValueError(f"pack_int4 needs integer codes, got dtype {q.dtype} of shape {q.shape}")
  axis = axis % q.ndim
  if q.shape[axis] % 2:
    raise ValueError(f"pack_int4 needs an even length along axis {axis}, got shape {q.shape}")
  q = jnp.moveaxis(q.astype(jnp.uint8), axis, -1)
  pairs = q.reshape(*q.shape[:-1], q.shape[-1] // 2, 2)
  packed = (pairs[..., 0] & 0xF) | ((pairs[..., 1] & 0xF) << 4)
  return jnp.moveaxis(packed.astype(jnp.uint8), -1, axis)


def unpack_int4(packed, axis=-1, signed=True):
  """Inverse of `pack_int4`: int8 codes, twice as long along `axis`; `signed=False` reads codes in [0, 15]."""
  packed = jnp.asarray(packed)
  if packed.dtype != jnp.uint8:
    raise ValueError(f"unpack_int4 needs uint8, got dtype {packed.dtype} of shape {packed.shape}")
  axis = axis % packed.ndim
  as_int8 = jax.lax.bitcast_convert_type(jnp.moveaxis(packed, axis, -1), jnp.int8)
  if signed:
    low = jax.lax.shift_right_arithmetic(jax.lax.shift_left(as_int8, jnp.int8(4)), jnp.int8(4))
    high = jax.lax.shift_right_arithmetic(as_int8, jnp.int8(4))
  else:
    low = as_int8 & 0xF
    high = jax.lax.shift_right_logical(as_int8, jnp.int8(4))
  codes = jnp.stack([low, high], axis=-1).reshape(*low.shape[:-1], low.shape[-1] * 2)
  return jnp.moveaxis(codes, -1, axis)


def _check_groups(shape, axis, group_size):
  if shape[axis] % group_size:
    raise ValueError(f"length {shape[axis]} along axis {axis} of shape {shape} is not a multiple of "
                     f"group_size={group_size}")


def quantize_codes(x, group_size=DEFAULT_GROUP_SIZE, axis=-1, signed=True):
  """Per-group 4-bit codes (int8, unpacked) and float32 scales; the spec that every kernel reproduces bit for bit."""
  x = jnp.asarray(x)
  axis = axis % x.ndim
  _check_groups(x.shape, axis, group_size)
  moved = jnp.moveaxis(x.astype(jnp.float32), axis, -1)
  groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // group_size, group_size)
  if signed:
    scales = jnp.max(jnp.abs(groups), axis=-1) * jnp.float32(1 / INT4_MAX)
    lowest, highest = INT4_MIN, INT4_MAX
  else:
    scales = jnp.maximum(jnp.max(groups, axis=-1), 0.0) * jnp.float32(1 / UINT4_MAX)
    lowest, highest = 0, UINT4_MAX
  # A zero group divides 0 by 1 instead of 0 by 0: codes 0, scale 0.
  divisor = jnp.where(scales == 0, 1.0, scales)[..., None]
  codes = jnp.clip(jnp.round(groups / divisor), lowest, highest).astype(jnp.int8)
  codes = jnp.moveaxis(codes.reshape(moved.shape), -1, axis)
  return codes, jnp.moveaxis(scales, -1, axis)


def smoothing_reciprocal(smooth):
  """1 / smooth in float32 as this device divides (not correctly rounded on every GPU), or None: what the
  activations are multiplied by to be smoothed."""
  return None if smooth is None else 1.0 / jnp.asarray(smooth, jnp.float32)


def quantize_activations(x, smooth=None, group_size=DEFAULT_GROUP_SIZE, signed=True):
  """Q(x / smooth): per-token, per-group codes (int8) and float32 scales of [M, K] activations, smoothed first."""
  smoothed = x.astype(jnp.float32)
  if smooth is not None:
    smoothed = smoothed * smoothing_reciprocal(smooth)
  return quantize_codes(smoothed, group_size, axis=-1, signed=signed)


def quantize_int4(x, group_size=DEFAULT_GROUP_SIZE, axis=-1):
  """Signed symmetric per-group quantization: (packed uint8 along `axis`, float32 scales)."""
  codes, scales = quantize_codes(x, group_size, axis, signed=True)
  return pack_int4(codes, axis), scales


def quantize_uint4(x, group_size=DEFAULT_GROUP_SIZE, axis=-1):
  """Unsigned per-group quantization of non-negative x (negatives clip to 0): (packed uint8, float32 scales)."""
  codes, scales = quantize_codes(x, group_size, axis, signed=False)
  return pack_int4(codes, axis), scales


def dequantize_int4(packed, scales, group_size=DEFAULT_GROUP_SIZE, axis=-1, signed=True):
  """Float32 values `codes * scale` of a packed tensor."""
  codes = unpack_int4(packed, axis, signed).astype(jnp.float32)
  axis = axis % codes.ndim
  return codes * jnp.repeat(scales.astype(jnp.float32), group_size, axis=axis)


def quantize_int8_rows(x):
  """Symmetric int8 per row (last axis reduced): `scale = max|x| * fl(1/127)`; W8A8 activations and weights."""
  x = jnp.asarray(x).astype(jnp.float32)
  scales = jnp.max(jnp.abs(x), axis=-1, keepdims=True) * jnp.float32(1 / INT8_MAX)
  codes = jnp.clip(jnp.round(x / jnp.where(scales == 0, 1.0, scales)), -INT8_MAX, INT8_MAX).astype(jnp.int8)
  return codes, scales[..., 0]


def quantize_int8_weight(w):
  """Per-output-channel int8 weights of a [K, N] matrix: (int8 [K, N], float32 scales [N])."""
  codes, scales = quantize_int8_rows(jnp.asarray(w).T)
  return codes.T, scales


def _dot(a, b):
  return jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)


def _finish(y, bias, dtype):
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(dtype)


def w4a16_matmul(x, w_packed, w_scales, *, bias=None, group_size=DEFAULT_GROUP_SIZE):
  """y = x @ dequant(W) + bias, with W packed along K from a [K, N] matrix and scales [K / group_size, N]."""
  w = dequantize_int4(w_packed, w_scales, group_size, axis=0)
  return _finish(_dot(x, w), bias, x.dtype)


def w4a4_matmul(x, w_packed, w_scales, *, lowrank_down=None, lowrank_up=None, smooth=None, bias=None,
                group_size=DEFAULT_GROUP_SIZE, activations_signed=True):
  """y = dequant(Q(x / smooth)) @ dequant(W) + (x @ lowrank_down) @ lowrank_up + bias.

  Integer products per group, each scaled by its activation and weight scales and summed in float32, which is what
  the kernels do; for integer codes this equals the float32 product of the dequantized tensors up to rounding order.
  """
  a_codes, a_scales = quantize_activations(x, smooth, group_size, signed=activations_signed)
  w_codes = unpack_int4(w_packed, axis=0)
  m, k = a_codes.shape
  groups = k // group_size
  a_grouped = a_codes.reshape(m, groups, group_size).astype(jnp.int32)
  w_grouped = w_codes.reshape(groups, group_size, -1).astype(jnp.int32)
  per_group = jnp.einsum("mgk,gkn->gmn", a_grouped, w_grouped).astype(jnp.float32)
  y = jnp.sum(per_group * a_scales.T[:, :, None] * w_scales[:, None, :].astype(jnp.float32), axis=0)
  if lowrank_down is not None:
    y = y + _dot(_dot(x, lowrank_down), lowrank_up)
  return _finish(y, bias, x.dtype)


def w8a8_matmul(x, w_codes, w_scales, *, bias=None):
  """y = dequant(Q8(x)) @ dequant(W8) + bias: int8 per-token activations, int8 per-output-channel weights."""
  a_codes, a_scales = quantize_int8_rows(x)
  acc = jnp.dot(a_codes.astype(jnp.int32), w_codes.astype(jnp.int32)).astype(jnp.float32)
  return _finish(acc * a_scales[:, None] * w_scales.astype(jnp.float32)[None, :], bias, x.dtype)
