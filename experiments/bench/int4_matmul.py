"""Benchmark: Pallas int4 matmuls (W4A4 + low-rank, W4A16, W8A8) against XLA on FLUX.1 linear-layer shapes.

Command (repo root, on a GPU):  PYTHONPATH=. python3 experiments/bench/int4_matmul.py [--quick] [--out PATH]
Hardware: one NVIDIA H100 80GB (numbers in experiments/bench/README.md). Wall time: about 7 minutes (mostly
compilation); --quick checks every kernel at two shapes in under a minute; --breakdown times each stage alone.

In one process and on one card it times, per shape: the XLA bf16 dot; XLA weight-only int4 (int4 weights and their
group scales converted inside the jitted dot); the XLA int4 x int4 dot (large M only, it is very slow); and the Pallas
kernels. Every op is first checked against a float32 reference (relative Frobenius error). Timing: each op runs
over several distinct input sets inside one jit (so repeated runs do not measure the L2 cache and launches do not
dominate small shapes), warmup, then the median of many repetitions per call. Imports only jax, numpy and
pallas_kernels (no gin, no jaxgen).
"""

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp

from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu_triton

from pallas_kernels import int4_matmul as im
from pallas_kernels.int4_matmul import kernel_gpu
from pallas_kernels.int4_matmul import reference
from pallas_kernels.int4_matmul import tuning

LARGE_M = (4096, 4608)
SMALL_M = (1, 16, 64)
KN = ((3072, 3072), (3072, 12288), (12288, 3072), (3072, 15360))
RANK = 32
GROUP = 64
L2_DEFEAT_BYTES = 120e6


def make_inputs(key, m, k, n):
  """bf16 activations with a few outlier channels (what SVDQuant smooths), weights and a rank-32 branch."""
  kx, kw, ko, kd, ku, kb = jax.random.split(key, 6)
  x = jax.random.normal(kx, (m, k), jnp.float32)
  outliers = jax.random.choice(ko, k, (max(1, k // 256),), replace=False)
  x = x.at[:, outliers].multiply(20.0).astype(jnp.bfloat16)
  w = (jax.random.normal(kw, (k, n), jnp.float32) / math.sqrt(k)).astype(jnp.bfloat16)
  w_packed, w_scales = im.quantize_int4(w, GROUP, axis=0)
  w_codes = reference.unpack_int4(w_packed, axis=0)
  w8, w8_scales = im.quantize_int8_weight(w)
  return dict(
      x=x, w=w, w_packed=w_packed, w_scales=w_scales, w_int4=w_codes.astype(jnp.int4), w8=w8, w8_scales=w8_scales,
      x_int4=reference.quantize_codes(x, GROUP)[0].astype(jnp.int4),
      down=(jax.random.normal(kd, (k, RANK), jnp.float32) / math.sqrt(k)).astype(jnp.bfloat16),
      up=(jax.random.normal(ku, (RANK, n), jnp.float32) / math.sqrt(RANK)).astype(jnp.bfloat16),
      bias=(jax.random.normal(kb, (n,), jnp.float32) * 0.1).astype(jnp.bfloat16))


# Each op takes the input dict. Names starting with "xla_" are baselines.
def xla_bf16(d):
  return jnp.dot(d["x"], d["w"], preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def xla_w4a16(d):
  k, n = d["w_int4"].shape
  w = d["w_int4"].astype(jnp.bfloat16).reshape(k // GROUP, GROUP, n) * d["w_scales"].astype(jnp.bfloat16)[:, None]
  return jnp.dot(d["x"], w.reshape(k, n), preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def xla_int4_x_int4(d):
  return jax.lax.dot(d["x_int4"], d["w_int4"], preferred_element_type=jnp.int32)


def xla_int4_x_int4_to_int4(d):
  """The same dot without a wider accumulator type (int4 result), in case XLA rejects the int32 one."""
  return jax.lax.dot(d["x_int4"], d["w_int4"])


def pallas_w4a16(d, blocks=None):
  return im.w4a16_matmul(d["x"], d["w_packed"], d["w_scales"], bias=d["bias"], block_sizes=blocks)


def pallas_w4a4(d, blocks=None):
  return im.w4a4_matmul(d["x"], d["w_packed"], d["w_scales"], bias=d["bias"], block_sizes=blocks)


def pallas_w4a4_lowrank(d, blocks=None):
  return im.w4a4_matmul(d["x"], d["w_packed"], d["w_scales"], lowrank_down=d["down"], lowrank_up=d["up"],
                        bias=d["bias"], block_sizes=blocks)


def pallas_w4a4_lowrank_unfused(d):
  """The low-rank branch as two separate XLA dots around the kernel: what fusion saves."""
  low = jnp.dot(jnp.dot(d["x"], d["down"]), d["up"], preferred_element_type=jnp.float32)
  return (pallas_w4a4(d).astype(jnp.float32) + low).astype(jnp.bfloat16)


def pallas_w8a8(d, blocks=None):
  return im.w8a8_matmul(d["x"], d["w8"], d["w8_scales"], bias=d["bias"], block_sizes=blocks)


def reference_output(name, d):
  """Float32 reference of what op `name` computes (dequantize, then a HIGHEST-precision dot)."""
  f32 = lambda a: a.astype(jnp.float32)
  dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
  w4 = reference.dequantize_int4(d["w_packed"], d["w_scales"], GROUP, axis=0)
  if name == "pallas_w4a16":
    return dot(f32(d["x"]), w4) + f32(d["bias"])
  if name == "pallas_w8a8":
    codes, scales = reference.quantize_int8_rows(d["x"])
    return dot(f32(codes) * scales[:, None], f32(d["w8"]) * d["w8_scales"]) + f32(d["bias"])
  codes, scales = reference.quantize_codes(d["x"], GROUP)
  x4 = f32(codes) * jnp.repeat(scales, GROUP, axis=1)
  y = dot(x4, w4) + f32(d["bias"])
  if "lowrank" in name:
    y = y + dot(dot(f32(d["x"]), f32(d["down"])), f32(d["up"]))
  return y


def relative_error(out, ref):
  out = out.astype(jnp.float32)
  if not bool(jnp.all(jnp.isfinite(out))):
    return float("nan")
  return float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))


def time_op(fn, input_sets, reps):
  """Median seconds per call of fn over the input sets, all calls of one repetition inside one jit."""
  many = jax.jit(lambda sets: tuple(fn(d) for d in sets))
  jax.block_until_ready(many(input_sets))
  jax.block_until_ready(many(input_sets))
  samples = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(many(input_sets))
    samples.append((time.perf_counter() - start) / len(input_sets))
  return statistics.median(samples)


def device_bytes(*arrays):
  return sum(a.addressable_data(0).on_device_size_in_bytes() for a in arrays)


def bench_shape(m, k, n, ops, reps, key, results, tolerance):
  n_sets = min(6, max(2, math.ceil(L2_DEFEAT_BYTES / (k * n * 2))))
  sets = [make_inputs(jax.random.fold_in(key, i), m, k, n) for i in range(n_sets)]
  row = dict(m=m, k=k, n=n, input_sets=n_sets, times_us={}, rel_err={})
  for name, fn in ops:
    if not name.startswith("xla_"):
      row["rel_err"][name] = relative_error(jax.jit(fn)(sets[0]), reference_output(name, sets[0]))
      assert row["rel_err"][name] < tolerance, (name, m, k, n, row["rel_err"][name])
    slow = name.startswith("xla_int4_x_int4")
    try:
      row["times_us"][name] = 1e6 * time_op(fn, sets[:1] if slow else sets, 2 if slow else reps)
    except jax.errors.JaxRuntimeError as e:  # XLA has no int4 x int4 dot on some backends: record, carry on
      row["times_us"][name] = float("nan")
      print(f"  {name} failed: {str(e)[:200]}")
  d = sets[0]
  row["weight_bytes"] = dict(bf16=device_bytes(d["w"]), int4_packed_plus_scales=device_bytes(d["w_packed"], d["w_scales"]),
                             xla_int4=device_bytes(d["w_int4"], d["w_scales"]), int8=device_bytes(d["w8"], d["w8_scales"]))
  base = row["times_us"]["xla_bf16"]
  row["speedup_vs_bf16"] = {name: base / t for name, t in row["times_us"].items()}
  results.append(row)
  print(f"M={m:5d} K={k:5d} N={n:5d} " + " ".join(
      f"{name}={t:9.1f}us({base / t:4.2f}x)" for name, t in row["times_us"].items()), flush=True)
  return row


def sweep_blocks(key, results):
  """A few tilings at one large and one small shape: the numbers behind tuning.py."""
  large = [tuning.BlockSizes(block_m=bm, block_n=bn, num_warps=w, num_stages=s, quantize_block_m=16)
           for bm, bn, w, s in ((128, 128, 8, 4), (128, 128, 8, 3), (128, 256, 8, 3), (64, 128, 4, 4),
                                (128, 64, 4, 4), (256, 128, 8, 3))]
  small = [tuning.BlockSizes(block_m=16, block_n=bn, k_splits=s, num_warps=w, num_stages=4)
           for bn, s, w in ((64, 1, 4), (64, 4, 4), (128, 4, 4), (64, 8, 4), (128, 8, 8), (32, 8, 4))]
  for (m, k, n), configs, ops in (((4096, 3072, 12288), large, (pallas_w4a4_lowrank, pallas_w8a8, pallas_w4a16)),
                                  ((16, 3072, 12288), small, (pallas_w4a16, pallas_w4a4_lowrank))):
    sets = [make_inputs(jax.random.fold_in(key, i), m, k, n) for i in range(2)]
    for blocks in configs:
      for op in ops:
        try:
          t = 1e6 * time_op(functools.partial(op, blocks=blocks), sets, 10)
        except Exception as e:  # a tiling the compiler rejects (shared memory, registers) is a result too
          t = float("nan")
          print(f"  {op.__name__} {blocks}: {type(e).__name__}: {str(e)[:200]}")
        results.append(dict(m=m, k=k, n=n, op=op.__name__, blocks=blocks.__dict__, time_us=t))
        print(f"  sweep M={m} {op.__name__:22s} bm={blocks.block_m} bn={blocks.block_n} splits={blocks.k_splits} "
              f"warps={blocks.num_warps} stages={blocks.num_stages}: {t:8.1f} us", flush=True)


def _bf16_probe_kernel(x_ref, w_ref, out_ref, *, step_k):
  def step(i, acc):
    return acc + jnp.dot(x_ref[:, pl.ds(i * step_k, step_k)], w_ref[pl.ds(i * step_k, step_k), :],
                         preferred_element_type=jnp.float32)
  acc = jax.lax.fori_loop(0, x_ref.shape[1] // step_k, step, jnp.zeros(out_ref.shape, jnp.float32))
  out_ref[...] = acc.astype(out_ref.dtype)


def pallas_bf16_probe(x, w, *, block_m=128, block_n=128, step_k=64, num_warps=8, num_stages=4):
  """The plainest Pallas-Triton bf16 GEMM (same loop structure as ours): what this lowering reaches at best."""
  (m, k), n = x.shape, w.shape[1]
  return pl.pallas_call(
      functools.partial(_bf16_probe_kernel, step_k=step_k), out_shape=jax.ShapeDtypeStruct((m, n), x.dtype),
      grid=(m // block_m, n // block_n),
      in_specs=[pl.BlockSpec((block_m, k), lambda i, j: (i, 0)), pl.BlockSpec((k, block_n), lambda i, j: (0, j))],
      out_specs=pl.BlockSpec((block_m, block_n), lambda i, j: (i, j)),
      compiler_params=plgpu_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages))(x, w)


def breakdown(key, results, m=4096, k=3072, n=12288):
  """Each stage of the Pallas paths timed alone, plus the plain Pallas bf16 GEMM probe, at one large shape."""
  blocks = tuning.block_sizes("w4a4", m, jax.devices()[0].device_kind)
  blocks8 = tuning.block_sizes("w8a8", m, jax.devices()[0].device_kind)
  quant = functools.partial(kernel_gpu.quantize_activations_int4, group_size=GROUP, signed=True, interpret=False)
  sets = []
  for i in range(2):
    d = make_inputs(jax.random.fold_in(key, i), m, k, n)
    d["codes"], d["a_scales"], d["low"] = quant(d["x"], None, d["down"], blocks=blocks)
    d["codes8"], d["a_scales8"] = kernel_gpu.quantize_activations_int8(d["x"], blocks=blocks8, interpret=False)
    sets.append(d)
  gemm4 = lambda d, blocks=blocks, **kw: kernel_gpu.w4a4_gemm(
      d["codes"], d["a_scales"], d["w_packed"], d["w_scales"], kw.get("low"), kw.get("up"), None,
      out_dtype=jnp.bfloat16, group_size=GROUP, blocks=blocks, interpret=False, exact_magic=kw.get("magic", True),
      transposed=kw.get("transposed", True))
  stages = {
      "xla_bf16": xla_bf16,
      "quantize_int4": lambda d: quant(d["x"], None, None, blocks=blocks),
      "quantize_int4_lowrank": lambda d: quant(d["x"], None, d["down"], blocks=blocks),
      "quantize_int4_lowrank_qm32": lambda d: quant(
          d["x"], None, d["down"], blocks=dataclasses.replace(blocks, quantize_block_m=32)),
      "quantize_int8": lambda d: kernel_gpu.quantize_activations_int8(d["x"], blocks=blocks8, interpret=False),
      "gemm_w4a4": gemm4,
      "gemm_w4a4_lowrank": lambda d: gemm4(d, low=d["low"], up=d["up"]),
      "gemm_w4a4_int_convert": lambda d: gemm4(d, magic=False),
      "gemm_w4a4_not_transposed": lambda d: gemm4(d, transposed=False),
      "gemm_w4a4_64x128_w4": lambda d: gemm4(d, blocks=dataclasses.replace(blocks, block_m=64, num_warps=4)),
      "gemm_w4a4_128x64_w4": lambda d: gemm4(d, blocks=dataclasses.replace(blocks, block_n=64, num_warps=4)),
      "gemm_w4a4_bk128": lambda d: gemm4(d, blocks=dataclasses.replace(blocks, block_k=128)),
      "gemm_w4a4_w4s3": lambda d: gemm4(d, blocks=dataclasses.replace(blocks, num_warps=4, num_stages=3)),
      "gemm_w4a4_128x256": lambda d: gemm4(d, blocks=dataclasses.replace(blocks, block_n=256, num_stages=3)),
      "gemm_w8a8": lambda d: kernel_gpu.w8a8_gemm(d["codes8"], d["a_scales8"], d["w8"], d["w8_scales"][None],
                                                  None, out_dtype=jnp.bfloat16, blocks=blocks8, interpret=False),
      "gemm_w8a8_not_transposed": lambda d: kernel_gpu.w8a8_gemm(
          d["codes8"], d["a_scales8"], d["w8"], d["w8_scales"][None], None, out_dtype=jnp.bfloat16,
          blocks=blocks8, interpret=False, transposed=False),
      "pallas_bf16_probe_k64": lambda d: pallas_bf16_probe(d["x"], d["w"]),
      "pallas_bf16_probe_k128_s3": lambda d: pallas_bf16_probe(d["x"], d["w"], step_k=128, num_stages=3),
      "pallas_bf16_probe_k64_w4": lambda d: pallas_bf16_probe(d["x"], d["w"], num_warps=4),
  }
  ops = 2 * m * k * n
  for name, fn in stages.items():
    try:
      t = time_op(fn, sets, 10)
    except Exception as e:  # a variant the compiler rejects is a result too
      t = float("nan")
      print(f"  {name}: {type(e).__name__}: {str(e)[:300]}")
    results.append(dict(m=m, k=k, n=n, stage=name, time_us=1e6 * t))
    print(f"  stage {name:32s} {1e6 * t:9.1f} us  {ops / t / 1e12:7.1f} T(FL)OP/s-equivalent", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true", help="two shapes, all kernels: a smoke test")
  parser.add_argument("--sweep", action="store_true", help="also time a few tilings")
  parser.add_argument("--breakdown", action="store_true", help="only time each stage alone at one shape")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "int4_matmul.json"))
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
  key = jax.random.key(0)
  large_ops = [("xla_bf16", xla_bf16), ("xla_w4a16", xla_w4a16), ("pallas_w4a16", pallas_w4a16),
               ("pallas_w4a4", pallas_w4a4), ("pallas_w4a4_lowrank", pallas_w4a4_lowrank),
               ("pallas_w4a4_lowrank_unfused", pallas_w4a4_lowrank_unfused), ("pallas_w8a8", pallas_w8a8)]
  small_ops = [("xla_bf16", xla_bf16), ("xla_w4a16", xla_w4a16), ("pallas_w4a16", pallas_w4a16),
               ("pallas_w4a4_lowrank", pallas_w4a4_lowrank), ("pallas_w8a8", pallas_w8a8)]
  # Quantized outputs differ from the reference only by float32 summation order and bf16 operand rounding.
  tolerance = 2e-2
  rows, sweep = [], []
  if args.quick:
    plan = [(4608, 3072, 3072, large_ops + [("xla_int4_x_int4", xla_int4_x_int4),
                                            ("xla_int4_x_int4_to_int4", xla_int4_x_int4_to_int4)]),
            (1, 3072, 3072, small_ops)]
  else:
    plan = [(m, k, n, large_ops + ([("xla_int4_x_int4", xla_int4_x_int4)] if m == 4096 else []))
            for m in LARGE_M for k, n in KN]
    plan += [(m, k, n, small_ops) for m in SMALL_M for k, n in KN]
  started = time.time()
  if args.breakdown:
    plan = []
    breakdown(key, sweep)
  for m, k, n, ops in plan:
    bench_shape(m, k, n, ops, 2 if args.quick else 15, jax.random.fold_in(key, m * 7 + k + n), rows, tolerance)
  if args.sweep:
    sweep_blocks(key, sweep)
  report = dict(device=device.device_kind, jax=jax.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                group_size=GROUP, rank=RANK, seconds=round(time.time() - started, 1), shapes=rows, sweep=sweep)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {args.out} ({report['seconds']} s)")


if __name__ == "__main__":
  main()
