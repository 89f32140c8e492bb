"""Benchmark: Pallas int4 matmuls (W4A4 + low-rank, W4A16, W8A8) against XLA on FLUX.1 linear-layer shapes.

Command (repo root, on a GPU):  PYTHONPATH=. python3 experiments/bench/int4_matmul.py [--quick] [--out PATH]
Hardware: one NVIDIA H100 80GB (numbers in experiments/bench/README.md). Wall time: ~9 minutes for --shapes large,
more for small (mostly compilation and input generation); --quick checks every kernel at two shapes in ~2 minutes;
--breakdown also times each stage of the Mosaic W4A4 path alone.

In one process and on one card it times, per shape: the XLA bf16 dot; XLA weight-only int4 (int4 weights and their
group scales converted inside the jitted dot); the XLA int4 x int4 dot (large M only, it is very slow); and the Pallas
kernels. Every op is first checked against a float32 reference (relative Frobenius error). Timing: each op runs
over several distinct input sets inside one jit (3-6 at large M so repeated runs do not measure the L2 cache, 24 at
small M so that the dispatch does not dominate); after a warmup, CUPTI kernel time and back-to-back wall time, medians
of many repetitions, per call (`time_op`). Imports only jax, numpy and pallas_kernels (no gin, no jaxgen).

A run writes its own report (`shapes`, `sweep`) to --out, by default int4_matmul_run.json beside this script, never
over int4_matmul.json: that file gathers the runs the README's tables quote, each under a key named for what it holds.
"""

import argparse
import dataclasses
import datetime
import functools
import inspect
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp

from pallas_kernels import int4_matmul as im
from pallas_kernels.int4_matmul import kernel_mosaic_gpu
from pallas_kernels.int4_matmul import ops as int4_ops
from pallas_kernels.int4_matmul import quantize_mosaic_gpu
from pallas_kernels.int4_matmul import reference
from pallas_kernels.int4_matmul import tuning
from pallas_kernels.int4_matmul import w4a4_pingpong_mosaic_gpu
from pallas_kernels.int4_matmul import w4a16_rs_mosaic_gpu

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
      w_rs=w4a16_rs_mosaic_gpu.as_int4_codes(w4a16_rs_mosaic_gpu.shuffle_for_w4a16_rs(w_packed)),
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


def _mosaic_blocks(op, m, code_dtype=None, **changes):
  """The tuned Mosaic GPU block sizes, with `changes` (and the 8-bit code form, if given) applied."""
  blocks = tuning.block_sizes(op, m, jax.devices()[0].device_kind, "mosaic_gpu")
  return dataclasses.replace(blocks, **changes, **({"code_dtype": code_dtype} if code_dtype else {}))


def triton_w4a16(d, blocks=None):
  return im.w4a16_matmul(d["x"], d["w_packed"], d["w_scales"], bias=d["bias"], block_sizes=blocks,
                         implementation="pallas_gpu")


def mosaic_w4a16(d):
  """The Mosaic GPU W4A16 kernel (`w4a16_mosaic_gpu.py`), M <= 64."""
  return im.w4a16_matmul(d["x"], d["w_packed"], d["w_scales"], bias=d["bias"], implementation="mosaic_gpu",
                         block_sizes=_mosaic_blocks("w4a16", d["x"].shape[0], mosaic_w4a16=True))


def triton_w4a4_lowrank(d, blocks=None):
  return im.w4a4_matmul(d["x"], d["w_packed"], d["w_scales"], lowrank_down=d["down"], lowrank_up=d["up"],
                        bias=d["bias"], block_sizes=blocks, implementation="pallas_gpu")


def mosaic_w4a4(d, code_dtype=None, **changes):
  return im.w4a4_matmul(d["x"], d["w_packed"], d["w_scales"], bias=d["bias"], implementation="mosaic_gpu",
                        block_sizes=_mosaic_blocks("w4a4", d["x"].shape[0], code_dtype, **changes))


def mosaic_w4a4_lowrank(d, code_dtype=None, **changes):
  return im.w4a4_matmul(d["x"], d["w_packed"], d["w_scales"], lowrank_down=d["down"], lowrank_up=d["up"],
                        bias=d["bias"], implementation="mosaic_gpu",
                        block_sizes=_mosaic_blocks("w4a4", d["x"].shape[0], code_dtype, **changes))


def mosaic_w4a4_lowrank_persistent(d):
  """The GEMM with one persistent CTA per SM walking the output tiles."""
  return mosaic_w4a4_lowrank(d, persistent=True)


def mosaic_w4a4_xla_quantize(d):
  """Activation quantization in XLA instead of the Mosaic GPU kernel (the path before the fused quantize kernel)."""
  return mosaic_w4a4(d, fused_quantize=False)


def mosaic_w4a4_lowrank_xla_quantize(d):
  """Activation quantization and the down-projection as two XLA fusions instead of one Mosaic GPU kernel."""
  return mosaic_w4a4_lowrank(d, fused_quantize=False)


def mosaic_w4a4_lowrank_unfused(d, code_dtype=None):
  """The low-rank branch as two separate XLA dots around the kernel: what fusion saves."""
  low = jnp.dot(jnp.dot(d["x"], d["down"]), d["up"], preferred_element_type=jnp.float32)
  return (mosaic_w4a4(d, code_dtype).astype(jnp.float32) + low).astype(jnp.bfloat16)


def mosaic_w8a8(d, **changes):
  return im.w8a8_matmul(d["x"], d["w8"], d["w8_scales"], bias=d["bias"], implementation="mosaic_gpu",
                        block_sizes=_mosaic_blocks("w8a8", d["x"].shape[0], "int8", **changes))


# --- Issue 27: the ping-pong W4A4 kernel (w4a4_pingpong_mosaic_gpu.py) and torch baselines in the same process. ---


def mosaic_w4a4_lowrank_pingpong(d, scales="exact"):
  """The ping-pong GEMM (int4 weights widened in the kernel) with the tuned W4A4 block sizes otherwise."""
  return mosaic_w4a4_lowrank(d, pingpong=True, w4a4_scales=scales)


def _torch_baseline(kind):
  """A torch matmul on the same data, through DLPack (no copy): "bf16" (cuBLAS) or "fp8" (`torch._scaled_mm`, e4m3
  operands quantized per tensor outside the timed call, bf16 output). Only a reference ceiling: torch's launches are
  not inside the jit, so wall time is host-timed per call set (CUDA events around all sets, median of reps)."""
  import torch  # pylint: disable=g-import-not-at-top
  prepared = {}

  def prepare(d):
    key = id(d["x"])
    if key not in prepared:
      x = torch.from_dlpack(d["x"])
      w = torch.from_dlpack(d["w"])
      if kind == "fp8":
        x_scale, w_scale = (t.abs().max().float() / 448.0 for t in (x, w))
        prepared[key] = ((x / x_scale).to(torch.float8_e4m3fn), (w / w_scale).to(torch.float8_e4m3fn).t().contiguous().t(),
                         x_scale, w_scale)
      else:
        prepared[key] = (x, w)
    return prepared[key]

  def run(d):
    operands = prepare(d)
    if kind == "fp8":
      x8, w8, x_scale, w_scale = operands
      return torch._scaled_mm(x8, w8, scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16)
    return operands[0] @ operands[1]

  return run


def time_torch(run, input_sets, reps):
  """Seconds per call of a torch baseline: CUDA events around all input sets, median over reps, after a warmup."""
  import torch  # pylint: disable=g-import-not-at-top
  for d in input_sets:
    run(d)
  torch.cuda.synchronize()
  samples = []
  for _ in range(reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for d in input_sets:
      run(d)
    end.record()
    torch.cuda.synchronize()
    samples.append(start.elapsed_time(end) / 1e3 / len(input_sets))
  return statistics.median(samples)


TORCH_BASELINES = ("torch_bf16", "torch_fp8")
# The opt-in scale modes change the result (tests/kernels/int4_matmul/test_w4a4_pingpong.py); their error against the
# float32 reference is recorded beside their time, checked only against these looser bounds.
FAST_PATH_TOLERANCE = {"mosaic_w4a4_lowrank_pingpong_act128": 0.5, "mosaic_w4a4_lowrank_pingpong_folded": 0.2}
PINGPONG_OPS = [("mosaic_w4a4_lowrank_pingpong", mosaic_w4a4_lowrank_pingpong),
                ("mosaic_w4a4_lowrank_pingpong_act128",
                 functools.partial(mosaic_w4a4_lowrank_pingpong, scales="act128")),
                ("mosaic_w4a4_lowrank_pingpong_folded",
                 functools.partial(mosaic_w4a4_lowrank_pingpong, scales="folded"))]


def bench_torch(row, sets, reps):
  """Adds torch bf16 and torch FP8 times (and their errors against the bf16-input float32 product) to a shape's row;
  a missing torch or CUDA is recorded, not fatal."""
  for name in TORCH_BASELINES:
    try:
      run = _torch_baseline(name.removeprefix("torch_"))
      out = jnp.asarray(jax.dlpack.from_dlpack(run(sets[0]))).astype(jnp.float32)
      want = jnp.dot(sets[0]["x"].astype(jnp.float32), sets[0]["w"].astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
      row["rel_err"][name] = relative_error(out, want)
      row["times_us"][name] = row["wall_us"][name] = 1e6 * time_torch(run, sets, reps)
    except Exception as e:  # torch absent, or no FP8 matmul on this card
      row["times_us"][name] = row["wall_us"][name] = float("nan")
      row["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
      print(f"  {name} failed: {row['errors'][name][:200]}", flush=True)
  base = row["times_us"]["xla_bf16"]
  row["speedup_vs_bf16"] = {name: base / t for name, t in row["times_us"].items()}
  print("  torch: " + " ".join(f"{name}={row['times_us'][name]:9.1f}us({base / row['times_us'][name]:4.2f}x)"
                                for name in TORCH_BASELINES), flush=True)


# --- end of the issue-27 block ---
# ---- W4A16 with the widened weights as wgmma's register operand (`w4a16_rs_mosaic_gpu.py`, issue 27) ----------
# Ops: through ops.py (the blocked weight layout made per call, as a user calling w4a16_matmul gets it), the kernel on
# weights already stored in that layout (what a checkpoint holding it would run), and the two opt-in variants (16-bit
# code loads, bf16 scale multiply). `--sweep rs` times kernel tilings directly.


def mosaic_w4a16_rs(d, **changes):
  """ops.w4a16_matmul with BlockSizes.w4a16_rs: token tile up to 256, 8-deep ring (lowered where it does not fit: 4
  at 256 tokens)."""
  blocks = dataclasses.replace(tuning.MOSAIC_DEFAULT, w4a16_rs=True, block_m=256, num_stages=8, **changes)
  return im.w4a16_matmul(d["x"], d["w_packed"], d["w_scales"], bias=d["bias"], implementation="mosaic_gpu",
                         block_sizes=blocks)


def mosaic_w4a16_rs_upcast2x(d):
  return mosaic_w4a16_rs(d, rs_code_layout="WGMMA_UPCAST_2X")


def mosaic_w4a16_rs_bf16_scale(d):
  return mosaic_w4a16_rs(d, rs_exact_scale=False)


def w4a16_rs_kernel(d, tile_m=None, compute_wgs=2, stages=8, k_splits=None, code_layout="WGMMA", exact_scale=True):
  """The kernel on weights stored in its layout, as int4 codes (`d["w_rs"]`); tile_m / k_splits None: as ops.py
  picks them."""
  rs = w4a16_rs_mosaic_gpu
  x = d["x"]
  (m, k), n = x.shape, d["w_packed"].shape[1]
  tile_m = tile_m or rs.token_tile(m)
  rows = -(-m // tile_m) * tile_m
  k_splits = k_splits or rs.filling_splits(rows // tile_m, n, k, compute_wgs)
  out_dtype = x.dtype if k_splits == 1 else jnp.float32
  stages = rs.deepest_ring(stages, tile_m, compute_wgs, out_dtype, k_splits == 1)
  out = rs.w4a16_rs(jnp.pad(x, ((0, rows - m), (0, 0))), d["w_rs"], d["w_scales"], d["bias"] if k_splits == 1 else None,
                    tile_m=tile_m, compute_wgs=compute_wgs, k_splits=k_splits, stages=stages, code_layout=code_layout,
                    exact_scale=exact_scale)
  if k_splits == 1:
    return out[:m]
  return (out.sum(0).T[:m] + d["bias"].astype(jnp.float32)).astype(x.dtype)


def mosaic_w4a16_rs_preshuffled(d):
  return w4a16_rs_kernel(d)


W4A16_RS_OPS = [("mosaic_w4a16_rs", mosaic_w4a16_rs), ("mosaic_w4a16_rs_preshuffled", mosaic_w4a16_rs_preshuffled),
                ("mosaic_w4a16_rs_upcast2x", mosaic_w4a16_rs_upcast2x),
                ("mosaic_w4a16_rs_bf16_scale", mosaic_w4a16_rs_bf16_scale)]


def _rs_sweep_configs():
  """Kernel tilings of `w4a16_rs_kernel` per shape: token tile, compute warpgroups, ring depth, K splits, code load."""
  small = [dict(), dict(stages=4), dict(stages=16), dict(compute_wgs=4), dict(compute_wgs=1), dict(k_splits=1),
           dict(code_layout="WGMMA_UPCAST_2X"), dict(exact_scale=False)]
  large = [dict(), dict(tile_m=128), dict(tile_m=128, stages=6), dict(stages=3), dict(compute_wgs=3),
           dict(code_layout="WGMMA_UPCAST_2X"), dict(exact_scale=False)]
  return [((16, 3072, 12288), small), ((64, 3072, 12288), small), ((4096, 3072, 12288), large)]


def sweep_rs(key, results, save=lambda: None):
  """`w4a16_rs_kernel` tilings against XLA bf16 in the same process; `save()` after each shape."""
  for (m, k, n), configs in _rs_sweep_configs():
    calls = call_sets(key, m, k, n)
    base = 1e6 * kernel_or_wall(*time_op(xla_bf16, calls, 10))
    results.append(dict(m=m, k=k, n=n, op="xla_bf16", time_us=base))
    print(f"  sweep M={m} K={k} N={n} xla_bf16: {base:8.1f} us", flush=True)
    for config in configs:
      fn = functools.partial(w4a16_rs_kernel, **config)
      try:
        err = relative_error(jax.jit(fn)(calls[0]), reference_output("w4a16", calls[0]))
        t = 1e6 * kernel_or_wall(*time_op(fn, calls, 10))
      except Exception as e:  # a tiling the compiler rejects is a result too
        err, t = float("nan"), float("nan")
        print(f"  {config}: {type(e).__name__}: {str(e)[:300]}")
      results.append(dict(m=m, k=k, n=n, op="w4a16_rs_kernel", config=config, time_us=t, rel_err=err))
      print(f"  sweep M={m} K={k} N={n} w4a16_rs {config}: {t:8.1f} us ({base / t:.2f}x bf16, rel err {err:.2e})",
            flush=True)
    save()

# ---- end of the W4A16 register-operand block --------------------------------------------------------------------


def reference_output(name, d):
  """Float32 reference of what op `name` computes (dequantize, then a HIGHEST-precision dot)."""
  f32 = lambda a: a.astype(jnp.float32)
  dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
  w4 = reference.dequantize_int4(d["w_packed"], d["w_scales"], GROUP, axis=0)
  if "w4a16" in name:
    return dot(f32(d["x"]), w4) + f32(d["bias"])
  if "w8a8" in name:
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
  """(kernel seconds, wall seconds) per call of fn, medians over `reps` runs of all calls inside one jit.

  Kernel time is CUPTI's sum over the kernels the jit launches (None where CUPTI is unavailable): launch gaps
  excluded, which is what separates kernels. Wall time launches the jit `reps` times back to back and blocks
  once, so the host's dispatch overlaps the device work and only shows where it exceeds it.
  """
  many = jax.jit(lambda sets: tuple(fn(d) for d in sets))
  jax.block_until_ready(many(input_sets))
  kernel = _cupti_seconds(many, input_sets, reps)
  samples = []
  for _ in range(3):
    start = time.perf_counter()
    outs = [many(input_sets) for _ in range(reps)]
    jax.block_until_ready(outs)
    samples.append((time.perf_counter() - start) / reps / len(input_sets))
  return (None if kernel is None else kernel / len(input_sets)), statistics.median(samples)


def kernel_or_wall(kernel, wall):
  """The time a table reports: CUPTI kernel time where it was measured, else wall time."""
  return kernel if kernel is not None else wall


def _cupti_seconds(jitted, args, reps):
  """Median CUPTI kernel time of one call of `jitted(args)`, or None if this JAX cannot measure it."""
  try:
    from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
    params = inspect.signature(profiler.measure).parameters
    kwargs = {"mode": "cupti"} if "mode" in params else {}
    if "iterations" in params:
      _, times = profiler.measure(jitted, iterations=reps, **kwargs)(args)
    else:
      times = [profiler.measure(jitted, **kwargs)(args)[1] for _ in range(reps)]
    times = times if isinstance(times, list) else [times]
    return statistics.median(times) / 1e3
  except Exception as e:  # no CUPTI here: report wall time only
    print(f"  (no CUPTI timing: {type(e).__name__}: {str(e)[:120]})")
    return None


def device_bytes(*arrays):
  return sum(a.addressable_data(0).on_device_size_in_bytes() for a in arrays)


def call_sets(key, m, k, n):
  """Distinct input sets for the calls timed together in one jit.

  Enough weight sets that they do not fit in the 50 MB L2 together; at small M, 24 of them, so that the one
  dispatch of the jit is spread over 24 kernels' worth of work. Every call has its own weights: XLA would merge
  the weight unpacking of calls that share them.
  """
  count = 24 if m <= SMALL_M[-1] else min(6, max(3, math.ceil(L2_DEFEAT_BYTES / (k * n * 0.5625))))
  return [make_inputs(jax.random.fold_in(key, i), m, k, n) for i in range(count)]


def bench_shape(m, k, n, ops, reps, key, results, tolerance, torch_baselines=False):
  sets = call_sets(key, m, k, n)
  n_sets = len(sets)
  row = dict(m=m, k=k, n=n, calls_per_jit=n_sets, times_us={}, wall_us={}, rel_err={}, errors={})
  for name, fn in ops:
    slow = name.startswith("xla_int4_x_int4")
    # An op that fails to compile, run or match the reference is recorded and skipped, not timed, and the run goes
    # on: one new kernel's error must not cost the device call its other measurements.
    try:
      if not name.startswith("xla_"):
        row["rel_err"][name] = relative_error(jax.jit(fn)(sets[0]), reference_output(name, sets[0]))
        if not row["rel_err"][name] < FAST_PATH_TOLERANCE.get(name, tolerance):
          raise AssertionError(f"relative error {row['rel_err'][name]:.3g} against the reference (tolerance "
                               f"{tolerance})")
      kernel, wall = time_op(fn, sets[:1] if slow else sets, 2 if slow else reps)
      row["times_us"][name] = 1e6 * kernel_or_wall(kernel, wall)
      row["wall_us"][name] = 1e6 * wall
    except Exception as e:  # also: XLA has no int4 x int4 dot on some backends
      row["times_us"][name] = row["wall_us"][name] = float("nan")
      row["errors"][name] = f"{type(e).__name__}: {str(e)[:500]}"
      print(f"  {name} failed: {row['errors'][name][:300]}", flush=True)
  d = sets[0]
  row["weight_bytes"] = dict(
      bf16=device_bytes(d["w"]), int4_packed_plus_scales=device_bytes(d["w_packed"], d["w_scales"]),
      xla_int4=device_bytes(d["w_int4"], d["w_scales"]), int8=device_bytes(d["w8"], d["w8_scales"]))
  base = row["times_us"]["xla_bf16"]
  row["speedup_vs_bf16"] = {name: base / t for name, t in row["times_us"].items()}
  if torch_baselines:
    bench_torch(row, sets, reps)
  results.append(row)
  print(f"M={m:5d} K={k:5d} N={n:5d} " + " ".join(
      f"{name}={t:9.1f}us({base / t:4.2f}x)" for name, t in row["times_us"].items()), flush=True)
  return row


def _sweep_configs():
  """W4A16 tilings to sweep, by name: the 16-row dot at M = 16 (W4A16's goal is at M <= 64) and the CUDA-core GEMV
  at M = 1, where the dot's decode tiling is the baseline. K splits are reduced to a divisor of the group count."""
  dot = [tuning.BlockSizes(block_m=16, block_n=bn, block_k=bk, k_splits=s, num_warps=w, num_stages=4)
         for bn, bk, s, w in ((64, 128, 4, 4), (64, 128, 8, 4), (128, 128, 8, 4), (64, 256, 8, 4), (128, 256, 12, 8),
                              (32, 128, 8, 4), (256, 128, 12, 8), (64, 128, 16, 4), (128, 128, 16, 4),
                              (64, 64, 16, 4))]
  gemv = [tuning.BlockSizes(block_m=16, block_n=128, block_k=128, k_splits=16, num_warps=4, num_stages=4)]
  gemv += [tuning.BlockSizes(block_n=bn, block_k=bk, k_splits=s, num_warps=w, num_stages=4, gemv=True)
           for bn, bk, s, w in ((128, 256, 16, 4), (256, 128, 16, 4), (128, 128, 32, 4), (256, 128, 32, 4),
                                (128, 256, 32, 4), (64, 128, 16, 2), (128, 128, 24, 4), (256, 128, 64, 4),
                                (256, 128, 96, 4), (128, 128, 96, 4))]
  return {"dot": ([(16, 3072, 12288), (16, 12288, 3072)], dot), "gemv": ([(1, k, n) for k, n in KN], gemv)}


def sweep_blocks(key, results, only=(), save=lambda: None):
  """W4A16 tilings of the Triton kernels (`_sweep_configs`, only the named sweeps if given); `save()` after each
  shape."""
  for name, (shapes, configs) in _sweep_configs().items():
    if only and name not in only:
      continue
    for m, k, n in shapes:
      calls = call_sets(key, m, k, n)
      base = 1e6 * kernel_or_wall(*time_op(xla_bf16, calls, 10))
      results.append(dict(m=m, k=k, n=n, op="xla_bf16", time_us=base))
      print(f"  sweep M={m} K={k} N={n} xla_bf16: {base:8.1f} us", flush=True)
      for blocks in configs:
        try:
          t = 1e6 * kernel_or_wall(*time_op(functools.partial(triton_w4a16, blocks=blocks), calls, 10))
        except Exception as e:  # a tiling the compiler rejects (shared memory, registers) is a result too
          t = float("nan")
          print(f"  {blocks}: {type(e).__name__}: {str(e)[:200]}")
        results.append(dict(m=m, k=k, n=n, op="triton_w4a16", blocks=blocks.__dict__, time_us=t))
        print(f"  sweep M={m} K={k} N={n} triton_w4a16 {'gemv' if blocks.gemv else 'dot'} bn={blocks.block_n} "
              f"bk={blocks.block_k} splits={blocks.k_splits} warps={blocks.num_warps}: {t:8.1f} us "
              f"({base / t:.2f}x bf16)", flush=True)
      save()


def breakdown(key, results, only=(), save=lambda: None, m=4096, k=3072, n=12288):
  """Each stage of the Mosaic GPU W4A4 path timed alone at one large shape, and kernel variants (`only` those if
  given); `save()` after each."""
  calls = call_sets(key, m, k, n)
  fp8 = jnp.float8_e4m3fn
  for d in calls:
    codes, scales = reference.quantize_codes(d["x"], GROUP)
    d["codes"], d["a_scales_t"] = codes, scales.T
    d["w_codes"] = reference.unpack_int4(d["w_packed"], axis=0).T
    d["codes_fp8"], d["w_codes_fp8"] = (int4_ops.codes_as(c, fp8) for c in (d["codes"], d["w_codes"]))
    d["down_padded"], d["up_padded"] = int4_ops._pad_rank(d["down"], d["up"], kernel_mosaic_gpu.RANK_MULTIPLE)
    d["low"] = jnp.dot(d["x"], d["down_padded"], preferred_element_type=jnp.float32).astype(jnp.bfloat16)

  def gemm(d, code_dtype="float8_e4m3fn", lowrank=False, tile_n=128, stages=8):
    suffix = "_fp8" if code_dtype == "float8_e4m3fn" else ""
    return kernel_mosaic_gpu.grouped_gemm(
        d["codes" + suffix], d["w_codes" + suffix], d["a_scales_t"], d["w_scales"],
        d["low"] if lowrank else None, d["up_padded"] if lowrank else None, d["bias"], group_size=GROUP,
        out_dtype=jnp.bfloat16, tile_n=tile_n, stages=stages)

  def w8a8_group_k(d, stages):
    """The same kernel with one group spanning K: W8A8's structure, no per-group rescale."""
    return kernel_mosaic_gpu.grouped_gemm(
        d["codes"], d["w_codes"], d["a_scales_t"][:1], d["w_scales"][:1], None, None, d["bias"], group_size=k,
        out_dtype=jnp.bfloat16, tile_n=128, stages=stages)

  def fused_quantize(d, down):
    """As ops.py runs it: K split to fill the GPU, the partial down-projections added up."""
    codes, scales, low = quantize_mosaic_gpu.quantize_activations(
        d["x"], None, down, code_dtype=fp8, k_splits=quantize_mosaic_gpu.filling_splits(m, k))
    return codes, scales, None if low is None else low.sum(0).astype(jnp.bfloat16)

  stages = {
      "xla_bf16": xla_bf16,
      "xla_quantize_activations": lambda d: reference.quantize_codes(d["x"], GROUP),
      "xla_unpack_weights": lambda d: reference.unpack_int4(d["w_packed"], axis=0).T,
      "xla_quantize_activations_e4m3": lambda d: int4_ops.codes_as(reference.quantize_codes(d["x"], GROUP)[0], fp8),
      "xla_unpack_weights_e4m3": lambda d: int4_ops.codes_as(reference.unpack_int4(d["w_packed"], axis=0).T, fp8),
      "xla_kmajor_weights_int4": lambda d: w4a4_pingpong_mosaic_gpu.kmajor_weights(d["w_packed"]),  # issue 27
      "xla_down_projection": lambda d: jnp.dot(d["x"], d["down"], preferred_element_type=jnp.float32),
      "mosaic_quantize_down_e4m3_unsplit": lambda d: quantize_mosaic_gpu.quantize_activations(
          d["x"], None, d["down_padded"], code_dtype=fp8),
      "mosaic_quantize_down_e4m3": lambda d: fused_quantize(d, d["down_padded"]),
      "mosaic_quantize_e4m3": lambda d: fused_quantize(d, None),
      "gemm_int8": functools.partial(gemm, code_dtype="int8"),
      "gemm_fp8": gemm,
      "gemm_fp8_lowrank": functools.partial(gemm, lowrank=True),
      "gemm_fp8_stages4": functools.partial(gemm, stages=4),
      "gemm_fp8_stages6": functools.partial(gemm, stages=6),
      "gemm_w8a8_int8_group_k": functools.partial(w8a8_group_k, stages=4),
      "gemm_w8a8_int8_group_k_stages8": functools.partial(w8a8_group_k, stages=8),
  }
  ops = 2 * m * k * n
  for name, fn in stages.items():
    if only and name not in only:
      continue
    try:
      kernel, wall = time_op(fn, calls, 10)
    except Exception as e:  # a variant the compiler rejects is a result too
      kernel, wall = None, float("nan")
      print(f"  {name}: {type(e).__name__}: {str(e)[:300]}")
    t = kernel_or_wall(kernel, wall)
    results.append(dict(m=m, k=k, n=n, stage=name, time_us=1e6 * t, wall_us=1e6 * wall))
    print(f"  stage {name:28s} {1e6 * t:9.1f} us (wall {1e6 * wall:9.1f})  {ops / t / 1e12:7.1f} T(FL)OP/s-equivalent",
          flush=True)
    save()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true", help="two shapes, all kernels: a smoke test")
  parser.add_argument("--shapes", choices=("all", "large", "small"), default="all",
                      help="which M of the full plan (a device call may not fit both)")
  parser.add_argument("--m", type=int, nargs="*", help="only these M of the plan")
  parser.add_argument("--ops", nargs="*", help="only these ops of the plan (xla_bf16 is always kept)")
  parser.add_argument("--kn", nargs="*", help="only these K x N of the plan, written KxN (3072x12288)")
  parser.add_argument("--sweep", nargs="*", choices=("dot", "gemv", "rs"),
                      help="also time a few W4A16 tilings (only the named sweeps, if any; rs: the register-operand "
                           "kernel)")
  parser.add_argument("--breakdown", nargs="*", metavar="STAGE",
                      help="also time each Mosaic stage alone at one shape (only the named stages, if any)")
  parser.add_argument("--torch", action="store_true",
                      help="also time torch bf16 and torch FP8 (_scaled_mm) on the same data, per shape")
  parser.add_argument("--out",
                      default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "int4_matmul_run.json"))
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
  key = jax.random.key(0)
  large_ops = [("xla_bf16", xla_bf16), ("xla_w4a16", xla_w4a16), ("triton_w4a16", triton_w4a16),
               ("mosaic_w4a4", mosaic_w4a4), ("mosaic_w4a4_int8", functools.partial(mosaic_w4a4, code_dtype="int8")),
               ("mosaic_w4a4_lowrank", mosaic_w4a4_lowrank),
               ("mosaic_w4a4_xla_quantize", mosaic_w4a4_xla_quantize),
               ("mosaic_w4a4_lowrank_xla_quantize", mosaic_w4a4_lowrank_xla_quantize),
               ("mosaic_w4a4_lowrank_persistent", mosaic_w4a4_lowrank_persistent),
               ("mosaic_w4a4_lowrank_unfused", mosaic_w4a4_lowrank_unfused), ("mosaic_w8a8", mosaic_w8a8)]
  large_ops += PINGPONG_OPS
  large_ops += W4A16_RS_OPS
  small_ops = [("xla_bf16", xla_bf16), ("xla_w4a16", xla_w4a16), ("triton_w4a16", triton_w4a16),
               ("mosaic_w4a16", mosaic_w4a16),
               ("mosaic_w4a4_lowrank", mosaic_w4a4_lowrank), ("mosaic_w8a8", mosaic_w8a8)]
  small_ops += W4A16_RS_OPS
  triton_w4a4 = [("triton_w4a4_lowrank", triton_w4a4_lowrank)]  # the pre-Mosaic path, in --quick only
  # Quantized outputs differ from the reference only by float32 summation order and bf16 operand rounding.
  tolerance = 2e-2
  rows, sweep = [], []
  if args.quick:
    plan = [(4608, 3072, 3072, large_ops + triton_w4a4 + [("xla_int4_x_int4", xla_int4_x_int4),
                                                          ("xla_int4_x_int4_to_int4", xla_int4_x_int4_to_int4)]),
            (1, 3072, 3072, small_ops + triton_w4a4)]
  else:
    plan = []
    if args.shapes in ("all", "large"):
      plan += [(m, k, n, large_ops + ([("xla_int4_x_int4", xla_int4_x_int4)] if m == 4096 else []))
               for m in LARGE_M for k, n in KN]
    if args.shapes in ("all", "small"):
      plan += [(m, k, n, small_ops) for m in SMALL_M for k, n in KN]
  if args.m:
    plan = [entry for entry in plan if entry[0] in args.m]
  if args.kn:
    plan = [entry for entry in plan if f"{entry[1]}x{entry[2]}" in args.kn]
  if args.ops:
    plan = [(m, k, n, [op for op in ops if op[0] in args.ops or op[0] == "xla_bf16"]) for m, k, n, ops in plan]
  started = time.time()

  def save():
    """Writes everything measured so far: a run cut short by a time limit keeps its finished shapes."""
    report = dict(device=device.device_kind, jax=jax.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  group_size=GROUP, rank=RANK, seconds=round(time.time() - started, 1), shapes=rows, sweep=sweep)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
    return report

  if args.breakdown is not None:
    breakdown(key, sweep, only=args.breakdown, save=save)
  for m, k, n, ops in plan:
    bench_shape(m, k, n, ops, 2 if args.quick else 15, jax.random.fold_in(key, m * 7 + k + n), rows, tolerance,
                torch_baselines=args.torch)
    save()
  if args.sweep is not None:
    sweep_blocks(key, sweep, only=args.sweep, save=save)
  if args.sweep is not None and (not args.sweep or "rs" in args.sweep):
    sweep_rs(key, sweep, save=save)
  print(f"wrote {args.out} ({save()['seconds']} s)")


if __name__ == "__main__":
  main()
