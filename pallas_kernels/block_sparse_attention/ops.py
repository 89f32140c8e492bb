"""The public op: validation, dispatch through a registry, and the custom_vjp that ties each forward to its backward.

`jax.grad` cannot differentiate through `pallas_call`, so each kernel family ships a forward that also returns the
softmax statistics (lse) and a backward of three Pallas kernels (dq, dk, dv) that skip inactive blocks like the
forward does. The mask enters only as data (mask_info index lists), so a new mask of the same shape reuses the
compiled program.
"""

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.block_sparse_attention import kernel_gpu
from pallas_kernels.block_sparse_attention import kernel_mosaic_gpu
from pallas_kernels.block_sparse_attention import kernel_tpu
from pallas_kernels.block_sparse_attention import mask_info as mask_info_lib
from pallas_kernels.block_sparse_attention import reference
from pallas_kernels.block_sparse_attention import tuning

_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels specialise on; hashable so it is a static jit argument."""

  block_q: int
  block_kv: int
  sm_scale: float
  seq_len: int
  block_sizes: tuning.BlockSizes
  implementation: str


def _whole_blocks(static: _Static, num_q_blocks: int, num_kv_blocks: int) -> tuple[int, int]:
  return num_q_blocks * static.block_q, num_kv_blocks * static.block_kv


def _multiple_of_8(static: _Static, num_q_blocks: int, num_kv_blocks: int) -> tuple[int, int]:
  """Mosaic GPU's tiled TMA views the sequence axis in tiles of 8 rows; TMA clips the rest of the last block."""
  del num_q_blocks, num_kv_blocks
  length = -(-static.seq_len // 8) * 8
  return length, length


@dataclasses.dataclass(frozen=True)
class _KernelFamily:
  """A forward `(q, k, v, info, **static) -> (out, lse)` and its backward `(..., do, lse, delta, info) -> grads`.

  padded_lengths: (query, key) sequence lengths the kernels need, given the static config and the mask's block counts.
  """

  forward: Callable
  backward: Callable
  padded_lengths: Callable[[_Static, int, int], tuple[int, int]]


_KERNEL_FAMILIES: dict[str, _KernelFamily] = {
    "mosaic_gpu": _KernelFamily(kernel_mosaic_gpu.forward, kernel_mosaic_gpu.backward, _multiple_of_8),
    "mosaic_gpu_interpret": _KernelFamily(functools.partial(kernel_mosaic_gpu.forward, interpret=True),
                                          functools.partial(kernel_mosaic_gpu.backward, interpret=True),
                                          _multiple_of_8),
    "triton": _KernelFamily(functools.partial(kernel_gpu.forward, interpret=False),
                            functools.partial(kernel_gpu.backward, interpret=False), _whole_blocks),
    "interpret": _KernelFamily(functools.partial(kernel_gpu.forward, interpret=True),
                               functools.partial(kernel_gpu.backward, interpret=True), _whole_blocks),
    "tpu": _KernelFamily(kernel_tpu.forward, kernel_tpu.backward, _whole_blocks),
}


def _pad_seq(x, length):
  """Zero rows up to `length` on the sequence axis (a no-op, not a copy, when nothing is missing)."""
  if x.shape[1] == length:
    return x
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _kernel_args(static: _Static) -> dict:
  return dict(block_q=static.block_q, block_kv=static.block_kv, sm_scale=static.sm_scale,
              seq_len=static.seq_len, block_sizes=static.block_sizes)


def _run_forward(q, k, v, info, static: _Static):
  family = _KERNEL_FAMILIES[static.implementation]
  q_len, kv_len = family.padded_lengths(static, *info.kv_indices.shape[2:])
  out, lse = family.forward(_pad_seq(q, q_len), _pad_seq(k, kv_len), _pad_seq(v, kv_len), info,
                            **_kernel_args(static))
  return out[:, :static.seq_len], lse


def _run_backward(q, k, v, out, do, lse, info, static: _Static):
  family = _KERNEL_FAMILIES[static.implementation]
  # delta_i = sum_d out_id * dout_id; padded query rows get 0, which makes their contribution vanish.
  delta = jnp.einsum("bshd,bshd->bhs", out.astype(jnp.float32), do.astype(jnp.float32))
  delta = jnp.pad(delta, ((0, 0), (0, 0), (0, lse.shape[-1] - static.seq_len)))
  q_len, kv_len = family.padded_lengths(static, *info.kv_indices.shape[2:])
  dq, dk, dv = family.backward(_pad_seq(q, q_len), _pad_seq(k, kv_len), _pad_seq(v, kv_len), _pad_seq(do, q_len),
                               lse, delta, info, **_kernel_args(static))
  return dq[:, :static.seq_len], dk[:, :static.seq_len], dv[:, :static.seq_len]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pallas_attention(q, k, v, info, static: _Static):
  return _run_forward(q, k, v, info, static)[0]


def _pallas_attention_fwd(q, k, v, info, static: _Static):
  out, lse = _run_forward(q, k, v, info, static)
  return out, (q, k, v, info, out, lse)


def _pallas_attention_bwd(static: _Static, residuals, do):
  q, k, v, info, out, lse = residuals
  dq, dk, dv = _run_backward(q, k, v, out, do, lse, info, static)
  return dq, dk, dv, None


_pallas_attention.defvjp(_pallas_attention_fwd, _pallas_attention_bwd)


def _apply_kernels(q, k, v, block_mask, static: _Static):
  return _pallas_attention(q, k, v, mask_info_lib.make_mask_info(block_mask), static)


def _apply_reference(q, k, v, block_mask, static: _Static):
  return reference.block_sparse_attention_reference(q, k, v, block_mask, block_q=static.block_q,
                                                    block_kv=static.block_kv, sm_scale=static.sm_scale)


_IMPLEMENTATIONS: dict[str, Callable] = {
    **{name: _apply_kernels for name in _KERNEL_FAMILIES},
    "reference": _apply_reference,
}
IMPLEMENTATIONS = tuple(_IMPLEMENTATIONS)


def _gpu_default(dtype, head_dim, block_q, block_kv) -> str:
  if compat.is_hopper() and kernel_mosaic_gpu.supports(dtype, head_dim, block_q, block_kv):
    return "mosaic_gpu"
  return "triton"


_BACKEND_DEFAULTS: dict[str, Callable[..., str]] = {
    "gpu": _gpu_default,
    "tpu": lambda *_: "tpu",
    "cpu": lambda *_: "interpret",
}


def default_implementation(dtype, head_dim: int, block_q: int, block_kv: int) -> str:
  """The implementation `block_sparse_attention` uses on this platform when none is named."""
  return _BACKEND_DEFAULTS.get(jax.default_backend(), lambda *_: "reference")(dtype, head_dim, block_q, block_kv)


@functools.partial(jax.jit, static_argnums=(4,))
def _dispatch(q, k, v, block_mask, static: _Static):
  return _IMPLEMENTATIONS[static.implementation](q, k, v, block_mask, static)


def _validate(q, k, v, block_mask, block_q, block_kv, implementation):
  if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
    raise ValueError(f"q, k, v must share one shape [batch, seq, heads, head_dim]; got q {q.shape}, k {k.shape}, "
                     f"v {v.shape}")
  if q.dtype != k.dtype or q.dtype != v.dtype or jnp.dtype(q.dtype) not in _DTYPES:
    raise ValueError(f"q, k, v must share one dtype among bfloat16, float16, float32; got q {q.dtype}, "
                     f"k {k.dtype}, v {v.dtype} (shapes {q.shape})")
  if block_q <= 0 or block_kv <= 0 or block_q % 8 or block_kv % 8:
    raise ValueError(f"block_q={block_q} and block_kv={block_kv} must be positive multiples of 8")
  batch, seq_len, num_heads, _ = q.shape
  expected = (math.ceil(seq_len / block_q), math.ceil(seq_len / block_kv))
  if (block_mask.ndim != 4 or block_mask.shape[0] not in (1, batch) or block_mask.shape[1] != num_heads
      or tuple(block_mask.shape[2:]) != expected):
    raise ValueError(f"block_mask has shape {block_mask.shape}; expected ({batch} or 1, {num_heads}, {expected[0]}, "
                     f"{expected[1]}) for q/k/v shape {q.shape} with block_q={block_q}, block_kv={block_kv}")
  if block_mask.dtype != jnp.bool_:
    raise ValueError(f"block_mask must be bool; got {block_mask.dtype} with shape {block_mask.shape}")
  if implementation is not None and implementation not in _IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is not one of {IMPLEMENTATIONS} (q shape {q.shape})")


def block_sparse_attention(q: jax.Array, k: jax.Array, v: jax.Array, block_mask: jax.Array, *, block_q: int = 128,
                           block_kv: int = 128, sm_scale: float | None = None, implementation: str | None = None,
                           block_sizes: tuning.BlockSizes | None = None) -> jax.Array:
  """Softmax attention restricted to the active blocks of `block_mask`.

  Args:
    q, k, v: `[batch, seq, heads, head_dim]` (the layout of `jax.nn.dot_product_attention`), bf16/f16/f32.
    block_mask: bool `[batch or 1, heads, ceil(seq / block_q), ceil(seq / block_kv)]`; runtime data.
    block_q, block_kv: the mask's block sizes in tokens.
    sm_scale: logits scale, 1 / sqrt(head_dim) by default.
    implementation: one of IMPLEMENTATIONS, or None for the best on the current backend (Mosaic GPU on Hopper for
      bf16/f16 with head_dim 64/128 and 128-token query blocks, else Triton; TPU; interpret on CPU). "interpret" and
      "mosaic_gpu_interpret" run the Triton-backend and the Mosaic GPU kernel bodies in Pallas' interpreters.
    block_sizes: execution settings; by default the tuned entry for this device (tuning.py).

  Returns:
    `[batch, seq, heads, head_dim]` in q's dtype. Each query attends to exactly the keys of its active blocks; keys
    past `seq` never count; a query row with no active block returns zeros.
  """
  _validate(q, k, v, block_mask, block_q, block_kv, implementation)
  head_dim = q.shape[-1]
  if implementation is None:
    implementation = default_implementation(q.dtype, head_dim, block_q, block_kv)
  if implementation.startswith("mosaic_gpu") and not kernel_mosaic_gpu.supports(q.dtype, head_dim, block_q, block_kv):
    raise ValueError(f"implementation={implementation!r} needs bf16/f16, head_dim in (64, 128), block_q=128 and "
                     f"block_kv in (64, 128); got {q.dtype}, q shape {q.shape}, block_q={block_q}, block_kv={block_kv}")
  if block_sizes is None:
    block_sizes = tuning.block_sizes_for(jax.devices()[0].device_kind, head_dim)
  static = _Static(block_q=block_q, block_kv=block_kv,
                   sm_scale=float(1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale),
                   seq_len=q.shape[1], block_sizes=block_sizes, implementation=implementation)
  return _dispatch(q, k, v, block_mask, static)
