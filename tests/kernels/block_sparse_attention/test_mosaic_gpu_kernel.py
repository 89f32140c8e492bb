"""The Mosaic GPU kernels (the H100 default) against the jnp reference: forward and gradients.

These kernels only take 128-row query blocks (two 64-row warpgroups), bf16/f16 and head_dim 64 or 128, so they get
their own cases; test_block_sparse_attention.py's smaller blocks go to the Triton kernels on a GPU. The same cases run
twice: interpreted on CPU by Pallas' Mosaic GPU interpreter (JAX >= 0.12), and compiled on a Hopper GPU, where the
test also checks that the default dispatch picks these kernels. Shapes stay small (one or two query blocks, a
ragged sequence end) so the interpreted class takes about 20 s on two cores. The interpreter needs more CPU-client
threads than two cores give (tests/conftest.py sets PJRT_NPROC); without them it hung on grids of several CTAs.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.block_sparse_attention import block_sparse_attention
from pallas_kernels.block_sparse_attention import block_sparse_attention_reference
from pallas_kernels.block_sparse_attention import ops
from support.numerics import as_f32, rel_err

_TOLERANCE = 2e-2  # bf16/f16 inputs and outputs against a float32 reference; seen: ~2e-3

# (dtype, head_dim, seq, block_kv, batch, mask_batch): 200 and 136 tokens end inside a key block, which exercises the
# sequence-end mask; mask_batch 1 broadcasts one mask over the batch; block_kv 128 gives dk/dv two warpgroups.
_FORWARD_CASES = [
    (jnp.bfloat16, 64, 200, 64, 2, 1),
    (jnp.float16, 128, 256, 128, 1, 1),
]
_GRADIENT_CASES = [
    (jnp.bfloat16, 64, 200, 64, 1, 1),
    (jnp.bfloat16, 128, 136, 128, 1, 1),
]
_BLOCK_Q = 128
_HEADS = 2


def _inputs(seed, batch, seq, head_dim, dtype):
  keys = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(key, (batch, seq, _HEADS, head_dim), jnp.float32).astype(dtype) for key in keys]


def _mask(seed, mask_batch, seq, block_kv):
  """A random block mask where head 0's last query-block row is empty (its output must be zeros) and head 1's first
  row sees only the last key block: with a ragged end, a handful of real keys, so one padded key let through would
  move that row's softmax by several percent."""
  shape = (mask_batch, _HEADS, math.ceil(seq / _BLOCK_Q), math.ceil(seq / block_kv))
  mask = np.random.default_rng(seed).random(shape) < 0.6
  mask[:, 0, -1, :] = False
  mask[:, 1, 0, :] = False
  mask[:, 1, 0, -1] = True
  return jnp.asarray(mask)


class TestMosaicGpuCompiled:
  """The compiled kernels through the op's default dispatch; needs a Hopper GPU (H100 / H200)."""

  INTERPRET = False

  @pytest.fixture(autouse=True)
  def _needs_backend(self):
    if not compat.is_hopper():
      pytest.skip(f"compiled Mosaic GPU kernels need a Hopper GPU (compute capability 9.x); this host's device is "
                  f"{jax.devices()[0].device_kind}. TestMosaicGpuInterpret runs the same cases on CPU")

  def _attention(self, q, k, v, mask, block_kv):
    if not self.INTERPRET:
      chosen = ops.default_implementation(q.dtype, q.shape[-1], _BLOCK_Q, block_kv)
      assert chosen == "mosaic_gpu", f"the op would run {chosen!r} here, not the Mosaic GPU kernels"
    return block_sparse_attention(q, k, v, mask, block_q=_BLOCK_Q, block_kv=block_kv,
                                  implementation="mosaic_gpu_interpret" if self.INTERPRET else None)

  @pytest.mark.parametrize("dtype, head_dim, seq, block_kv, batch, mask_batch", _FORWARD_CASES)
  def test_forward_matches_reference(self, dtype, head_dim, seq, block_kv, batch, mask_batch):
    q, k, v, _ = _inputs(0, batch, seq, head_dim, dtype)
    mask = _mask(1, mask_batch, seq, block_kv)
    out = self._attention(q, k, v, mask, block_kv)
    ref = block_sparse_attention_reference(*as_f32(q, k, v), mask, block_q=_BLOCK_Q, block_kv=block_kv)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < _TOLERANCE
    np.testing.assert_array_equal(np.asarray(out[:, (mask.shape[2] - 1) * _BLOCK_Q:, 0], np.float32), 0.0)

  @pytest.mark.parametrize("dtype, head_dim, seq, block_kv, batch, mask_batch", _GRADIENT_CASES)
  def test_gradients_match_reference(self, dtype, head_dim, seq, block_kv, batch, mask_batch):
    q, k, v, do = _inputs(2, batch, seq, head_dim, dtype)
    mask = _mask(3, mask_batch, seq, block_kv)

    def loss(attention):
      return lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))

    grads = jax.grad(loss(lambda q, k, v: self._attention(q, k, v, mask, block_kv)), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(lambda q, k, v: block_sparse_attention_reference(
        q, k, v, mask, block_q=_BLOCK_Q, block_kv=block_kv)), argnums=(0, 1, 2))(*as_f32(q, k, v))
    for name, grad, ref in zip("qkv", grads, ref_grads):
      assert grad.dtype == dtype
      assert rel_err(grad, ref) < _TOLERANCE, f"d{name}"


@pytest.mark.skipif(not hasattr(plgpu, "InterpretGPUParams") or jax.__version_info__ < (0, 12),
                    reason="needs Pallas' Mosaic GPU interpreter of JAX >= 0.12 (JAX 0.11.2's has "
                           "plgpu.InterpretGPUParams but failed to lower these kernels: 'Cannot lower jaxpr with "
                           "effects', H100 host, 2026-12-07)")
class TestMosaicGpuInterpret(TestMosaicGpuCompiled):
  """The same kernel bodies in Pallas' Mosaic GPU interpreter, on the CPU device (also on a GPU host)."""

  INTERPRET = True

  @pytest.fixture(autouse=True)
  def _needs_backend(self):
    with jax.default_device(jax.devices("cpu")[0]):
      yield


@pytest.mark.parametrize("dtype, head_dim, seq, block_kv, batch, mask_batch", _FORWARD_CASES + _GRADIENT_CASES)
def test_hopper_dispatch_picks_mosaic_for_these_cases(monkeypatch, dtype, head_dim, seq, block_kv, batch,
                                                      mask_batch):
  # What `default_implementation` answers on a Hopper GPU, checked on any host.
  monkeypatch.setattr(ops.compat, "is_hopper", lambda: True)
  assert ops._BACKEND_DEFAULTS["gpu"](dtype, head_dim, _BLOCK_Q, block_kv) == "mosaic_gpu"


def test_hopper_dispatch_sends_what_mosaic_cannot_run_to_triton(monkeypatch):
  monkeypatch.setattr(ops.compat, "is_hopper", lambda: True)
  gpu_default = ops._BACKEND_DEFAULTS["gpu"]
  assert gpu_default(jnp.bfloat16, 64, 64, 64) == "triton"  # 64-row query blocks
  assert gpu_default(jnp.float32, 64, 128, 64) == "triton"
  assert gpu_default(jnp.bfloat16, 96, 128, 64) == "triton"
  monkeypatch.setattr(ops.compat, "is_hopper", lambda: False)
  assert gpu_default(jnp.bfloat16, 64, 128, 64) == "triton"  # not a Hopper GPU
