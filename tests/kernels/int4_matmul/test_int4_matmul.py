"""int4 matmul: the spec (pack, quantize) checked by hand, and every kernel checked against `reference.py`.

Kernel tests follow jax's tests/pallas/gpu_ops_test.py: a base class names the implementation, subclasses run the
GPU (Triton-lowered and Mosaic GPU) and TPU (Mosaic) kernel bodies in interpret mode on CPU. Shapes stay small
(M <= 128, K, N <= 256) so the whole file runs in well under a minute on two cores.
"""

import dataclasses
import unittest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import int4_matmul as im
from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.int4_matmul import kernel_gpu
from pallas_kernels.int4_matmul import kernel_mosaic_gpu
from pallas_kernels.int4_matmul import ops
from pallas_kernels.int4_matmul import quantize_mosaic_gpu
from pallas_kernels.int4_matmul import reference
from pallas_kernels.int4_matmul import tuning
from pallas_kernels.int4_matmul import w4a16_mosaic_gpu


def _random(seed, shape, outliers=True):
  """Normal data with a few large channels (the activation outliers SVDQuant deals with)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(np.float32)
  if outliers:
    x[..., rng.choice(shape[-1], max(1, shape[-1] // 32), replace=False)] *= 25.0
  return jnp.asarray(x)


def _relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


class SpecTest(unittest.TestCase):

  def test_pack_layout_by_hand(self):
    q = jnp.array([[1, -2, 7, -8]], jnp.int8)
    packed = im.pack_int4(q)
    # element 0 (1 = 0x1) low, element 1 (-2 = 0xE) high -> 0xE1; 7 = 0x7 low, -8 = 0x8 high -> 0x87
    np.testing.assert_array_equal(packed, np.array([[0xE1, 0x87]], np.uint8))

  def test_pack_unpack_round_trip_every_code_both_axes(self):
    codes = jnp.asarray(np.random.default_rng(0).integers(-8, 8, (6, 10)), jnp.int8)
    for axis in (0, 1):
      packed = im.pack_int4(codes, axis=axis)
      self.assertEqual(packed.shape[axis], codes.shape[axis] // 2)
      np.testing.assert_array_equal(im.unpack_int4(packed, axis=axis), codes)
    unsigned = jnp.asarray(np.arange(16).reshape(2, 8), jnp.int8)
    np.testing.assert_array_equal(im.unpack_int4(im.pack_int4(unsigned), signed=False), unsigned)

  def test_quantize_matches_hand_computation(self):
    # group 0: max|x| = 7 -> scale 1; 2.5 and -2.5 round half to even (2, -2), 3.5 -> 4.
    # group 1: all zeros -> scale 0, codes 0.
    group0 = np.zeros(64, np.float32)
    group0[:5] = [7.0, 2.5, -2.5, 3.5, -7.0]
    x = jnp.asarray(np.concatenate([group0, np.zeros(64, np.float32)])[None])
    packed, scales = im.quantize_int4(x)
    np.testing.assert_array_equal(scales, [[1.0, 0.0]])
    codes = np.asarray(im.unpack_int4(packed))
    np.testing.assert_array_equal(codes[0, :5], [7, 2, -2, 4, -7])
    self.assertFalse(codes[0, 5:].any())

  def test_quantize_equals_spec_bit_for_bit(self):
    x = _random(1, (8, 256))
    packed, scales = im.quantize_int4(x, group_size=64, axis=-1)
    groups = np.asarray(x, np.float32).reshape(8, 4, 64)
    want_scales = np.max(np.abs(groups), axis=-1) * np.float32(1 / 7)
    want_codes = np.clip(np.round(groups / want_scales[..., None]), -8, 7).astype(np.int8).reshape(8, 256)
    np.testing.assert_array_equal(scales, want_scales)
    np.testing.assert_array_equal(im.unpack_int4(packed), want_codes)

  def test_quantize_along_axis_zero_for_weights(self):
    w = _random(2, (128, 32))
    packed, scales = im.quantize_int4(w, axis=0)
    self.assertEqual((packed.shape, scales.shape), ((64, 32), (2, 32)))
    np.testing.assert_array_equal(im.unpack_int4(packed, axis=0).T,
                                  im.unpack_int4(im.quantize_int4(w.T)[0]))

  def test_unsigned_quantize(self):
    x = jnp.abs(_random(3, (4, 128)))
    packed, scales = im.quantize_uint4(x)
    codes = np.asarray(im.unpack_int4(packed, signed=False))
    self.assertEqual((codes.min(), codes.max()), (0, 15))
    np.testing.assert_array_equal(scales, np.asarray(x).reshape(4, 2, 64).max(-1) * np.float32(1 / 15))

  def test_dequantize_error_is_at_most_half_a_step(self):
    x = _random(4, (16, 128))
    packed, scales = im.quantize_int4(x)
    error = np.abs(np.asarray(im.dequantize_int4(packed, scales)) - np.asarray(x))
    self.assertTrue(np.all(error <= np.repeat(np.asarray(scales), 64, axis=1) / 2 + 1e-6))

  def test_bad_inputs_raise_naming_shapes(self):
    with self.assertRaisesRegex(ValueError, r"\(3, 5\)"):
      im.pack_int4(jnp.zeros((3, 5), jnp.int8))
    with self.assertRaisesRegex(ValueError, r"\(2, 100\)"):
      im.quantize_int4(jnp.zeros((2, 100)))


class MatmulTestBase(unittest.TestCase):
  """Every public op against reference.py; subclasses choose the implementation."""

  IMPLEMENTATION = "reference"
  M, K, N, RANK = 40, 256, 192, 20
  TOLERANCE = 1e-5  # float32 data: only summation order differs from the reference
  LOWRANK_TOLERANCE = 1e-5  # the same, for outputs that include the low-rank branch

  def setUp(self):
    super().setUp()
    self.x = _random(10, (self.M, self.K))
    w = _random(11, (self.K, self.N), outliers=False)
    self.w_packed, self.w_scales = im.quantize_int4(w, axis=0)
    self.w8, self.w8_scales = im.quantize_int8_weight(w)
    self.down = _random(12, (self.K, self.RANK), outliers=False) / 16
    self.up = _random(13, (self.RANK, self.N), outliers=False) / 4
    self.smooth = jnp.asarray(np.random.default_rng(14).uniform(0.5, 4.0, self.K), jnp.float32)
    self.bias = _random(15, (self.N,), outliers=False)

  def assert_close(self, got, want):
    self.assertEqual(got.shape, want.shape)
    self.assertEqual(got.dtype, want.dtype)
    self.assertLess(_relative_error(got, want), self.TOLERANCE)

  def test_w4a4_with_lowrank_smooth_bias(self):
    kwargs = dict(lowrank_down=self.down, lowrank_up=self.up, smooth=self.smooth, bias=self.bias)
    got = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION, **kwargs)
    want = reference.w4a4_matmul(self.x, self.w_packed, self.w_scales, **kwargs)
    self.assertEqual((got.shape, got.dtype), (want.shape, want.dtype))
    self.assertLess(_relative_error(got, want), self.LOWRANK_TOLERANCE)

  def test_w4a4_fused_lowrank_equals_unfused(self):
    fused = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, lowrank_down=self.down, lowrank_up=self.up,
                           implementation=self.IMPLEMENTATION)
    plain = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION)
    low = reference._dot(reference._dot(self.x, self.down), self.up)
    self.assertLess(_relative_error(fused, plain + low), self.LOWRANK_TOLERANCE)

  def test_w4a4_unsigned_activations(self):
    x = jnp.abs(self.x)
    got = im.w4a4_matmul(x, self.w_packed, self.w_scales, activations_signed=False,
                         implementation=self.IMPLEMENTATION)
    want = reference.w4a4_matmul(x, self.w_packed, self.w_scales, activations_signed=False)
    self.assert_close(got, want)

  def test_w4a4_bf16_any_m(self):
    x = self.x[:7].astype(jnp.bfloat16)
    got = im.w4a4_matmul(x, self.w_packed, self.w_scales, bias=self.bias, implementation=self.IMPLEMENTATION)
    want = reference.w4a4_matmul(x, self.w_packed, self.w_scales, bias=self.bias)
    self.assertEqual(got.dtype, jnp.bfloat16)
    self.assertLess(_relative_error(got, want), 1e-2)

  def test_w4a16(self):
    got = im.w4a16_matmul(self.x, self.w_packed, self.w_scales, bias=self.bias, implementation=self.IMPLEMENTATION)
    # The kernels dequantize weights into the activation dtype (exact for f32 codes * scales).
    self.assert_close(got, reference.w4a16_matmul(self.x, self.w_packed, self.w_scales, bias=self.bias))

  def test_w4a16_single_token_bf16(self):
    x = self.x[:1].astype(jnp.bfloat16)
    got = im.w4a16_matmul(x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION)
    self.assertLess(_relative_error(got, reference.w4a16_matmul(x, self.w_packed, self.w_scales)), 1e-2)

  def test_w8a8(self):
    got = im.w8a8_matmul(self.x, self.w8, self.w8_scales, bias=self.bias, implementation=self.IMPLEMENTATION)
    self.assert_close(got, reference.w8a8_matmul(self.x, self.w8, self.w8_scales, bias=self.bias))

  def test_quantization_error_is_small_against_float(self):
    got = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION)
    exact = self.x @ reference.dequantize_int4(self.w_packed, self.w_scales, axis=0)
    self.assertLess(_relative_error(got, exact), 0.2)  # 4-bit activations with outliers, no smoothing

  def test_bad_shapes_and_dtypes_raise_naming_them(self):
    impl = self.IMPLEMENTATION
    with self.assertRaisesRegex(ValueError, r"\(40, 256\).*int32"):
      im.w4a4_matmul(self.x.astype(jnp.int32), self.w_packed, self.w_scales, implementation=impl)
    with self.assertRaisesRegex(ValueError, rf"\(40, 96\).*\(128, {self.N}\)"):
      im.w4a16_matmul(self.x[:, :96], self.w_packed, self.w_scales, implementation=impl)
    with self.assertRaisesRegex(ValueError, r"\(128, 160\)"):
      im.w4a4_matmul(self.x, jnp.zeros((128, 160), jnp.uint8), self.w_scales, implementation=impl)
    with self.assertRaisesRegex(ValueError, rf"lowrank_up.*\(20, {self.N}\).*\(20, 64\)"):
      im.w4a4_matmul(self.x, self.w_packed, self.w_scales, lowrank_down=self.down, lowrank_up=self.up[:, :64],
                     implementation=impl)
    with self.assertRaisesRegex(ValueError, rf"w_codes.*\(256, {self.N}\).*int32"):
      im.w8a8_matmul(self.x, self.w8.astype(jnp.int32), self.w8_scales, implementation=impl)
    with self.assertRaisesRegex(ValueError, "group_size"):
      im.w4a4_matmul(self.x, self.w_packed, self.w_scales, group_size=48, implementation=impl)


class _OnCpu:
  """Runs a test's arrays and interpreted kernels on the CPU device, also in a process whose default is a GPU.

  The Triton kernels' bodies interpreted with GPU arrays give wrong activation codes (XLA's GPU compilation of the
  interpreted body rewrites the int32 -> int8 narrowing of the rounded codes; experiments/bench/int4_matmul_notes.md).
  Interpret mode is a CPU debugging tool, so these tests check it there; the compiled kernels have their own tests.
  """

  def setUp(self):
    self.enterContext(jax.default_device(jax.devices("cpu")[0]))
    super().setUp()


class GpuInterpretTest(_OnCpu, MatmulTestBase):
  IMPLEMENTATION = "pallas_gpu_interpret"


class TpuInterpretTest(MatmulTestBase):
  IMPLEMENTATION = "pallas_tpu_interpret"


_MOSAIC_INTERPRETER = hasattr(plgpu, "InterpretGPUParams")
_NO_MOSAIC_INTERPRETER = "this JAX has no Mosaic GPU interpreter (plgpu.InterpretGPUParams, JAX >= 0.12)"


class _MosaicGpuShapes:
  """One 128 x 128 output tile: the interpreter reliably runs one CTA, and on two cores it can deadlock on grids of
  several (its simulated warpgroups wait on each other)."""

  N = 128
  LOWRANK_TOLERANCE = 5e-3  # the low-rank branch runs in bf16 on the tensor cores, also for float32 inputs

  def test_w4a4_e4m3_codes_give_the_int8_result(self):
    run = lambda code_dtype: im.w4a4_matmul(
        self.x, self.w_packed, self.w_scales, bias=self.bias, implementation=self.IMPLEMENTATION,
        block_sizes=dataclasses.replace(tuning.MOSAIC_DEFAULT, code_dtype=code_dtype))
    np.testing.assert_allclose(run("float8_e4m3fn"), run("int8"), rtol=1e-6, atol=1e-5)

  def test_w4a4_with_the_fused_quantize_kernel(self):
    # bf16 activations (the fused kernel's input), smoothing, the rank-20 branch padded to 64, both code forms.
    x = self.x.astype(jnp.bfloat16)
    kwargs = dict(lowrank_down=self.down, lowrank_up=self.up, smooth=self.smooth, bias=self.bias)
    want = reference.w4a4_matmul(x, self.w_packed, self.w_scales, **kwargs).astype(jnp.float32)
    for code_dtype in ("int8", "float8_e4m3fn"):
      blocks = dataclasses.replace(tuning.MOSAIC_DEFAULT, code_dtype=code_dtype, fused_quantize=True)
      got = im.w4a4_matmul(x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION, block_sizes=blocks,
                           **kwargs)
      self.assertEqual((got.shape, got.dtype), (x.shape[:1] + (self.N,), jnp.bfloat16))
      self.assertLess(_relative_error(got, want), 1e-2, code_dtype)  # bf16 output and low-rank operands
      plain = im.w4a4_matmul(x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION,
                             block_sizes=dataclasses.replace(blocks, fused_quantize=False), **kwargs)
      self.assertLess(_relative_error(got, plain), 5e-3, code_dtype)

  def test_w4a16_with_the_mosaic_kernel(self):
    # bf16 activations, 1 and 40 tokens (x padded to the 64-row wgmma tile), K split in two, bias added after.
    blocks = dataclasses.replace(tuning.MOSAIC_DEFAULT, mosaic_w4a16=True)
    for m in (1, self.M):
      x = self.x[:m].astype(jnp.bfloat16)
      got = im.w4a16_matmul(x, self.w_packed, self.w_scales, bias=self.bias, implementation=self.IMPLEMENTATION,
                            block_sizes=blocks)
      self.assertEqual((got.shape, got.dtype), ((m, self.N), jnp.bfloat16))
      want = reference.w4a16_matmul(x, self.w_packed, self.w_scales, bias=self.bias)
      self.assertLess(_relative_error(got, want), 1e-2, m)  # weights and output rounded to bf16

  def test_n_not_a_multiple_of_128_goes_to_the_triton_kernels(self):
    w_packed, w_scales = im.quantize_int4(_random(16, (self.K, 192), outliers=False), axis=0)
    got = im.w4a4_matmul(self.x, w_packed, w_scales, implementation=self.IMPLEMENTATION)
    self.assertLess(_relative_error(got, reference.w4a4_matmul(self.x, w_packed, w_scales)), 1e-5)


@unittest.skipUnless(_MOSAIC_INTERPRETER, _NO_MOSAIC_INTERPRETER)
class MosaicGpuInterpretTest(_OnCpu, _MosaicGpuShapes, MatmulTestBase):
  IMPLEMENTATION = "mosaic_gpu_interpret"


@unittest.skipUnless(compat.is_hopper(),
                     "compiled Mosaic GPU kernels need a Hopper GPU; MosaicGpuInterpretTest covers CPU")
class MosaicGpuCompiledTest(_MosaicGpuShapes, MatmulTestBase):
  IMPLEMENTATION = "mosaic_gpu"

  def test_persistent_ctas_give_the_per_tile_result(self):
    # 12 x 12 output tiles of 128 x 128 on 132 SMs: twelve CTAs compute two tiles each.
    x = _random(20, (1536, 256)).astype(jnp.bfloat16)
    w_packed, w_scales = im.quantize_int4(_random(21, (256, 1536), outliers=False), axis=0)
    kwargs = dict(lowrank_down=_random(22, (256, 32)) / 16, lowrank_up=_random(23, (32, 1536)) / 4,
                  bias=_random(24, (1536,)), implementation=self.IMPLEMENTATION)
    blocks = tuning.block_sizes("w4a4", 1536, jax.devices()[0].device_kind, "mosaic_gpu")
    per_tile = im.w4a4_matmul(x, w_packed, w_scales, block_sizes=dataclasses.replace(blocks, persistent=False),
                              **kwargs)
    persistent = im.w4a4_matmul(x, w_packed, w_scales, block_sizes=dataclasses.replace(blocks, persistent=True),
                                **kwargs)
    np.testing.assert_array_equal(persistent, per_tile)


def _quantize_inputs(k=256, rank=64, seed=30):
  """bf16 activations [128, k] with ties at .5 and a zero group, a smoothing row [1, k], a bf16 down-projection."""
  x = _random(seed, (128, k)).astype(jnp.bfloat16)
  x = x.at[0, :8].set(jnp.asarray([7.0, 2.5, -2.5, 3.5, -0.5, 0.5, 1.5, -1.5], jnp.bfloat16))  # ties at .5
  x = x.at[1, :64].set(0.0)  # a zero group: scale 0, codes 0
  smooth = jnp.asarray(np.random.default_rng(seed).uniform(0.5, 4.0, (1, k)), jnp.float32)
  down = (_random(seed + 1, (k, rank), outliers=False) / 16).astype(jnp.bfloat16)
  return x, smooth, down


class _MosaicGpuQuantizeChecks:
  """`quantize_mosaic_gpu.quantize_activations` against the spec bit for bit."""

  def test_codes_and_scales_are_the_spec_bit_for_bit_and_low_is_x_at_down(self):
    x, smooth, down = _quantize_inputs()
    for code_dtype, signed, with_smooth, k_splits in ((jnp.int8, True, True, 1), (jnp.float8_e4m3fn, True, False, 2),
                                                      (jnp.float8_e4m3fn, False, True, 4)):
      s = smooth if with_smooth else None
      source = jnp.abs(x) if not signed else x
      codes, scales, low = quantize_mosaic_gpu.quantize_activations(
          source, reference.smoothing_reciprocal(s), down, code_dtype=code_dtype, signed=signed, stages=2,
          k_splits=k_splits, interpret=self.INTERPRET)
      want_codes, want_scales = reference.quantize_activations(source, None if s is None else s[0], 64, signed)
      self.assertEqual(codes.dtype, jnp.dtype(code_dtype))
      np.testing.assert_array_equal(codes.astype(jnp.float32), want_codes.astype(jnp.float32))
      np.testing.assert_array_equal(scales, want_scales.T)
      self.assertEqual(low.shape, (k_splits, 128, down.shape[1]))
      self.assertLess(_relative_error(low.sum(0), reference._dot(source, down)), 1e-5)  # float32 partial sums

  def test_without_the_low_rank_branch(self):
    x, smooth, _ = _quantize_inputs(k=128)
    codes, scales, low = quantize_mosaic_gpu.quantize_activations(x, reference.smoothing_reciprocal(smooth), None,
                                                                  code_dtype=jnp.int8, stages=2,
                                                                  interpret=self.INTERPRET)
    want_codes, want_scales = reference.quantize_activations(x, smooth[0], 64)
    self.assertIsNone(low)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(scales, want_scales.T)


@unittest.skipUnless(_MOSAIC_INTERPRETER and jax.default_backend() == "cpu",
                     "interpreted on a CPU-only host: on an H100 host the interpreted codes differed from the CPU "
                     "reference at 3 of 32768 near-tie elements (GPU division); MosaicGpuQuantizeCompiledTest runs "
                     "there")
class MosaicGpuQuantizeInterpretTest(_OnCpu, _MosaicGpuQuantizeChecks, unittest.TestCase):
  INTERPRET = True


class MosaicGpuQuantizeTest(unittest.TestCase):
  """The kernel lowered for CUDA, and its input checks."""

  def test_lowers_for_cuda(self):
    # The whole Mosaic GPU lowering runs on the CPU; only ptxas needs the GPU.
    x, smooth, down = _quantize_inputs(k=512)
    for code_dtype in (jnp.int8, jnp.float8_e4m3fn):
      fn = lambda x, s, d, c=code_dtype: quantize_mosaic_gpu.quantize_activations(x, s, d, code_dtype=c)
      jax.jit(fn).trace(x, smooth, down).lower(lowering_platforms=("cuda",))

  def test_ring_depth_fits_shared_memory_and_bad_inputs_are_named(self):
    self.assertEqual(quantize_mosaic_gpu.deepest_ring(4, 64), 4)
    self.assertEqual(quantize_mosaic_gpu.deepest_ring(8, 128), 4)  # 4 x 32.25 KB of ring + 81 KB of outputs
    self.assertFalse(quantize_mosaic_gpu.fits(256))  # the float32 tiles of x @ down alone take 128 KB
    self.assertEqual(quantize_mosaic_gpu.filling_splits(4096, 3072), 4)  # 32 row tiles x 4 <= 132 SMs
    self.assertEqual(quantize_mosaic_gpu.filling_splits(4608, 3072), 3)  # 36 x 3 (48 steps: 4 would be 144)
    self.assertEqual(quantize_mosaic_gpu.filling_splits(128, 3072), 48)  # one step per CTA
    self.assertEqual(quantize_mosaic_gpu.filling_splits(32768, 3072), 1)
    x, smooth, down = _quantize_inputs()
    with self.assertRaisesRegex(ValueError, r"bf16 x.*float32 \(128, 256\)"):
      quantize_mosaic_gpu.quantize_activations(x.astype(jnp.float32), smooth, down, code_dtype=jnp.int8)
    with self.assertRaisesRegex(ValueError, r"down must be.*\(256, 20\)"):
      quantize_mosaic_gpu.quantize_activations(x, smooth, down[:, :20], code_dtype=jnp.int8)
    with self.assertRaisesRegex(ValueError, "k_splits must divide the 4 K steps of 64, got 3"):
      quantize_mosaic_gpu.quantize_activations(x, smooth, down, code_dtype=jnp.int8, k_splits=3)
    with self.assertRaisesRegex(ValueError, "shared memory"):
      quantize_mosaic_gpu.quantize_activations(x, smooth, jnp.zeros((256, 1024), jnp.bfloat16), code_dtype=jnp.int8,
                                               stages=8)


class MosaicGpuW4A16Test(unittest.TestCase):
  """`w4a16_mosaic_gpu`: the x reordering, the lowering for CUDA, and its input checks."""

  def _operands(self, m=5, k=256, n=128):
    x = _random(40, (m, k)).astype(jnp.bfloat16)
    w_packed, w_scales = im.quantize_int4(_random(41, (k, n), outliers=False), axis=0)
    return x, w_packed, w_scales

  def test_interleaved_x_puts_even_then_odd_k_of_each_128_block_and_pads_rows(self):
    x = jnp.stack([jnp.arange(256.0), -jnp.arange(256.0)])  # integers below 256: exact in bf16
    got = np.asarray(w4a16_mosaic_gpu.interleaved_x(x), np.float32)
    self.assertEqual(got.shape, (64, 256))
    np.testing.assert_array_equal(got[0, :128], np.r_[0:128:2, 1:128:2])
    np.testing.assert_array_equal(got[1, 128:], -np.r_[128:256:2, 129:256:2])
    self.assertFalse(got[2:].any())

  def test_lowers_for_cuda(self):
    x, w_packed, w_scales = self._operands()
    fn = lambda x, w, s: w4a16_mosaic_gpu.w4a16_partials(w4a16_mosaic_gpu.interleaved_x(x), w, s, out_rows=8,
                                                          k_splits=2)
    jax.jit(fn).trace(x, w_packed, w_scales).lower(lowering_platforms=("cuda",))

  def test_fills_the_gpu_and_bad_inputs_are_named(self):
    self.assertEqual(w4a16_mosaic_gpu.filling_splits(3072, 3072), 4)  # 24 column tiles x 4 of 24 K steps
    self.assertEqual(w4a16_mosaic_gpu.filling_splits(12288, 3072), 1)  # 96 tiles already
    self.assertFalse(w4a16_mosaic_gpu.supports(65, 256, 128, 64))
    x, w_packed, w_scales = self._operands()
    xi = w4a16_mosaic_gpu.interleaved_x(x)
    with self.assertRaisesRegex(ValueError, r"x must be bf16 \[64, K\].*\(5, 256\)"):
      w4a16_mosaic_gpu.w4a16_partials(x, w_packed, w_scales, out_rows=8, k_splits=1)
    with self.assertRaisesRegex(ValueError, r"w_packed must be uint8.*\(128, 64\)"):
      w4a16_mosaic_gpu.w4a16_partials(xi, w_packed[:, :64], w_scales, out_rows=8, k_splits=1)
    with self.assertRaisesRegex(ValueError, "k_splits must divide the 2 K steps of 128, got 3"):
      w4a16_mosaic_gpu.w4a16_partials(xi, w_packed, w_scales, out_rows=8, k_splits=3)
    with self.assertRaisesRegex(ValueError, "out_rows must be a multiple of 8"):
      w4a16_mosaic_gpu.w4a16_partials(xi, w_packed, w_scales, out_rows=5, k_splits=1)


@unittest.skipUnless(compat.is_hopper(), "compiled Mosaic GPU kernels need a Hopper GPU")
class MosaicGpuQuantizeCompiledTest(_MosaicGpuQuantizeChecks, unittest.TestCase):
  """The kernel compiled: the GPU's division and rounding give the spec's codes too."""

  INTERPRET = False


@unittest.skipUnless(_MOSAIC_INTERPRETER, _NO_MOSAIC_INTERPRETER)
class MosaicGpuKernelTest(unittest.TestCase):
  """`kernel_mosaic_gpu.grouped_gemm` against a per-group einsum, for both 8-bit forms of the codes."""

  def _operands(self, k, group_size, signed_codes=True):
    rng = np.random.default_rng(k + group_size)
    a = rng.integers(-8, 8 if signed_codes else 16, (128, k)).astype(np.int8)
    b = rng.integers(-8, 8, (128, k)).astype(np.int8)
    a_scales = rng.uniform(0.01, 2.0, (k // group_size, 128)).astype(np.float32)
    b_scales = rng.uniform(0.01, 2.0, (k // group_size, 128)).astype(np.float32)
    return a, b, a_scales, b_scales

  @staticmethod
  def _expected(a, b, a_scales, b_scales, group_size):
    m, k = a.shape
    groups = k // group_size
    per_group = np.einsum("mgk,ngk->gmn", a.reshape(m, groups, group_size).astype(np.float64),
                          b.reshape(b.shape[0], groups, group_size).astype(np.float64))
    return np.einsum("gmn,gm,gn->mn", per_group, a_scales, b_scales)

  def test_int8_and_e4m3_codes_give_the_per_group_sum(self):
    # The group loop runs in pairs: 4 groups (one before the loop, one pair), 5 (two pairs), 2 (no pair).
    for k, group_size, signed, dtypes in ((256, 64, True, (jnp.int8, jnp.float8_e4m3fn)),
                                          (320, 64, False, (jnp.float8_e4m3fn,)),
                                          (256, 128, False, (jnp.int8, jnp.float8_e4m3fn))):
      a, b, a_scales, b_scales = self._operands(k, group_size, signed)
      want = self._expected(a, b, a_scales, b_scales, group_size)
      for dtype in dtypes:
        with self.subTest(k=k, group_size=group_size, dtype=jnp.dtype(dtype).name):
          got = kernel_mosaic_gpu.grouped_gemm(
              jnp.asarray(a).astype(dtype), jnp.asarray(b).astype(dtype), a_scales, b_scales, None, None, None,
              group_size=group_size, out_dtype=jnp.float32, tile_n=128, stages=2, interpret=True)
          self.assertLess(_relative_error(got, want), 1e-6)

  def test_low_rank_and_bias_start_the_sum_and_one_group_spans_k(self):
    a, b, a_scales, b_scales = self._operands(192, 192)
    rng = np.random.default_rng(7)
    low = jnp.asarray(rng.standard_normal((128, 64)), jnp.bfloat16)
    up = jnp.asarray(rng.standard_normal((64, 128)), jnp.bfloat16)
    bias = jnp.asarray(rng.standard_normal(128), jnp.float32)
    got = kernel_mosaic_gpu.grouped_gemm(jnp.asarray(a), jnp.asarray(b), a_scales, b_scales, low, up, bias,
                                         group_size=192, out_dtype=jnp.float32, tile_n=128, stages=2, interpret=True)
    want = (self._expected(a, b, a_scales, b_scales, 192) + np.asarray(bias)
            + np.asarray(low, np.float64) @ np.asarray(up, np.float64))
    self.assertLess(_relative_error(got, want), 1e-6)

  def test_a_persistent_cta_walks_several_tiles_with_one_ring(self):
    # One CTA, 2 x 2 output tiles of 128 x 128: the ring (3 slots, 2 steps a tile) runs on across tiles, and each
    # tile reloads its own low-rank rows, up-projection columns and bias. Fewer steps a tile than slots: the first
    # tile leaves a slot unused, whose first fill must not wait for a release (that hung an H100).
    rng = np.random.default_rng(8)
    a = rng.integers(-8, 8, (256, 128)).astype(np.int8)
    b = rng.integers(-8, 8, (256, 128)).astype(np.int8)
    a_scales = rng.uniform(0.01, 2.0, (2, 256)).astype(np.float32)
    b_scales = rng.uniform(0.01, 2.0, (2, 256)).astype(np.float32)
    low = jnp.asarray(rng.standard_normal((256, 64)), jnp.bfloat16)
    up = jnp.asarray(rng.standard_normal((64, 256)), jnp.bfloat16)
    bias = jnp.asarray(rng.standard_normal(256), jnp.float32)
    want = (self._expected(a, b, a_scales, b_scales, 64) + np.asarray(bias)
            + np.asarray(low, np.float64) @ np.asarray(up, np.float64))
    got = kernel_mosaic_gpu.grouped_gemm(
        jnp.asarray(a).astype(jnp.float8_e4m3fn), jnp.asarray(b).astype(jnp.float8_e4m3fn), a_scales, b_scales, low,
        up, bias, group_size=64, out_dtype=jnp.float32, tile_n=128, stages=3, ctas=1, interpret=True)
    self.assertLess(_relative_error(got, want), 1e-6)
    with self.assertRaisesRegex(ValueError, "ctas must be between 1 and the 4 output tiles, got 5"):
      kernel_mosaic_gpu.grouped_gemm(jnp.asarray(a), jnp.asarray(b), a_scales, b_scales, None, None, None,
                                     group_size=64, out_dtype=jnp.float32, tile_n=128, stages=3, ctas=5)

  def test_ring_depth_fits_shared_memory(self):
    # 8 steps of 128 x 64 codes for a and b plus their scale rows: 8 * (2 * 8192 + 1024) bytes; two 64 x 128 bf16
    # output tiles; per warpgroup low [64, 64] and up [64, 128] in bf16 and a float32 bias row.
    self.assertEqual(kernel_mosaic_gpu.shared_memory_bytes(8, 128, 64, True),
                     8 * (2 * 8192 + 1024) + 2 * 64 * 128 * 2 + 2 * (64 * 64 * 2 + 64 * 128 * 2 + 128 * 4))
    self.assertEqual(kernel_mosaic_gpu.deepest_ring(8, 128, 64, True), 8)  # 222208 bytes fit
    self.assertEqual(kernel_mosaic_gpu.deepest_ring(8, 128, 128, True), 5)  # rank 128 takes three slots
    a, b, a_scales, b_scales = (jnp.asarray(v) for v in self._operands(128, 64))
    low, up = jnp.zeros((128, 128), jnp.bfloat16), jnp.zeros((128, 128), jnp.bfloat16)
    with self.assertRaisesRegex(ValueError, r"8 stages with tile_n=128, rank 128 .* more than 232448"):
      kernel_mosaic_gpu.grouped_gemm(a, b, a_scales, b_scales, low, up, None, group_size=64, out_dtype=jnp.bfloat16,
                                     tile_n=128, stages=8, interpret=True)

  def test_codes_assembled_as_e4m3_equal_the_conversion(self):
    codes = jnp.arange(-8, 16, dtype=jnp.int8)
    got = ops.codes_as(codes, jnp.dtype(jnp.float8_e4m3fn))
    np.testing.assert_array_equal(jax.lax.bitcast_convert_type(got, jnp.uint8),
                                  jax.lax.bitcast_convert_type(codes.astype(jnp.float8_e4m3fn), jnp.uint8))

  def test_bad_operands_raise_naming_them(self):
    a, b, a_scales, b_scales = (jnp.asarray(v) for v in self._operands(128, 64))
    run = lambda *args, **kw: kernel_mosaic_gpu.grouped_gemm(
        *args, group_size=kw.pop("group_size", 64), out_dtype=jnp.float32, tile_n=kw.pop("tile_n", 128),
        stages=kw.pop("stages", 2), interpret=True)
    with self.assertRaisesRegex(ValueError, "int8 and float8_e4m3fn"):
      run(a, b.astype(jnp.float8_e4m3fn), a_scales, b_scales, None, None, None)
    with self.assertRaisesRegex(ValueError, r"tile_n=96.*\(128, 128\)"):
      run(a, b, a_scales, b_scales, None, None, None, tile_n=96)
    with self.assertRaisesRegex(ValueError, "at least 2 stages"):
      run(a, b, a_scales, b_scales, None, None, None, stages=1)
    with self.assertRaisesRegex(ValueError, r"multiple of 64.*\(128, 32\)"):
      run(a, b, a_scales, b_scales, jnp.zeros((128, 32), jnp.bfloat16), jnp.zeros((32, 128), jnp.bfloat16), None)


class GpuKernelPiecesTest(_OnCpu, unittest.TestCase):
  """The GPU kernels called directly: exact quantization, K splits, tilings the public defaults do not reach."""

  def test_quantize_kernel_bit_exact_and_fused_down_projection(self):
    x = _random(20, (32, 256))
    # a group with scale exactly 1 and ties at .5 on both halves: rounding must be half to even
    ties = np.zeros(64, np.float32)
    ties[:8] = [7.0, 2.5, -2.5, 3.5, -0.5, 0.5, 1.5, -1.5]
    x = x.at[0, :64].set(ties)
    down = _random(21, (256, 16), outliers=False)
    blocks = tuning.BlockSizes(quantize_block_m=16, quantize_block_k=128)
    codes, scales, low = kernel_gpu.quantize_activations_int4(x, None, down, group_size=64, signed=True,
                                                              blocks=blocks, interpret=True)
    want_codes, want_scales = reference.quantize_codes(x, 64)
    # kernel layout: within each group, the 32 even-K codes then the 32 odd-K ones
    halves = np.asarray(want_codes).reshape(32, 4, 32, 2).transpose(0, 1, 3, 2).reshape(32, 256)
    np.testing.assert_array_equal(codes, halves)
    np.testing.assert_array_equal(scales, want_scales)
    self.assertLess(_relative_error(low, reference._dot(x, down)), 1e-5)

  def test_k_splits_and_tilings(self):
    x = _random(22, (64, 256))
    w_packed, w_scales = im.quantize_int4(_random(23, (256, 128), outliers=False), axis=0)
    want4 = reference.w4a4_matmul(x, w_packed, w_scales)
    want16 = reference.w4a16_matmul(x, w_packed, w_scales)
    for blocks in (tuning.BlockSizes(block_m=16, block_n=64, block_k=128, k_splits=2),
                   tuning.BlockSizes(block_m=32, block_n=128, block_k=64, k_splits=4, quantize_block_m=32)):
      with self.subTest(blocks=blocks):
        got4 = im.w4a4_matmul(x, w_packed, w_scales, implementation="pallas_gpu_interpret", block_sizes=blocks)
        got16 = im.w4a16_matmul(x, w_packed, w_scales, implementation="pallas_gpu_interpret", block_sizes=blocks)
        self.assertLess(_relative_error(got4, want4), 1e-5)
        self.assertLess(_relative_error(got16, want16), 1e-5)

  def test_nibbles_assembled_as_float32_are_the_codes(self):
    every_byte = jnp.arange(256, dtype=jnp.int32).astype(jnp.uint8).reshape(1, 256)
    low, high = kernel_gpu._nibbles_as_float32(every_byte)
    codes = np.asarray(reference.unpack_int4(every_byte, axis=-1)).reshape(256, 2)
    np.testing.assert_array_equal(np.asarray(low)[0], codes[:, 0])
    np.testing.assert_array_equal(np.asarray(high)[0], codes[:, 1])

  def test_w4a16_gemv_for_decode_sized_m(self):
    # 1, 3 (padded to 4) and 8 tokens, K split in two, two groups per loop step, bias on the first split only.
    w_packed, w_scales = im.quantize_int4(_random(26, (256, 128), outliers=False), axis=0)
    bias = _random(27, (128,), outliers=False)
    blocks = tuning.BlockSizes(block_n=64, block_k=128, k_splits=2, gemv=True)
    for m, dtype, tolerance in ((1, jnp.float32, 1e-6), (3, jnp.float32, 1e-6), (8, jnp.bfloat16, 1e-2)):
      with self.subTest(m=m):
        x = _random(28, (m, 256)).astype(dtype)
        got = im.w4a16_matmul(x, w_packed, w_scales, bias=bias, implementation="pallas_gpu_interpret",
                              block_sizes=blocks)
        self.assertEqual((got.shape, got.dtype), ((m, 128), dtype))
        self.assertLess(_relative_error(got, reference.w4a16_matmul(x, w_packed, w_scales, bias=bias)), tolerance)
    with self.assertRaisesRegex(ValueError, "up to 8 tokens.*M=9, rows=16"):
      kernel_gpu.gemv_activations(jnp.zeros((9, 256)), 64, 16)

  def test_one_token_picks_the_gemv_and_missing_classes_fall_back(self):
    h100 = "NVIDIA H100 80GB HBM3"
    self.assertTrue(tuning.block_sizes("w4a16", 1, h100).gemv)
    self.assertEqual(tuning.block_sizes("w4a16", 2, h100), tuning._H100[("w4a16", "decode")])
    self.assertEqual(tuning.block_sizes("w4a4", 1, h100), tuning._H100[("w4a4", "small")])  # no gemv, no decode
    self.assertEqual(tuning.block_sizes("w4a16", 1, "a GPU not in the table"), tuning.DEFAULT)
    self.assertEqual(tuning.block_sizes("w4a4", 4096, "NVIDIA H200", "mosaic_gpu"),
                     tuning._H100_MOSAIC[("w4a4", "large")])  # the same chip

  def test_untransposed_product_and_plain_int_conversion_agree(self):
    codes, scales, _ = kernel_gpu.quantize_activations_int4(
        _random(24, (16, 128)), None, None, group_size=64, signed=True, blocks=tuning.DEFAULT, interpret=True)
    w_packed, w_scales = im.quantize_int4(_random(25, (128, 64), outliers=False), axis=0)
    run = lambda **kw: kernel_gpu.w4a4_gemm(codes, scales, w_packed, w_scales, None, None, None,
                                            out_dtype=jnp.float32, group_size=64,
                                            blocks=tuning.BlockSizes(block_m=16), interpret=True, **kw)
    base = run()
    np.testing.assert_allclose(run(transposed=False), base, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(run(exact_magic=False), base, rtol=1e-6, atol=1e-5)


def test_unknown_implementation_is_named():
  with pytest.raises(ValueError, match="'cuda_magic'"):
    im.w4a16_matmul(jnp.zeros((1, 64)), jnp.zeros((32, 64), jnp.uint8), jnp.zeros((1, 64)),
                    implementation="cuda_magic")


def test_default_implementation_on_cpu_is_reference():
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU default")
  x = _random(30, (4, 64))
  w_packed, w_scales = im.quantize_int4(_random(31, (64, 64)), axis=0)
  np.testing.assert_array_equal(im.w4a16_matmul(x, w_packed, w_scales),
                                reference.w4a16_matmul(x, w_packed, w_scales))
