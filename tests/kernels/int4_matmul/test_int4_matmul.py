"""int4 matmul: the spec (pack, quantize) checked by hand, and every kernel checked against `reference.py`.

Kernel tests follow jax's tests/pallas/gpu_ops_test.py: a base class names the implementation, subclasses run the
GPU (Triton-lowered and Mosaic GPU) and TPU (Mosaic) kernel bodies in interpret mode on CPU. Shapes stay small
(M <= 128, K, N <= 256) so the whole file runs in well under a minute on two cores. The Mosaic GPU kernels called
directly are in test_mosaic_gpu_kernels.py.
"""

import dataclasses
import unittest
import unittest.mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import int4_matmul as im
from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.int4_matmul import kernel_gpu
from pallas_kernels.int4_matmul import ops
from pallas_kernels.int4_matmul import reference
from pallas_kernels.int4_matmul import tuning
from support.int4 import MOSAIC_INTERPRETER, NO_MOSAIC_INTERPRETER, OnCpu, random_data
from support.numerics import rel_err


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
    x = random_data(1, (8, 256))
    packed, scales = im.quantize_int4(x, group_size=64, axis=-1)
    groups = np.asarray(x, np.float32).reshape(8, 4, 64)
    want_scales = np.max(np.abs(groups), axis=-1) * np.float32(1 / 7)
    want_codes = np.clip(np.round(groups / want_scales[..., None]), -8, 7).astype(np.int8).reshape(8, 256)
    np.testing.assert_array_equal(scales, want_scales)
    np.testing.assert_array_equal(im.unpack_int4(packed), want_codes)

  def test_quantize_along_axis_zero_for_weights(self):
    w = random_data(2, (128, 32))
    packed, scales = im.quantize_int4(w, axis=0)
    self.assertEqual((packed.shape, scales.shape), ((64, 32), (2, 32)))
    np.testing.assert_array_equal(im.unpack_int4(packed, axis=0).T,
                                  im.unpack_int4(im.quantize_int4(w.T)[0]))

  def test_unsigned_quantize(self):
    x = jnp.abs(random_data(3, (4, 128)))
    packed, scales = im.quantize_uint4(x)
    codes = np.asarray(im.unpack_int4(packed, signed=False))
    self.assertEqual((codes.min(), codes.max()), (0, 15))
    np.testing.assert_array_equal(scales, np.asarray(x).reshape(4, 2, 64).max(-1) * np.float32(1 / 15))

  def test_dequantize_error_is_at_most_half_a_step(self):
    x = random_data(4, (16, 128))
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
    self.x = random_data(10, (self.M, self.K))
    w = random_data(11, (self.K, self.N), outliers=False)
    self.w_packed, self.w_scales = im.quantize_int4(w, axis=0)
    self.w8, self.w8_scales = im.quantize_int8_weight(w)
    self.down = random_data(12, (self.K, self.RANK), outliers=False) / 16
    self.up = random_data(13, (self.RANK, self.N), outliers=False) / 4
    self.smooth = jnp.asarray(np.random.default_rng(14).uniform(0.5, 4.0, self.K), jnp.float32)
    self.bias = random_data(15, (self.N,), outliers=False)

  def assert_close(self, got, want):
    self.assertEqual(got.shape, want.shape)
    self.assertEqual(got.dtype, want.dtype)
    self.assertLess(rel_err(got, want), self.TOLERANCE)

  def test_w4a4_with_lowrank_smooth_bias(self):
    kwargs = dict(lowrank_down=self.down, lowrank_up=self.up, smooth=self.smooth, bias=self.bias)
    got = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION, **kwargs)
    want = reference.w4a4_matmul(self.x, self.w_packed, self.w_scales, **kwargs)
    self.assertEqual((got.shape, got.dtype), (want.shape, want.dtype))
    self.assertLess(rel_err(got, want), self.LOWRANK_TOLERANCE)

  def test_w4a4_fused_lowrank_equals_unfused(self):
    fused = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, lowrank_down=self.down, lowrank_up=self.up,
                           implementation=self.IMPLEMENTATION)
    plain = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION)
    low = reference._dot(reference._dot(self.x, self.down), self.up)
    self.assertLess(rel_err(fused, plain + low), self.LOWRANK_TOLERANCE)

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
    self.assertLess(rel_err(got, want), 1e-2)

  def test_w4a16(self):
    got = im.w4a16_matmul(self.x, self.w_packed, self.w_scales, bias=self.bias, implementation=self.IMPLEMENTATION)
    # The kernels dequantize weights into the activation dtype (exact for f32 codes * scales).
    self.assert_close(got, reference.w4a16_matmul(self.x, self.w_packed, self.w_scales, bias=self.bias))

  def test_w4a16_single_token_bf16(self):
    x = self.x[:1].astype(jnp.bfloat16)
    got = im.w4a16_matmul(x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION)
    self.assertLess(rel_err(got, reference.w4a16_matmul(x, self.w_packed, self.w_scales)), 1e-2)

  def test_w8a8(self):
    got = im.w8a8_matmul(self.x, self.w8, self.w8_scales, bias=self.bias, implementation=self.IMPLEMENTATION)
    self.assert_close(got, reference.w8a8_matmul(self.x, self.w8, self.w8_scales, bias=self.bias))

  def test_quantization_error_is_small_against_float(self):
    got = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION)
    exact = self.x @ reference.dequantize_int4(self.w_packed, self.w_scales, axis=0)
    self.assertLess(rel_err(got, exact), 0.2)  # 4-bit activations with outliers, no smoothing

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


class GpuInterpretTest(OnCpu, MatmulTestBase):
  IMPLEMENTATION = "pallas_gpu_interpret"


class TpuInterpretTest(MatmulTestBase):
  IMPLEMENTATION = "pallas_tpu_interpret"


class TpuSimulatorTest(OnCpu, unittest.TestCase):
  """Each Mosaic TPU kernel once under the TPU-semantics simulator (`pltpu.InterpretParams()`: TPU memory spaces,
  DMAs and semaphores, the kernels' TPU compiler params, out-of-bounds reads raising, scratch filled with NaN). No
  TPU is lent here, so this is the closest the kernels get to one; several times slower than TpuInterpretTest, hence
  one small case per kernel."""

  def setUp(self):
    super().setUp()
    simulated = ops._TpuBackend(interpret=pltpu.InterpretParams())
    self.enterContext(unittest.mock.patch.dict(ops.IMPLEMENTATIONS, {"pallas_tpu_simulated": simulated}))
    self.x = random_data(50, (24, 128))
    w = random_data(51, (128, 128), outliers=False)
    self.w_packed, self.w_scales = im.quantize_int4(w, axis=0)
    self.w8, self.w8_scales = im.quantize_int8_weight(w)
    self.bias = random_data(52, (128,), outliers=False)

  def test_grouped_gemm_kernel_w4a4_with_lowrank_and_w4a16(self):
    kwargs = dict(lowrank_down=random_data(53, (128, 16), outliers=False) / 16,
                  lowrank_up=random_data(54, (16, 128), outliers=False) / 4, bias=self.bias)
    got = im.w4a4_matmul(self.x, self.w_packed, self.w_scales, implementation="pallas_tpu_simulated", **kwargs)
    self.assertLess(rel_err(got, reference.w4a4_matmul(self.x, self.w_packed, self.w_scales, **kwargs)), 1e-5)
    got = im.w4a16_matmul(self.x, self.w_packed, self.w_scales, implementation="pallas_tpu_simulated")
    self.assertLess(rel_err(got, reference.w4a16_matmul(self.x, self.w_packed, self.w_scales)), 1e-5)

  def test_w8a8_kernel(self):
    got = im.w8a8_matmul(self.x, self.w8, self.w8_scales, bias=self.bias, implementation="pallas_tpu_simulated")
    self.assertLess(rel_err(got, reference.w8a8_matmul(self.x, self.w8, self.w8_scales, bias=self.bias)), 1e-5)


class _MosaicGpuShapes:
  """One 128 x 128 output tile keeps the interpreted runs short. (Grids of several CTAs used to hang the interpreter
  on two cores: the CPU client's thread pool starved its simulated warpgroups; tests/conftest.py sets PJRT_NPROC.)"""

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
      self.assertLess(rel_err(got, want), 1e-2, code_dtype)  # bf16 output and low-rank operands
      plain = im.w4a4_matmul(x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION,
                             block_sizes=dataclasses.replace(blocks, fused_quantize=False), **kwargs)
      self.assertLess(rel_err(got, plain), 5e-3, code_dtype)

  def _check_w4a16_with_bf16_activations(self, blocks):
    """1 and 40 tokens with bias against the spec, through the kernel that `blocks` selects."""
    for m in (1, self.M):
      x = self.x[:m].astype(jnp.bfloat16)
      got = im.w4a16_matmul(x, self.w_packed, self.w_scales, bias=self.bias, implementation=self.IMPLEMENTATION,
                            block_sizes=blocks)
      self.assertEqual((got.shape, got.dtype), ((m, self.N), jnp.bfloat16))
      want = reference.w4a16_matmul(x, self.w_packed, self.w_scales, bias=self.bias)
      self.assertLess(rel_err(got, want), 1e-2, m)  # weights and output rounded to bf16

  def test_w4a16_with_the_mosaic_kernel(self):
    # x padded to the 64-row wgmma tile, K split in two, bias added after.
    self._check_w4a16_with_bf16_activations(dataclasses.replace(tuning.MOSAIC_DEFAULT, mosaic_w4a16=True))

  def test_w4a16_with_the_register_operand_kernel(self):
    # Token tiles 8 and 64, K split in four to fill the GPU, bias added after the partials.
    blocks = dataclasses.replace(tuning.MOSAIC_DEFAULT, w4a16_rs=True)
    self._check_w4a16_with_bf16_activations(blocks)
    with self.assertRaisesRegex(ValueError, r"W4A16 with x \(40, 256\) float32.*register-operand"):
      im.w4a16_matmul(self.x, self.w_packed, self.w_scales, implementation=self.IMPLEMENTATION, block_sizes=blocks)

  def test_a_shape_the_kernels_cannot_take_raises_when_named_and_goes_to_triton_as_the_default(self):
    w = random_data(16, (self.K, 192), outliers=False)
    w_packed, w_scales = im.quantize_int4(w, axis=0)
    w8, w8_scales = im.quantize_int8_weight(w)
    named = rf"implementation='{self.IMPLEMENTATION}' cannot run"
    with self.assertRaisesRegex(ValueError, rf"{named} W4A4 with x \(40, 256\) float32 and weights \(128, 192\)"):
      im.w4a4_matmul(self.x, w_packed, w_scales, implementation=self.IMPLEMENTATION)
    with self.assertRaisesRegex(ValueError, rf"{named} W8A8 with x \(40, 256\) float32 and weights \(256, 192\)"):
      im.w8a8_matmul(self.x, w8, w8_scales, implementation=self.IMPLEMENTATION)
    with self.assertRaisesRegex(ValueError, rf"{named} W4A16 with x \(65, 256\) bfloat16.*M <= 64"):
      im.w4a16_matmul(jnp.zeros((65, self.K), jnp.bfloat16), self.w_packed, self.w_scales,
                      implementation=self.IMPLEMENTATION,
                      block_sizes=dataclasses.replace(tuning.MOSAIC_DEFAULT, mosaic_w4a16=True))
    as_default = dataclasses.replace(ops.IMPLEMENTATIONS[self.IMPLEMENTATION], fall_back=True)
    with (unittest.mock.patch.object(ops, "_default_implementation", return_value=self.IMPLEMENTATION),
          unittest.mock.patch.dict(ops._AS_DEFAULT, {self.IMPLEMENTATION: as_default})):
      got = im.w4a4_matmul(self.x, w_packed, w_scales)
      # The register-operand W4A16 kernel (the H100 default above M = 64) takes bf16 x only: float32 x goes to the
      # Triton kernel, with the Triton table's blocks rather than the register-operand kernel's.
      rs_blocks = dataclasses.replace(tuning.MOSAIC_DEFAULT, w4a16_rs=True, block_m=256)
      got_w4a16 = im.w4a16_matmul(self.x, self.w_packed, self.w_scales, block_sizes=rs_blocks)
    self.assertLess(rel_err(got, reference.w4a4_matmul(self.x, w_packed, w_scales)), 1e-5)
    self.assertLess(rel_err(got_w4a16, reference.w4a16_matmul(self.x, self.w_packed, self.w_scales)), 1e-5)


@unittest.skipUnless(MOSAIC_INTERPRETER, NO_MOSAIC_INTERPRETER)
class MosaicGpuInterpretTest(OnCpu, _MosaicGpuShapes, MatmulTestBase):
  IMPLEMENTATION = "mosaic_gpu_interpret"


@unittest.skipUnless(compat.is_hopper(),
                     "compiled Mosaic GPU kernels need a Hopper GPU; MosaicGpuInterpretTest covers CPU")
class MosaicGpuCompiledTest(_MosaicGpuShapes, MatmulTestBase):
  IMPLEMENTATION = "mosaic_gpu"

  def test_persistent_ctas_give_the_per_tile_result(self):
    # 12 x 12 output tiles of 128 x 128 on 132 SMs: twelve CTAs compute two tiles each.
    x = random_data(20, (1536, 256)).astype(jnp.bfloat16)
    w_packed, w_scales = im.quantize_int4(random_data(21, (256, 1536), outliers=False), axis=0)
    kwargs = dict(lowrank_down=random_data(22, (256, 32)) / 16, lowrank_up=random_data(23, (32, 1536)) / 4,
                  bias=random_data(24, (1536,)), implementation=self.IMPLEMENTATION)
    blocks = tuning.block_sizes("w4a4", 1536, jax.devices()[0].device_kind, "mosaic_gpu")
    per_tile = im.w4a4_matmul(x, w_packed, w_scales, block_sizes=dataclasses.replace(blocks, persistent=False),
                              **kwargs)
    persistent = im.w4a4_matmul(x, w_packed, w_scales, block_sizes=dataclasses.replace(blocks, persistent=True),
                                **kwargs)
    np.testing.assert_array_equal(persistent, per_tile)


class GpuKernelPiecesTest(OnCpu, unittest.TestCase):
  """The GPU kernels called directly: exact quantization, K splits, tilings the public defaults do not reach."""

  def test_quantize_kernel_bit_exact_and_fused_down_projection(self):
    x = random_data(20, (32, 256))
    # a group with scale exactly 1 and ties at .5 on both halves: rounding must be half to even
    ties = np.zeros(64, np.float32)
    ties[:8] = [7.0, 2.5, -2.5, 3.5, -0.5, 0.5, 1.5, -1.5]
    x = x.at[0, :64].set(ties)
    down = random_data(21, (256, 16), outliers=False)
    blocks = tuning.BlockSizes(quantize_block_m=16, quantize_block_k=128)
    codes, scales, low = kernel_gpu.quantize_activations_int4(x, None, down, group_size=64, signed=True,
                                                              blocks=blocks, interpret=True)
    want_codes, want_scales = reference.quantize_codes(x, 64)
    # kernel layout: within each group, the 32 even-K codes then the 32 odd-K ones
    halves = np.asarray(want_codes).reshape(32, 4, 32, 2).transpose(0, 1, 3, 2).reshape(32, 256)
    np.testing.assert_array_equal(codes, halves)
    np.testing.assert_array_equal(scales, want_scales)
    self.assertLess(rel_err(low, reference._dot(x, down)), 1e-5)

  def test_k_splits_and_tilings(self):
    x = random_data(22, (64, 256))
    w_packed, w_scales = im.quantize_int4(random_data(23, (256, 128), outliers=False), axis=0)
    want4 = reference.w4a4_matmul(x, w_packed, w_scales)
    want16 = reference.w4a16_matmul(x, w_packed, w_scales)
    for blocks in (tuning.BlockSizes(block_m=16, block_n=64, block_k=128, k_splits=2),
                   tuning.BlockSizes(block_m=32, block_n=128, block_k=64, k_splits=4, quantize_block_m=32)):
      with self.subTest(blocks=blocks):
        got4 = im.w4a4_matmul(x, w_packed, w_scales, implementation="pallas_gpu_interpret", block_sizes=blocks)
        got16 = im.w4a16_matmul(x, w_packed, w_scales, implementation="pallas_gpu_interpret", block_sizes=blocks)
        self.assertLess(rel_err(got4, want4), 1e-5)
        self.assertLess(rel_err(got16, want16), 1e-5)

  def test_nibbles_assembled_as_float32_are_the_codes(self):
    every_byte = jnp.arange(256, dtype=jnp.int32).astype(jnp.uint8).reshape(1, 256)
    low, high = kernel_gpu._nibbles_as_float32(every_byte)
    codes = np.asarray(reference.unpack_int4(every_byte, axis=-1)).reshape(256, 2)
    np.testing.assert_array_equal(np.asarray(low)[0], codes[:, 0])
    np.testing.assert_array_equal(np.asarray(high)[0], codes[:, 1])

  def test_w4a16_gemv_for_decode_sized_m(self):
    # 1, 3 (padded to 4) and 8 tokens, K split in two, two groups per loop step, bias on the first split only.
    w_packed, w_scales = im.quantize_int4(random_data(26, (256, 128), outliers=False), axis=0)
    bias = random_data(27, (128,), outliers=False)
    blocks = tuning.BlockSizes(block_n=64, block_k=128, k_splits=2, gemv=True)
    for m, dtype, tolerance in ((1, jnp.float32, 1e-6), (3, jnp.float32, 1e-6), (8, jnp.bfloat16, 1e-2)):
      with self.subTest(m=m):
        x = random_data(28, (m, 256)).astype(dtype)
        got = im.w4a16_matmul(x, w_packed, w_scales, bias=bias, implementation="pallas_gpu_interpret",
                              block_sizes=blocks)
        self.assertEqual((got.shape, got.dtype), ((m, 128), dtype))
        self.assertLess(rel_err(got, reference.w4a16_matmul(x, w_packed, w_scales, bias=bias)), tolerance)
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
    # W4A16 on Hopper: the Triton kernels up to M = 64, the register-operand kernel above (issue 27's timings).
    self.assertFalse(tuning.block_sizes("w4a16", 64, h100, "mosaic_gpu").w4a16_rs)
    self.assertTrue(tuning.block_sizes("w4a16", 65, h100, "mosaic_gpu").w4a16_rs)
    self.assertFalse(tuning.block_sizes("w4a16", 4096, h100, "pallas_gpu").w4a16_rs)

  def test_untransposed_product_and_plain_int_conversion_agree(self):
    codes, scales, _ = kernel_gpu.quantize_activations_int4(
        random_data(24, (16, 128)), None, None, group_size=64, signed=True, blocks=tuning.DEFAULT, interpret=True)
    w_packed, w_scales = im.quantize_int4(random_data(25, (128, 64), outliers=False), axis=0)
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
  x = random_data(30, (4, 64))
  w_packed, w_scales = im.quantize_int4(random_data(31, (64, 64)), axis=0)
  np.testing.assert_array_equal(im.w4a16_matmul(x, w_packed, w_scales),
                                reference.w4a16_matmul(x, w_packed, w_scales))
