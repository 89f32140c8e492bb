"""Benchmark: the fused condition-aware product (pallas_kernels/can_matmul) against XLA, at the shapes of the CAN
layers of a DiT-S/2 and a U-ViT-S/2 sampling step.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/can_matmul.py [--reps 50] [--out experiments/bench]
            CPU pipeline check (interpret mode, tiny shapes; its times mean nothing):
            PYTHONPATH=. python3 experiments/bench/can_matmul.py --small --reps 2 --out /tmp/canmatmul
  hardware  one NVIDIA H100 (bf16); --small runs on CPU
  wall time not yet measured on the H100; --small: about a minute on 2 shared CPU cores
  expected  nothing measured yet; the question is whether building each weight tile on chip (rank multiply-adds per
            weight on the CUDA cores, redone per row tile) costs less than the per-sample weight stack's HBM traffic

What it times, per shape `[batch, rows, in] x [in, out]` at rank 8, in one process on one card (median of --reps
calls after a compiling one, each ended by block_until_ready): "static" (x @ W, one shared weight: the floor),
"xla per-sample" (the per-sample stack `W + h @ G` formed in bf16, then one batched product: what
`jaxgen.projects.can.layers` runs today), "pallas fused" (`can_matmul`, the stack never formed). Every op is first
checked against the float32 reference (relative max error). Writes <out>/can_matmul.json after every row. Depends on
jax and numpy only (and the jaxgen CAN layer it compares with).
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from can_latency import time_call  # this folder's latency bench: one timing rule for both
from jaxgen.projects.can.layers import dense_per_sample
from pallas_kernels.can_matmul import BlockSizes, can_matmul, can_matmul_reference

RANK = 8
# name -> (batch, rows, in, out): attention output projections of a guided sampling step of 64 at 32x32x3, patch 2.
SHAPES = {"DiT-S/2 attn out": (64, 256, 384, 384), "U-ViT-S/2 attn proj": (64, 258, 512, 512),
          "DiT-S/2 attn out, batch 1": (1, 256, 384, 384)}
SMALL_SHAPES = {"tiny": (4, 40, 48, 32)}


def per_sample_xla(x, kernel, h, generator):
  stack = kernel[None] + (h @ generator.reshape(generator.shape[0], -1)).reshape(h.shape[0], *kernel.shape)
  return dense_per_sample(x, stack, None)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=50)
  parser.add_argument("--small", action="store_true", help="tiny shapes, Pallas interpreted (CPU)")
  parser.add_argument("--out", default="experiments/bench")
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  dtype = jnp.float32 if args.small else jnp.bfloat16
  implementation = "interpret" if args.small else "pallas"
  blocks = BlockSizes(block_m=16, block_n=16, block_k=16) if args.small else BlockSizes()
  ops = {"static": lambda x, kernel, h, generator: x @ kernel,
         "xla per-sample": per_sample_xla,
         "pallas fused": lambda *a: can_matmul(*a, implementation=implementation, blocks=blocks)}
  rows = []
  for name, (batch, tokens, k, n) in (SMALL_SHAPES if args.small else SHAPES).items():
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (batch, tokens, k)).astype(dtype)
    kernel = (jax.random.normal(keys[1], (k, n)) / np.sqrt(k)).astype(dtype)
    h = jax.random.normal(keys[2], (batch, RANK)).astype(dtype)
    generator = (0.1 * jax.random.normal(keys[3], (RANK, k, n)) / np.sqrt(k)).astype(dtype)
    ref = np.asarray(can_matmul_reference(*(a.astype(jnp.float32) for a in (x, kernel, h, generator))))
    base = None
    for label, op in ops.items():
      fn = jax.jit(op)
      ms = time_call(fn, (x, kernel, h, generator), args.reps)
      base = ms if label == "static" else base
      row = dict(shape=name, batch=batch, rows=tokens, k=k, n=n, rank=RANK, op=label, ms=round(ms, 4),
                 vs_static_pct=round(100 * (ms / base - 1), 1))
      if label != "static":
        got = np.asarray(fn(x, kernel, h, generator), np.float32)
        row["rel_max_err"] = float(np.abs(got - ref).max() / np.abs(ref).max())
      rows.append(row)
      (out / "can_matmul.json").write_text(json.dumps(dict(
          date=time.strftime("%Y-%m-%d"), device=device.device_kind, platform=device.platform, jax=jax.__version__,
          reps=args.reps, small=args.small, blocks=vars(blocks), rows=rows), indent=1) + "\n")
      err = f"  rel err {row['rel_max_err']:.2g}" if "rel_max_err" in row else ""
      print(f"{name:28s} {label:16s} {ms:9.4f} ms  {row['vs_static_pct']:+7.1f} %{err}", flush=True)


if __name__ == "__main__":
  main()
