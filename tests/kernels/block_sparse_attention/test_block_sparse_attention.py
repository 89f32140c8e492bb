"""The public op against the jnp reference: forward, gradients, masks, shapes, errors, recompilation.

In the style of jax's tests/pallas/gpu_ops_test.py: the base class runs the compiled kernels where the hardware is
present (skipped on CPU); subclasses run the same tests on the Pallas bodies in interpret mode on CPU. Shapes stay
small (seq <= 300, blocks 16-64, heads <= 2) so the whole file takes well under a minute on two cores. Query blocks
of 16-64 rows mean the Triton kernels on a GPU, Hopper included; the Mosaic GPU kernels (128-row query blocks, the
H100 default) are tested in test_mosaic_gpu_kernel.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse_attention import block_sparse_attention
from pallas_kernels.block_sparse_attention import block_sparse_attention_reference
from pallas_kernels.block_sparse_attention import kernel_tpu
from pallas_kernels.block_sparse_attention import ops
from support.numerics import as_f32, rel_err

_TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}


def _inputs(seed, batch, seq, heads, head_dim, dtype):
  keys = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(key, (batch, seq, heads, head_dim), jnp.float32).astype(dtype) for key in keys]


def _random_mask(seed, batch, heads, seq, block_q, block_kv, density):
  shape = (batch, heads, math.ceil(seq / block_q), math.ceil(seq / block_kv))
  return jnp.asarray(np.random.default_rng(seed).random(shape) < density)


class TestBlockSparseAttention:
  """Runs the backend's own kernels; needs a GPU."""

  INTERPRET = False

  @property
  def implementation(self):
    return "interpret" if self.INTERPRET else None

  @pytest.fixture(autouse=True)
  def _needs_backend(self):
    if not self.INTERPRET and jax.default_backend() != "gpu":
      pytest.skip("compiled kernels need a GPU; the interpret subclasses cover CPU")

  def _attention(self, q, k, v, mask, **kwargs):
    return block_sparse_attention(q, k, v, mask, implementation=self.implementation, **kwargs)

  @pytest.mark.parametrize(
      "dtype, head_dim, seq, block_q, block_kv, density",
      [
          (jnp.float32, 64, 256, 64, 64, 0.15),
          (jnp.float32, 128, 200, 32, 64, 0.5),
          (jnp.bfloat16, 64, 131, 16, 32, 0.3),
          (jnp.bfloat16, 128, 300, 64, 32, 1.0),
      ],
  )
  def test_forward_matches_reference(self, dtype, head_dim, seq, block_q, block_kv, density):
    q, k, v, _ = _inputs(0, 2, seq, 2, head_dim, dtype)
    mask = _random_mask(1, 2, 2, seq, block_q, block_kv, density)
    out = self._attention(q, k, v, mask, block_q=block_q, block_kv=block_kv)
    ref = block_sparse_attention_reference(*as_f32(q, k, v), mask, block_q=block_q, block_kv=block_kv)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < _TOLERANCE[dtype]

  def test_rows_without_active_block_return_zeros(self):
    q, k, v, _ = _inputs(2, 1, 100, 2, 64, jnp.float32)
    mask = jnp.ones((1, 2, 4, 4), bool).at[0, 1, 2].set(False).at[0, 0].set(False)
    out = np.asarray(self._attention(q, k, v, mask, block_q=32, block_kv=32))
    np.testing.assert_array_equal(out[0, :, 0], 0.0)
    np.testing.assert_array_equal(out[0, 64:96, 1], 0.0)
    assert np.all(np.abs(out[0, :64, 1]).sum(-1) > 0)
    ref = block_sparse_attention_reference(q, k, v, mask, block_q=32, block_kv=32)
    assert rel_err(out, ref) < _TOLERANCE[jnp.float32]

  def test_keys_past_sequence_end_never_count(self):
    # 70 tokens in blocks of 64: the second key block holds 6 real keys; only those may receive weight.
    q, k, v, _ = _inputs(3, 1, 70, 1, 64, jnp.float32)
    mask = jnp.array([[[[False, True], [True, True]]]])
    out = self._attention(q, k, v, mask, block_q=64, block_kv=64)
    only_tail = jax.nn.dot_product_attention(q[:, :64], k[:, 64:], v[:, 64:])
    np.testing.assert_allclose(out[:, :64], only_tail, rtol=1e-4, atol=1e-5)

  def test_custom_scale_and_broadcast_mask(self):
    q, k, v, _ = _inputs(4, 2, 96, 2, 64, jnp.float32)
    mask = _random_mask(5, 1, 2, 96, 32, 32, 0.5)
    out = self._attention(q, k, v, mask, block_q=32, block_kv=32, sm_scale=0.3)
    per_batch = self._attention(q, k, v, jnp.broadcast_to(mask, (2, *mask.shape[1:])), block_q=32, block_kv=32,
                                sm_scale=0.3)
    ref = block_sparse_attention_reference(q, k, v, mask, block_q=32, block_kv=32, sm_scale=0.3)
    assert rel_err(out, ref) < _TOLERANCE[jnp.float32]
    np.testing.assert_allclose(out, per_batch, rtol=1e-6, atol=1e-6)

  @pytest.mark.parametrize(
      "dtype, head_dim, seq, block_q, block_kv, density",
      [
          (jnp.float32, 64, 150, 32, 64, 0.4),
          (jnp.bfloat16, 128, 97, 32, 16, 0.6),
      ],
  )
  def test_gradients_match_reference(self, dtype, head_dim, seq, block_q, block_kv, density):
    q, k, v, do = _inputs(6, 1, seq, 2, head_dim, dtype)
    mask = _random_mask(7, 1, 2, seq, block_q, block_kv, density).at[0, 0, 1].set(False)

    def loss(attention):
      return lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))

    grads = jax.grad(loss(lambda q, k, v: self._attention(q, k, v, mask, block_q=block_q, block_kv=block_kv)),
                     argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(lambda q, k, v: block_sparse_attention_reference(
        q, k, v, mask, block_q=block_q, block_kv=block_kv)), argnums=(0, 1, 2))(*as_f32(q, k, v))
    for grad, ref in zip(grads, ref_grads):
      assert grad.dtype == dtype
      assert rel_err(grad, ref) < 2 * _TOLERANCE[dtype]

  def test_changed_mask_does_not_recompile(self):
    q, k, v, _ = _inputs(8, 1, 128, 2, 64, jnp.float32)
    traces = []

    @jax.jit
    def attend(q, k, v, mask):
      traces.append(1)
      return self._attention(q, k, v, mask, block_q=32, block_kv=32)

    first_mask = _random_mask(9, 1, 2, 128, 32, 32, 0.5)
    second_mask = ~first_mask
    first = attend(q, k, v, first_mask)
    second = attend(q, k, v, second_mask)
    assert len(traces) == 1
    ref = block_sparse_attention_reference(q, k, v, second_mask, block_q=32, block_kv=32)
    assert rel_err(second, ref) < _TOLERANCE[jnp.float32]
    assert not np.allclose(first, second)


class TestBlockSparseAttentionInterpret(TestBlockSparseAttention):
  """The portable Pallas bodies (the Triton backend's) in interpret mode on CPU."""

  INTERPRET = True


def _run_tpu_kernels(monkeypatch, interpret):
  """Routes implementation="tpu" to the Mosaic TPU kernels run by `interpret` (True or pltpu.InterpretParams)."""
  family = ops._KernelFamily(functools.partial(kernel_tpu.forward, interpret=interpret),
                             functools.partial(kernel_tpu.backward, interpret=interpret), ops._whole_blocks)
  monkeypatch.setitem(ops._KERNEL_FAMILIES, "tpu", family)


class TestTpuKernelInterpret(TestBlockSparseAttention):
  """The Mosaic TPU bodies (scalar prefetch) run by the generic Pallas interpreter; no TPU is lent here."""

  INTERPRET = True

  @property
  def implementation(self):
    return "tpu"

  @pytest.fixture(autouse=True)
  def _interpret_tpu_kernels(self, monkeypatch):
    _run_tpu_kernels(monkeypatch, True)


def test_tpu_kernels_under_the_tpu_simulator(monkeypatch):
  # pltpu.InterpretParams() simulates TPU memory spaces, DMAs and semaphores, with the TPU compiler params (grid
  # semantics) the kernels are launched with, reads out of bounds raising and scratch filled with NaN; ~2x slower
  # than the generic interpreter here, so one case: forward (one pallas_call) and gradients (dq and dk/dv calls),
  # a ragged sequence end, a row without active blocks. On the CPU device, also on a GPU host.
  _run_tpu_kernels(monkeypatch, pltpu.InterpretParams())
  with jax.default_device(jax.devices("cpu")[0]):
    q, k, v, do = _inputs(12, 1, 72, 1, 64, jnp.float32)
    mask = _random_mask(13, 1, 1, 72, 32, 32, 0.6).at[0, 0, 1].set(False).at[0, 0, 2, 2].set(True)
    attend = lambda q, k, v: block_sparse_attention(q, k, v, mask, block_q=32, block_kv=32, implementation="tpu")
    reference = lambda q, k, v: block_sparse_attention_reference(q, k, v, mask, block_q=32, block_kv=32)
    assert rel_err(attend(q, k, v), reference(q, k, v)) < _TOLERANCE[jnp.float32]
    loss = lambda attention: lambda q, k, v: jnp.sum(attention(q, k, v) * do)
    grads = jax.grad(loss(attend), argnums=(0, 1, 2))(q, k, v)
    for grad, ref in zip(grads, jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)):
      assert rel_err(grad, ref) < 2 * _TOLERANCE[jnp.float32]


def test_reference_with_full_mask_is_dense_attention():
  q, k, v, _ = _inputs(10, 2, 77, 2, 64, jnp.float32)
  out = block_sparse_attention_reference(q, k, v, jnp.ones((1, 2, 3, 2), bool), block_q=32, block_kv=64,
                                         query_chunk=32)
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_reference_matches_token_mask_attention():
  q, k, v, _ = _inputs(11, 1, 50, 1, 64, jnp.float32)
  mask = jnp.array([[[[True, False], [False, True]]]])  # blocks of 32: two independent halves
  out = block_sparse_attention_reference(q, k, v, mask, block_q=32, block_kv=32)
  token_mask = np.zeros((50, 50), bool)
  token_mask[:32, :32] = token_mask[32:, 32:] = True
  dense = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(token_mask)[None, None])
  np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "q_shape, kv_shape, mask_shape, dtype, match",
    [
        ((1, 64, 2, 32), (1, 60, 2, 32), (1, 2, 2, 2), jnp.float32, r"\(1, 60, 2, 32\)"),
        ((64, 2, 32), (64, 2, 32), (1, 2, 2, 2), jnp.float32, r"\(64, 2, 32\)"),
        ((1, 64, 2, 32), (1, 64, 2, 32), (1, 2, 2, 3), jnp.float32, r"\(1, 2, 2, 3\).*\(1 or 1, 2, 2, 2\)"),
        ((2, 64, 2, 32), (2, 64, 2, 32), (3, 2, 2, 2), jnp.float32, r"\(3, 2, 2, 2\)"),
        ((1, 64, 2, 32), (1, 64, 2, 32), (1, 2, 2, 2), jnp.int32, r"int32.*\(1, 64, 2, 32\)"),
    ],
)
def test_bad_inputs_raise_value_error_naming_shapes(q_shape, kv_shape, mask_shape, dtype, match):
  q = jnp.zeros(q_shape, dtype)
  k = v = jnp.zeros(kv_shape, dtype)
  with pytest.raises(ValueError, match=match):
    block_sparse_attention(q, k, v, jnp.ones(mask_shape, bool), block_q=32, block_kv=32)


def test_non_bool_mask_and_unknown_implementation_raise():
  q = jnp.zeros((1, 64, 2, 32))
  with pytest.raises(ValueError, match=r"bool.*\(1, 2, 2, 2\)"):
    block_sparse_attention(q, q, q, jnp.ones((1, 2, 2, 2), jnp.int32), block_q=32, block_kv=32)
  with pytest.raises(ValueError, match=r"'cuda'.*\(1, 64, 2, 32\)"):
    block_sparse_attention(q, q, q, jnp.ones((1, 2, 2, 2), bool), block_q=32, block_kv=32, implementation="cuda")
  with pytest.raises(ValueError, match=r"mosaic_gpu.*\(1, 64, 2, 32\)"):
    block_sparse_attention(q, q, q, jnp.ones((1, 2, 2, 2), bool), block_q=32, block_kv=32,
                           implementation="mosaic_gpu")
