"""Benchmark: the fused LayerNorm-modulate kernels (pallas_kernels/norm_modulate) against XLA, forward and forward +
backward, at DiT-XL/2's activation shape, without and with the gated residual before the norm.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/norm_modulate.py [--shapes 128x256x1152 32x256x1152]
            [--variants 4,4,4,8 8,4,8,8]   (BlockSizes rows_forward,rows_backward,splits,num_warps of extra rows)
            CPU pipeline check (kernels interpreted, tiny shape; its times mean nothing):
            PYTHONPATH=. python3 experiments/bench/norm_modulate.py --small --out /tmp/norm_modulate.json
  hardware  one NVIDIA H100 (bf16); --small runs on CPU
  wall time not yet measured on the H100 (a few compiles of memory-bound ops: well under a minute expected)
  expected  nothing measured yet; the kernels move the minimum bytes (forward: read x, write y; backward: read x and
            dy, write dx), so the question is how close to HBM bandwidth they run against XLA's fusions

What it times, per shape `[batch, seq, width]` (bf16, shift / scale / gate `[batch, width]` bf16), in one process on
one card, for two ops: "norm_modulate" (y = LayerNorm(x) * (1 + scale) + shift) and "residual_norm_modulate" (z = x +
gate * h, then y of z; a DiT block's attention residual and MLP norm), each as
  "flax"        `nn.LayerNorm(dtype=bf16)` and the modulation (and residual) in bf16: what DiT's blocks run by
                default, XLA-fused;
  "xla"         the op's jnp reference (float32 throughout, one rounding), XLA-fused and differentiated;
  "pallas_gpu"  the fused kernels with the device's BlockSizes, then each `--variants` entry.
Each in two modes: "forward" and "forward+backward" (the outputs, then every input's gradient for fixed cotangents,
in one jit). Time per call = median over `--windows` windows of `--calls` back-to-back calls (one block_until_ready
per window), after a compiling call. "GB/s" = the minimum bytes each mode must move (norm_modulate: forward 2,
forward+backward 5 activation-sized bf16 arrays; residual: 4 and 10) / time, comparable to HBM bandwidth (3.35 TB/s
on H100 SXM). Every row also carries its largest error against
the float32 reference (relative to the reference's largest magnitude), so a wrong kernel cannot post a fast time.
Writes JSON (default $OUT/norm_modulate.json when OUT is set, else beside this script) after every row; prints the
device. Depends on jax, flax and numpy (and pallas_kernels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.norm_modulate import BlockSizes, layer_norm_modulate, layer_norm_modulate_reference
from pallas_kernels.norm_modulate import residual_layer_norm_modulate, residual_layer_norm_modulate_reference
from pallas_kernels.norm_modulate import tuning

EPS = 1e-6


def flax_norm_modulate(x, shift, scale):
  normed = nn.LayerNorm(EPS, use_scale=False, use_bias=False, dtype=x.dtype).apply({}, x)
  return normed * (1 + scale[:, None]) + shift[:, None]


def flax_residual_norm_modulate(x, h, gate, shift, scale):
  z = x + gate[:, None] * h
  return z, flax_norm_modulate(z, shift, scale)


# op -> (flax baseline, the op, its float32 reference, activation-sized inputs, minimum activation-sized arrays moved
# by the forward pass and by forward + backward)
OPS = {
    "norm_modulate": (flax_norm_modulate, layer_norm_modulate, layer_norm_modulate_reference, 1, 2, 5),
    "residual_norm_modulate": (flax_residual_norm_modulate, residual_layer_norm_modulate,
                               residual_layer_norm_modulate_reference, 2, 4, 10),
}


def timed(fn, args, *, windows, calls):
  jax.block_until_ready(fn(*args))
  per_call = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    per_call.append((time.perf_counter() - start) / calls)
  return statistics.median(per_call) * 1e3


def max_error(got, want):
  got = [np.asarray(g, np.float32) for g in jax.tree.leaves(got)]
  want = [np.asarray(w, np.float32) for w in jax.tree.leaves(want)]
  return max(float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)) for g, w in zip(got, want))


def parse_variant(text: str) -> BlockSizes:
  rows_forward, rows_backward, splits, num_warps = (int(v) for v in text.split(","))
  return BlockSizes(rows_forward=rows_forward, rows_backward=rows_backward, splits=splits, num_warps=num_warps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", nargs="+", default=["128x256x1152", "32x256x1152"],
                      help="batch x seq x width; DiT-XL/2 at 256 px is 256 tokens of width 1152")
  parser.add_argument("--variants", nargs="*", default=[], help="extra BlockSizes rows_fwd,rows_bwd,splits,warps")
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--calls", type=int, default=20)
  parser.add_argument("--small", action="store_true", help="a tiny shape with the kernels interpreted (CPU)")
  parser.add_argument("--out")
  args = parser.parse_args()
  if args.small:
    args.shapes, args.windows, args.calls = ["2x12x40"], 1, 1
  out_path = Path(args.out) if args.out else (
      Path(os.environ["OUT"]) / "norm_modulate.json" if os.environ.get("OUT") else
      Path(__file__).with_name("norm_modulate.json"))
  kernel = "pallas_gpu_interpret" if args.small else "pallas_gpu"

  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
  default_blocks = tuning.block_sizes_for(device.device_kind)
  candidates = {"flax": None, "xla": "xla", kernel: kernel}  # row name -> implementation
  blocks_by_name = {kernel: default_blocks}
  for text in args.variants:
    candidates[f"{kernel} {text}"] = kernel
    blocks_by_name[f"{kernel} {text}"] = parse_variant(text)

  report = {"device": device.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"), "dtype": "bfloat16", "eps": EPS, "rows": []}
  for shape_text in args.shapes:
    batch, seq, width = (int(v) for v in shape_text.split("x"))
    keys = iter(jax.random.split(jax.random.key(0), 16))  # 11 used
    activation = lambda: jax.random.normal(next(keys), (batch, seq, width)).astype(jnp.bfloat16)  # noqa: E731
    per_sample = lambda: (0.5 * jax.random.normal(next(keys), (batch, width))).astype(jnp.bfloat16)  # noqa: E731
    activation_gb = batch * seq * width * 2 / 1e9
    for op, (flax_fn, fused_fn, reference_fn, num_activations, forward_arrays, both_arrays) in OPS.items():
      inputs = [activation() + 1.0 for _ in range(num_activations)] + [per_sample() for _ in range(
          num_activations + 1)]  # x (, h), (gate,) shift, scale
      cotangent = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape).astype(a.dtype),
                               jax.eval_shape(flax_fn, *inputs))
      f32 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float32), tree)  # noqa: E731
      want_out, want_vjp = jax.vjp(lambda *a: reference_fn(*a, EPS), *f32(inputs))
      want_grads = want_vjp(f32(cotangent))
      for name in candidates:
        if name == "flax":
          fn = flax_fn
        else:
          fn = (lambda impl, blocks: lambda *a: fused_fn(*a, EPS, implementation=impl, block_sizes=blocks))(
              candidates[name], blocks_by_name.get(name))
        forward = jax.jit(fn)
        both = jax.jit(lambda *a, fn=fn: (lambda out, vjp: (out, vjp(cotangent)))(*jax.vjp(fn, *a)))
        out, grads = both(*inputs)
        error = max(max_error(forward(*inputs), want_out), max_error(out, want_out), max_error(grads, want_grads))
        for mode, call, arrays in (("forward", forward, forward_arrays), ("forward+backward", both, both_arrays)):
          ms = timed(call, inputs, windows=args.windows, calls=args.calls)
          row = {"op": op, "shape": [batch, seq, width], "implementation": name, "mode": mode, "ms": ms,
                 "gb_per_s": arrays * activation_gb / (ms / 1e3), "max_rel_error": error,
                 "blocks": dataclasses.asdict(blocks_by_name[name]) if name in blocks_by_name else None}
          report["rows"].append(row)
          out_path.write_text(json.dumps(report, indent=2) + "\n")
          print(f"{shape_text:>14}  {op:<22} {name:<28} {mode:<17} {ms:8.3f} ms  {row['gb_per_s']:7.1f} GB/s  "
                f"err {error:.1e}", flush=True)
  print(f"results in {out_path}")


if __name__ == "__main__":
  main()
