"""int4 matmul: the ping-pong W4A4 kernel (`w4a4_pingpong_mosaic_gpu.py`) against the spec, interpreted on CPU and
compiled on a Hopper GPU, its public-op path (`BlockSizes.pingpong`), its opt-in scale modes' errors against the exact
spec, its lowering for CUDA and its input checks.

The fast paths' errors against the exact spec (`test_fast_paths_error_against_the_exact_spec`: 128 x 256 x 128,
activations with outlier channels, no smoothing, interpreted on CPU, 2026-12-07): "act128" 1.45e-1 and "folded" 2.7e-2
relative (Frobenius) error, where the exact spec itself is 1.99e-1 from the unquantized float32 product (act128
2.37e-1, folded 2.01e-1). The interpreter accumulates the folded path's FP8 products in exact float32; Hopper's FP8
tensor cores keep fewer accumulator bits over a long K, so the compiled test measures it again on the H100.
"""

import dataclasses
import unittest

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import int4_matmul as im
from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels.int4_matmul import reference
from pallas_kernels.int4_matmul import tuning
from pallas_kernels.int4_matmul import w4a4_pingpong_mosaic_gpu as pingpong
from support.int4 import MOSAIC_INTERPRETER, OnCpu, random_data
from support.numerics import rel_err

_E4M3 = jnp.float8_e4m3fn


def _codes_and_scales(k=256, seed=50):
  """Random activation codes [128, k] and weight codes [k, 128] in [-8, 7], group scales of both."""
  rng = np.random.default_rng(seed)
  a = rng.integers(-8, 8, (128, k)).astype(np.int8)
  w = rng.integers(-8, 8, (k, 128)).astype(np.int8)
  a_scales = rng.uniform(0.01, 2.0, (k // 64, 128)).astype(np.float32)
  w_scales = rng.uniform(0.01, 2.0, (k // 64, 128)).astype(np.float32)
  return a, w, a_scales, w_scales


def _spec_sums(a, w, a_scales, w_scales):
  """The spec's per-group float32 sum in its order (`reference.w4a4_matmul`), with the promotion's multiply-add
  unfused and fused: sum_g fl(fl(P_g * a_scale) * w_scale)."""
  m, k = a.shape
  per_group = np.einsum("mgk,gkn->gmn", a.reshape(m, k // 64, 64).astype(np.int64),
                        w.reshape(k // 64, 64, -1).astype(np.int64)).astype(np.float32)
  plain = fused = np.zeros(per_group.shape[1:], np.float32)
  for g in range(per_group.shape[0]):
    scaled = per_group[g] * a_scales[g][:, None]
    plain = plain + scaled * w_scales[g][None, :]
    fused = (scaled.astype(np.float64) * w_scales[g][None, :] + fused).astype(np.float32)
  return plain, fused


class _PingpongChecks:
  """The kernel called directly, and the public op with `pingpong=True`."""

  def test_exact_path_is_the_spec_bit_for_bit(self):
    a, w, a_scales, w_scales = _codes_and_scales()
    got = np.asarray(pingpong.w4a4_gemm(
        jnp.asarray(a).astype(_E4M3), pingpong.kmajor_weights(reference.pack_int4(jnp.asarray(w), axis=0)),
        a_scales, w_scales, None, None, None, out_dtype=jnp.float32, stages=2, interpret=self.INTERPRET))
    plain, fused = _spec_sums(a, w, a_scales, w_scales)
    # The integer group sums are exact; the promotion is the spec's float32 arithmetic in the spec's order, with its
    # multiply-add fused where the compiler fuses it (ptxas does; XLA's CPU backend does at its default -O level).
    self.assertTrue(np.array_equal(got, plain) or np.array_equal(got, fused),
                    f"max difference {min(np.abs(got - plain).max(), np.abs(got - fused).max())}")

  def test_low_rank_and_bias_in_the_epilogue(self):
    a, w, a_scales, w_scales = _codes_and_scales(k=128, seed=51)
    rng = np.random.default_rng(52)
    low = jnp.asarray(rng.standard_normal((128, 64)), jnp.bfloat16)
    up = jnp.asarray(rng.standard_normal((64, 128)), jnp.bfloat16)
    bias = jnp.asarray(rng.standard_normal(128), jnp.float32)
    got = pingpong.w4a4_gemm(jnp.asarray(a).astype(_E4M3), jnp.asarray(w.T).astype(jnp.int4), a_scales, w_scales,
                             low, up, bias, out_dtype=jnp.float32, stages=2, interpret=self.INTERPRET)
    want = (_spec_sums(a, w, a_scales, w_scales)[0] + np.asarray(bias)
            + np.asarray(low, np.float64) @ np.asarray(up, np.float64))
    self.assertLess(rel_err(got, want), 1e-6)

  def test_public_op_with_lowrank_smooth_bias(self):
    # bf16 x through the fused quantize kernel, 40 tokens padded to the 128-row tile, rank 20 padded to 64.
    rng = np.random.default_rng(53)
    x = random_data(54, (40, 256)).astype(jnp.bfloat16)
    w_packed, w_scales = im.quantize_int4(random_data(55, (256, 128), outliers=False), axis=0)
    kwargs = dict(lowrank_down=random_data(56, (256, 20), outliers=False) / 16,
                  lowrank_up=random_data(57, (20, 128), outliers=False) / 4,
                  smooth=jnp.asarray(rng.uniform(0.5, 4.0, 256), jnp.float32),
                  bias=random_data(58, (128,), outliers=False))
    blocks = dataclasses.replace(tuning.MOSAIC_DEFAULT, fused_quantize=True, pingpong=True, num_stages=2)
    got = im.w4a4_matmul(x, w_packed, w_scales, implementation=self.IMPLEMENTATION, block_sizes=blocks, **kwargs)
    self.assertEqual((got.shape, got.dtype), ((40, 128), jnp.bfloat16))
    want = reference.w4a4_matmul(x, w_packed, w_scales, **kwargs).astype(jnp.float32)
    self.assertLess(rel_err(got, want), 1e-2)  # bf16 output and low-rank operands

  def test_fast_paths_error_against_the_exact_spec(self):
    x = random_data(60, (128, 256))
    w_packed, w_scales = im.quantize_int4(random_data(61, (256, 128), outliers=False), axis=0)
    spec = reference.w4a4_matmul(x, w_packed, w_scales)
    run = lambda mode: im.w4a4_matmul(
        x, w_packed, w_scales, implementation=self.IMPLEMENTATION,
        block_sizes=dataclasses.replace(tuning.MOSAIC_DEFAULT, pingpong=True, w4a4_scales=mode, num_stages=4))
    # Measured in the interpreter (module docstring): 1.45e-1 and 2.7e-2; the bounds leave room for the H100's FP8
    # accumulation. Activation groups of 128 cost more accuracy than folding the scales into e4m3 here: an outlier
    # channel sets the scale of twice as many activations.
    self.assertLess(rel_err(run("act128"), spec), 0.2)
    self.assertLess(rel_err(run("folded"), spec), 5e-2)


@unittest.skipUnless(MOSAIC_INTERPRETER and jax.default_backend() == "cpu",
                     "the Mosaic GPU interpreter (JAX >= 0.12) on a CPU-only host; PingpongCompiledTest runs on Hopper")
class PingpongInterpretTest(OnCpu, _PingpongChecks, unittest.TestCase):
  INTERPRET = True
  IMPLEMENTATION = "mosaic_gpu_interpret"


@unittest.skipUnless(compat.is_hopper(), "compiled Mosaic GPU kernels need a Hopper GPU")
class PingpongCompiledTest(_PingpongChecks, unittest.TestCase):
  INTERPRET = False
  IMPLEMENTATION = "mosaic_gpu"


class PingpongTest(unittest.TestCase):
  """What runs on any host: the weight layout, the lowering for CUDA, the input checks."""

  def test_kmajor_weights_are_the_codes_transposed(self):
    codes = np.random.default_rng(70).integers(-8, 8, (256, 128)).astype(np.int8)
    got = pingpong.kmajor_weights(reference.pack_int4(jnp.asarray(codes), axis=0))
    self.assertEqual((got.shape, got.dtype), ((128, 256), jnp.int4))
    np.testing.assert_array_equal(got.astype(jnp.int8), codes.T)

  def test_lowers_for_cuda_in_every_scale_mode(self):
    # The whole Mosaic GPU lowering runs on the CPU; only ptxas needs the GPU.
    x = jnp.zeros((128, 256), jnp.bfloat16)
    w_packed, w_scales = im.quantize_int4(random_data(71, (256, 128), outliers=False), axis=0)
    down, up, bias = jnp.zeros((256, 32), jnp.bfloat16), jnp.zeros((32, 128), jnp.bfloat16), jnp.zeros(128)
    for mode in pingpong.SCALE_MODES:
      blocks = dataclasses.replace(tuning.MOSAIC_DEFAULT, pingpong=True, w4a4_scales=mode, fused_quantize=True)
      fn = lambda x, w, s, d, u, b, blocks=blocks: im.w4a4_matmul(
          x, w, s, lowrank_down=d, lowrank_up=u, bias=b, implementation="mosaic_gpu", block_sizes=blocks)
      with self.subTest(mode=mode):
        jax.jit(fn).trace(x, w_packed, w_scales, down, up, bias).lower(lowering_platforms=("cuda",))

  def test_bad_inputs_are_named(self):
    a, w, a_scales, w_scales = (jnp.asarray(v) for v in _codes_and_scales(k=128))
    a8, w4 = a.astype(_E4M3), w.T.astype(jnp.int4)
    run = lambda *args, **kw: pingpong.w4a4_gemm(*args, out_dtype=jnp.float32, stages=kw.pop("stages", 2), **kw)
    with self.assertRaisesRegex(ValueError, r"e4m3 a \[M, K\] and int4 w.*int8 \(128, 128\)"):
      run(a, w4, a_scales, w_scales, None, None, None)
    with self.assertRaisesRegex(ValueError, r"K % \(64 \* block_steps = 256\)"):
      run(a8, w4, a_scales, w_scales, None, None, None, block_steps=4)
    with self.assertRaisesRegex(ValueError, r"a_scales must be \[1, 128\]"):
      run(a8, w4, a_scales, w_scales, None, None, None, block_steps=2)
    with self.assertRaisesRegex(ValueError, "at least 2 stages"):
      run(a8, w4, a_scales, w_scales, None, None, None, stages=1)
    x = random_data(72, (40, 192))
    w_packed, w_scales = im.quantize_int4(random_data(73, (192, 128), outliers=False), axis=0)
    with self.assertRaisesRegex(ValueError, r"w4a4_scales='folded' needs pingpong=True"):
      im.w4a4_matmul(x, w_packed, w_scales, implementation="mosaic_gpu",
                     block_sizes=dataclasses.replace(tuning.MOSAIC_DEFAULT, w4a4_scales="folded"))
    with self.assertRaisesRegex(ValueError, r"w4a4_scales='act128' needs.*K a multiple of 128.*\(40, 192\)"):
      im.w4a4_matmul(x, w_packed, w_scales, implementation="mosaic_gpu",
                     block_sizes=dataclasses.replace(tuning.MOSAIC_DEFAULT, pingpong=True, w4a4_scales="act128"))
    with self.assertRaisesRegex(ValueError, "w4a4_scales must be one of"):
      im.w4a4_matmul(x, w_packed, w_scales, implementation="mosaic_gpu",
                     block_sizes=dataclasses.replace(tuning.MOSAIC_DEFAULT, w4a4_scales="fast"))
