"""Measure-first microbenchmarks for issue 27: what 4-bit storage can reach on this card, before building for it.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/int4_ceiling.py [--parts fp8 mma] [--m 1 16 64 4096]
            [--kn 3072x3072 ...] [--out PATH]
            CPU check (imports, arguments, the plan, the Pallas mma kernels lowered for CUDA; nothing timed):
            PYTHONPATH=. python3 experiments/bench/int4_ceiling.py --quick
  hardware  one NVIDIA H100 80GB (nvidia-h100-x1); the mma part's CUDA C++ half needs nvcc (the device machine has
            it), its SASS dump cuobjdump or nvdisasm
  wall time not measured yet; estimated 2-4 min (16 shapes x 5 dots, compilation included, and three nvcc builds)
  expected  not measured. On the H100, CUDA 13.0's ptxas turns `mma.sync` m16n8k64 s4.s4 and u4.s4 into a call to a
            ~190-instruction subroutine that unpacks the nibbles (LOP3/SHF) and issues two IMMA.16832.S8.S8
            (`int4_matmul_notes.md`, read off the cubin on a CPU machine), so s4 should run well below s8.

Two parts, each row written to the JSON (--out, default int4_ceiling_run.json beside this script) as it finishes:

fp8  The FP8 ceiling: e4m3 GEMMs against bf16 at FLUX.1 linear shapes (K x N in {3072 x 3072, 3072 x 12288,
     12288 x 3072, 3072 x 15360}, M in {1, 16, 64, 4096}), in one process on one card:
     - torch: `a @ b` in bf16 and `torch._scaled_mm` on e4m3 operands with per-tensor float32 scales, bf16 out (M
       padded to 16, which _scaled_mm requires; the padding is inside the timed call);
     - XLA: the bf16 dot, an e4m3 x e4m3 dot with float32 result scaled afterwards (`xla_e4m3_dot`), and the
       dequantize-then-dot pattern that XLA's GEMM rewriter turns into a scaled FP8 cuBLASLt call
       (`xla_e4m3_scaled`).
     Each op runs over enough distinct weight sets that they do not fit in the 50 MB L2; torch is timed with CUDA
     events around back-to-back calls (median of repetitions, per call), XLA by CUPTI kernel time and wall time
     (`int4_matmul.time_op`). Output error against a float32 product of the same e4m3 values is recorded.
mma  Whether `mma.sync` with 4-bit operands has any useful rate on sm_90: register-only loops (8 independent
     accumulators per warp, operands loaded once) of
     - Pallas Mosaic GPU `plgpu.mma` on int8 (m16n8k32 s8.s8), int4 (m16n8k64 s4.s4) and bf16 (m16n8k16), one
       warpgroup per CTA, 4 CTAs per SM;
     - CUDA C++ inline PTX (`torch.utils.cpp_extension.load_inline`, when nvcc is on the PATH) of s8.s8 m16n8k32,
       s4.s4 and u4.s4 m16n8k64, built for sm_90a, with the SASS opcode counts of each kernel (cuobjdump or
       nvdisasm, when present).
     Reported as tera-ops per second (2 * 16 * 8 * K per mma instruction) and the 4-bit rate over the s8 one.

Imports jax, numpy and torch (each part skips what its machine lacks, saying so) and `int4_matmul.py` beside it.
"""

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.pallas import mosaic_gpu as plgpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import int4_matmul  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from pallas_kernels import mosaic_gpu_compat as compat  # noqa: E402  pylint: disable=g-import-not-at-top

MS = (1, 16, 64, 4096)
KN = ((3072, 3072), (3072, 12288), (12288, 3072), (3072, 15360))
L2_DEFEAT_BYTES = 120e6
E4M3_MAX = 448.0
SCALED_MM_MULTIPLE = 16

# ---------------------------------------------------------------------------------------------------------------
# fp8: the FP8 ceiling
# ---------------------------------------------------------------------------------------------------------------


def weight_sets(k, n):
  """Distinct weight sets so that the e4m3 weights of all of them exceed the L2 (bf16 ones, twice that)."""
  return max(3, math.ceil(L2_DEFEAT_BYTES / (k * n)))


def _e4m3(a):
  """Per-tensor e4m3: (codes, float32 scale) with the tensor's max mapped to 448."""
  scale = jnp.maximum(jnp.max(jnp.abs(a.astype(jnp.float32))), 1e-12) / E4M3_MAX
  return (a.astype(jnp.float32) / scale).astype(jnp.float8_e4m3fn), scale


def jax_inputs(key, m, k, n, count):
  sets = []
  for i in range(count):
    kx, kw = jax.random.split(jax.random.fold_in(key, i))
    x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)
    w = (jax.random.normal(kw, (k, n), jnp.float32) / math.sqrt(k)).astype(jnp.bfloat16)
    x8, sx = _e4m3(x)
    w8, sw = _e4m3(w)
    sets.append(dict(x=x, w=w, x8=x8, w8=w8, sx=sx, sw=sw))
  return sets


def xla_bf16(d):
  return jnp.dot(d["x"], d["w"], preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def xla_e4m3_dot(d):
  acc = lax.dot(d["x8"], d["w8"], preferred_element_type=jnp.float32)
  return (acc * (d["sx"] * d["sw"])).astype(jnp.bfloat16)


def xla_e4m3_scaled(d):
  x = d["x8"].astype(jnp.bfloat16) * d["sx"].astype(jnp.bfloat16)
  w = d["w8"].astype(jnp.bfloat16) * d["sw"].astype(jnp.bfloat16)
  return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def e4m3_reference(d):
  """The float32 product of the e4m3 values the FP8 ops multiply."""
  x = d["x8"].astype(jnp.float32) * d["sx"]
  w = d["w8"].astype(jnp.float32) * d["sw"]
  return jnp.dot(x, w, precision=lax.Precision.HIGHEST)


def bf16_reference(d):
  """The float32 product of the bf16 operands."""
  return jnp.dot(d["x"].astype(jnp.float32), d["w"].astype(jnp.float32), precision=lax.Precision.HIGHEST)


def relative_error(out, ref):
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def torch_times(sets, m, reps):
  """{op: (µs per call, relative error)} for torch bf16 and _scaled_mm e4m3, or a reason string."""
  import torch  # pylint: disable=g-import-not-at-top
  if not torch.cuda.is_available():
    return "torch sees no CUDA device"
  dev = torch.device("cuda")
  tsets = []
  for d in sets:
    as_torch = lambda a: torch.from_numpy(np.asarray(a.astype(jnp.float32))).to(dev)
    x8 = as_torch(d["x8"]).to(torch.float8_e4m3fn)
    rows = -(-m // SCALED_MM_MULTIPLE) * SCALED_MM_MULTIPLE
    tsets.append(dict(x=as_torch(d["x"]).to(torch.bfloat16), w=as_torch(d["w"]).to(torch.bfloat16), x8=x8,
                      rows=rows, w8_t=as_torch(d["w8"]).to(torch.float8_e4m3fn).t().contiguous().t(),
                      sx=torch.tensor(float(d["sx"]), device=dev), sw=torch.tensor(float(d["sw"]), device=dev)))

  def bf16(t):
    return t["x"] @ t["w"]

  def scaled_mm(t):
    x8 = t["x8"]
    if t["rows"] != x8.shape[0]:
      x8 = torch.nn.functional.pad(x8.view(torch.uint8), (0, 0, 0, t["rows"] - x8.shape[0])).view(torch.float8_e4m3fn)
    out = torch._scaled_mm(x8, t["w8_t"], scale_a=t["sx"], scale_b=t["sw"], out_dtype=torch.bfloat16)  # pylint: disable=protected-access
    return out[:m]

  results = {}
  for name, fn in (("torch_bf16", bf16), ("torch_scaled_mm_e4m3", scaled_mm)):
    try:
      ref = e4m3_reference(sets[0]) if "e4m3" in name else bf16_reference(sets[0])
      err = relative_error(fn(tsets[0]).float().cpu().numpy(), ref)
      results[name] = (int4_matmul.time_torch(fn, tsets, reps) * 1e6, err)  # µs per call
    except Exception as e:  # an op this torch or card lacks is a result too
      results[name] = f"{type(e).__name__}: {str(e)[:300]}"
  return results


def fp8_rows(ms, kns, reps, key, rows, save):
  for k, n in kns:
    for m in ms:
      sets = jax_inputs(jax.random.fold_in(key, m * 7 + k + n), m, k, n, weight_sets(k, n))
      row = dict(part="fp8", m=m, k=k, n=n, calls=len(sets), kernel_us={}, wall_us={}, rel_err={}, errors={})
      for name, fn in (("xla_bf16", xla_bf16), ("xla_e4m3_dot", xla_e4m3_dot), ("xla_e4m3_scaled", xla_e4m3_scaled)):
        try:
          ref = e4m3_reference(sets[0]) if "e4m3" in name else bf16_reference(sets[0])
          row["rel_err"][name] = relative_error(jax.jit(fn)(sets[0]).astype(jnp.float32), ref)
          kernel, wall = int4_matmul.time_op(fn, sets, reps)
          row["kernel_us"][name] = None if kernel is None else 1e6 * kernel
          row["wall_us"][name] = 1e6 * wall
        except Exception as e:  # e.g. no e4m3 dot on this backend
          row["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
      torch_result = torch_times(sets, m, reps)
      if isinstance(torch_result, str):
        row["errors"]["torch"] = torch_result
      else:
        for name, result in torch_result.items():
          if isinstance(result, str):
            row["errors"][name] = result
          else:
            row["wall_us"][name], row["rel_err"][name] = result
      ratio = lambda num, den, table: (table[num] / table[den] if table.get(num) and table.get(den) else None)
      row["speedup"] = {
          "xla_e4m3_dot_vs_xla_bf16_kernel": ratio("xla_bf16", "xla_e4m3_dot", row["kernel_us"]),
          "xla_e4m3_scaled_vs_xla_bf16_kernel": ratio("xla_bf16", "xla_e4m3_scaled", row["kernel_us"]),
          "xla_e4m3_dot_vs_xla_bf16_wall": ratio("xla_bf16", "xla_e4m3_dot", row["wall_us"]),
          "torch_scaled_mm_vs_torch_bf16": ratio("torch_bf16", "torch_scaled_mm_e4m3", row["wall_us"])}
      rows.append(row)
      save()
      fmt = lambda v: "  n/a" if v is None else f"{v:5.2f}x"
      print(f"fp8 M={m:5d} K={k:5d} N={n:5d}  " + "  ".join(
          f"{name}={t:8.1f}us" for name, t in row["wall_us"].items()) + "  | e4m3/bf16: XLA kernel " +
            fmt(row["speedup"]["xla_e4m3_dot_vs_xla_bf16_kernel"]) + ", scaled " +
            fmt(row["speedup"]["xla_e4m3_scaled_vs_xla_bf16_kernel"]) + ", torch " +
            fmt(row["speedup"]["torch_scaled_mm_vs_torch_bf16"]), flush=True)
      for name, error in row["errors"].items():
        print(f"  {name}: {error[:200]}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# mma: mma.sync rates, Pallas and CUDA C++
# ---------------------------------------------------------------------------------------------------------------

PALLAS_MMA = {"s8.s8 m16n8k32": jnp.int8, "s4.s4 m16n8k64": jnp.int4, "bf16 m16n8k16": jnp.bfloat16}
MMA_N = 64  # accumulator columns: 8 independent m16n8 tiles per warp
MMA_K_TILES = 4  # k tiles per loop iteration


def _mma_k(dtype):
  return MMA_K_TILES * 256 // jnp.iinfo(dtype).bits if jnp.issubdtype(dtype, jnp.integer) else MMA_K_TILES * 16


def pallas_mma_loop(dtype, iters, ctas):
  """A warpgroup per CTA multiplying [64, K] by [K, 64] `iters` times into one accumulator, operands in registers;
  the accumulator is written out so nothing is dead. Returns the function of (a [64, K], b [64, K])."""
  acc_dtype = jnp.int32 if jnp.issubdtype(dtype, jnp.integer) else jnp.float32

  def body(a_ref, b_ref, out_ref):
    a = plgpu.load(a_ref, layout=plgpu.Layout.MMA_LHS(dtype), optimized=False)
    b = plgpu.load(compat.transposed(b_ref), layout=plgpu.Layout.MMA_RHS(dtype), optimized=False)
    acc = plgpu.layout_cast(jnp.zeros((64, MMA_N), acc_dtype), plgpu.Layout.MMA_ACC(dtype))
    acc = lax.fori_loop(0, iters, lambda _, acc: plgpu.mma(acc, a, b), acc)
    out_ref.at[lax.axis_index("cta")][...] = acc

  return compat.launch(body, out=jax.ShapeDtypeStruct((ctas, 64, MMA_N), acc_dtype), scratch=[], grid=(ctas,),
                       grid_names=("cta",), num_threads=1)


def pallas_mma_operands(dtype):
  k = _mma_k(dtype)
  rng = np.random.default_rng(0)
  if jnp.issubdtype(dtype, jnp.integer):
    info = jnp.iinfo(dtype)
    a, b = (rng.integers(info.min, info.max + 1, shape) for shape in ((64, k), (MMA_N, k)))
  else:
    a, b = (rng.uniform(-1, 1, shape) for shape in ((64, k), (MMA_N, k)))
  return jnp.asarray(a).astype(dtype), jnp.asarray(b).astype(dtype)


def pallas_mma_rows(iters, rows, save, multiprocessors):
  ctas = 4 * multiprocessors
  for name, dtype in PALLAS_MMA.items():
    row = dict(part="mma", source="pallas", instruction=name)
    try:
      fn = jax.jit(pallas_mma_loop(dtype, iters, ctas))
      a, b = pallas_mma_operands(dtype)
      out = fn(a, b)
      if jnp.issubdtype(dtype, jnp.integer):  # one iteration's product, times iters, wraps like the int32 sums
        once = np.asarray(a, np.int64) @ np.asarray(b, np.int64).T
        row["correct"] = bool(np.array_equal(np.asarray(out[0], np.int64), (once * iters + 2**31) % 2**32 - 2**31))
      samples = []
      for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(fn(a, b))
        samples.append(time.perf_counter() - start)
      seconds = statistics.median(samples)
      ops = 2 * 64 * MMA_N * _mma_k(dtype) * iters * ctas
      row.update(seconds=seconds, tops=ops / seconds / 1e12, ctas=ctas, iters=iters)
    except Exception as e:  # an instruction this JAX cannot lower is a result too
      row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    rows.append(row)
    save()
    print(f"mma pallas {name:16s} " + (f"{row['tops']:8.1f} TOP/s (correct: {row.get('correct')})" if "tops" in row
                                      else row["error"][:200]), flush=True)


CUDA_SOURCE = r"""
#include <torch/extension.h>
#define MMA_INT(SHAPE, TA, TB)                                                                                      \
  asm volatile("mma.sync.aligned." SHAPE ".row.col.s32." TA "." TB ".s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, " \
               "{%0,%1,%2,%3};"                                                                                     \
               : "+r"(acc[j][0]), "+r"(acc[j][1]), "+r"(acc[j][2]), "+r"(acc[j][3])                                 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
#define KERNEL(NAME, SHAPE, TA, TB)                                                                                 \
  __global__ void NAME##_kernel(const unsigned *in, int *out, int iters) {                                          \
    unsigned a[4], b[2];                                                                                            \
    for (int i = 0; i < 4; ++i) a[i] = in[(threadIdx.x + i) % 64];                                                  \
    for (int i = 0; i < 2; ++i) b[i] = in[(threadIdx.x + 7 * i) % 64];                                             \
    int acc[8][4] = {};                                                                                             \
    for (int it = 0; it < iters; ++it) {                                                                            \
      _Pragma("unroll") for (int j = 0; j < 8; ++j) { MMA_INT(SHAPE, TA, TB); }                                     \
    }                                                                                                               \
    int s = 0;                                                                                                      \
    for (int j = 0; j < 8; ++j) s += acc[j][0] + acc[j][1] + acc[j][2] + acc[j][3];                                  \
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;                                                                 \
  }                                                                                                                 \
  void NAME(torch::Tensor in, torch::Tensor out, int64_t iters, int64_t blocks, int64_t threads) {                  \
    NAME##_kernel<<<blocks, threads>>>((const unsigned *)in.data_ptr<int>(), out.data_ptr<int>(), (int)iters);      \
  }
KERNEL(mma_s8_s8_m16n8k32, "m16n8k32", "s8", "s8")
KERNEL(mma_s4_s4_m16n8k64, "m16n8k64", "s4", "s4")
KERNEL(mma_u4_s4_m16n8k64, "m16n8k64", "u4", "s4")
"""
CUDA_KERNELS = {"mma_s8_s8_m16n8k32": 32, "mma_s4_s4_m16n8k64": 64, "mma_u4_s4_m16n8k64": 64}
CUDA_DECLARATIONS = "".join(f"void {name}(torch::Tensor in, torch::Tensor out, int64_t iters, int64_t blocks, "
                            f"int64_t threads);\n" for name in CUDA_KERNELS)


def sass_opcodes(binary):
  """{kernel or subroutine: {opcode: count}} of a binary's SASS, via cuobjdump or nvdisasm; or a reason string."""
  import collections  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  tool = shutil.which("cuobjdump")
  if tool:
    text = subprocess.run([tool, "-sass", binary], capture_output=True, text=True, timeout=120).stdout
  elif shutil.which("nvdisasm"):
    return "nvdisasm needs a cubin; only cuobjdump reads the extension's fat binary"
  else:
    return "no cuobjdump or nvdisasm on the PATH"
  counts, current = collections.defaultdict(collections.Counter), None
  for line in text.splitlines():
    header = re.match(r"\s*(?:Function|\.text\.)\s*:?\s*(\S+)", line) or re.match(r"^(\$?\w[\w$]*):\s*$", line)
    if header:
      current = header.group(1)
      continue
    op = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)", line)
    if op and current:
      counts[current][op.group(1)] += 1
  return {name: dict(c.most_common(15)) for name, c in counts.items()}


def cuda_mma_rows(iters, rows, save, multiprocessors):
  """The inline-PTX kernels through torch's extension loader, where nvcc and a CUDA device are there."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from torch.utils import cpp_extension  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    rows.append(dict(part="mma", source="cuda", error=f"no torch: {e}"))
    return
  if shutil.which("nvcc") is None or not torch.cuda.is_available():
    rows.append(dict(part="mma", source="cuda", error="needs nvcc on the PATH and a CUDA device"))
    save()
    print("mma cuda: skipped (needs nvcc and a CUDA device)", flush=True)
    return
  build = tempfile.mkdtemp(prefix="int4_ceiling_")
  try:
    module = cpp_extension.load_inline(
        name="int4_ceiling_mma", cpp_sources=CUDA_DECLARATIONS, cuda_sources=CUDA_SOURCE,
        functions=list(CUDA_KERNELS), build_directory=build,
        extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"], verbose=False)
  except Exception as e:  # a build failure is a result too
    rows.append(dict(part="mma", source="cuda", error=f"build: {type(e).__name__}: {str(e)[-600:]}"))
    save()
    print(f"mma cuda: build failed: {str(e)[-300:]}", flush=True)
    return
  binary = os.path.join(build, "int4_ceiling_mma.so")
  sass = sass_opcodes(binary) if os.path.exists(binary) else f"no {binary}"
  rows.append(dict(part="mma", source="cuda", sass_opcodes=sass))
  save()
  blocks, threads = 8 * multiprocessors, 256
  operand = torch.randint(-2**31, 2**31 - 1, (64,), dtype=torch.int32, device="cuda")
  out = torch.empty(blocks * threads, dtype=torch.int32, device="cuda")
  for name, k in CUDA_KERNELS.items():
    fn = getattr(module, name)
    seconds = int4_matmul.time_torch(lambda _: fn(operand, out, iters, blocks, threads), [None], reps=5)
    instructions = blocks * threads // 32 * iters * 8
    row = dict(part="mma", source="cuda", instruction=name, seconds=seconds, mma_per_s=instructions / seconds,
               tops=instructions * 2 * 16 * 8 * k / seconds / 1e12, blocks=blocks, threads=threads, iters=iters)
    rows.append(row)
    save()
    print(f"mma cuda {name:20s} {row['tops']:8.1f} TOP/s ({row['mma_per_s'] / 1e12:.3f} T mma/s)", flush=True)
  if isinstance(sass, dict):
    for name, ops in sass.items():
      print(f"  SASS {name}: {ops}", flush=True)


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="no timing: import, check the arguments and the plan, lower the Pallas mma kernels for "
                           "CUDA (works on a CPU machine)")
  parser.add_argument("--parts", nargs="+", choices=("fp8", "mma"), default=("fp8", "mma"))
  parser.add_argument("--m", type=int, nargs="+", default=MS, help="token counts of the fp8 part")
  parser.add_argument("--kn", nargs="+", default=[f"{k}x{n}" for k, n in KN], help="K x N of the fp8 part, KxN")
  parser.add_argument("--reps", type=int, default=20, help="timed repetitions per op (medians)")
  parser.add_argument("--mma-iters", type=int, default=4096, help="loop iterations of the mma kernels")
  parser.add_argument("--out",
                      default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "int4_ceiling_run.json"))
  args = parser.parse_args(argv)
  try:
    kns = [tuple(int(v) for v in kn.lower().split("x")) for kn in args.kn]
  except ValueError:
    parser.error(f"--kn takes KxN pairs such as 3072x12288, got {args.kn}")
  if any(len(kn) != 2 or min(kn) < 1 for kn in kns) or min(args.m) < 1 or args.reps < 1 or args.mma_iters < 1:
    parser.error("--kn needs positive KxN pairs; --m, --reps and --mma-iters positive numbers")
  device = jax.devices()[0]
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch_version = torch.__version__
  except ImportError:
    torch_version = None
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, torch {torch_version}, "
        f"nvcc {shutil.which('nvcc')}, cuobjdump {shutil.which('cuobjdump')}", flush=True)
  rows = []
  started = time.time()

  def save():
    report = dict(device=device.device_kind, platform=device.platform, jax=jax.__version__, torch=torch_version,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  seconds=round(time.time() - started, 1), quick=args.quick, rows=rows)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)

  plan = [(m, k, n) for k, n in kns for m in args.m] if "fp8" in args.parts else []
  if args.quick:
    for name, dtype in PALLAS_MMA.items():
      a, b = pallas_mma_operands(dtype)
      try:
        jax.jit(pallas_mma_loop(dtype, 2, 4)).trace(a, b).lower(lowering_platforms=("cuda",))
        rows.append(dict(part="mma", source="pallas", instruction=name, lowered=True))
      except Exception as e:  # reported, not fatal: the point of --quick is the script itself
        rows.append(dict(part="mma", source="pallas", instruction=name, lowered=False,
                         error=f"{type(e).__name__}: {str(e)[:300]}"))
      print(f"quick: pallas mma {name} lowered for CUDA: {rows[-1]['lowered']}", flush=True)
    rows.append(dict(part="plan", fp8_shapes=plan, weight_sets={f"{k}x{n}": weight_sets(k, n) for k, n in kns}))
    save()
    print(f"quick: {len(plan)} fp8 shapes planned; wrote {args.out}")
    return
  key = jax.random.key(0)
  multiprocessors = getattr(device, "core_count", None) or 132
  if "mma" in args.parts:
    pallas_mma_rows(args.mma_iters, rows, save, multiprocessors)
    cuda_mma_rows(args.mma_iters, rows, save, multiprocessors)
  if plan:
    fp8_rows(args.m, kns, args.reps, key, rows, save)
  save()
  print(f"wrote {args.out} ({round(time.time() - started, 1)} s)")


if __name__ == "__main__":
  main()
