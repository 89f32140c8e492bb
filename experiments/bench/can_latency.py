"""Latency of one model evaluation (a sampling step) with CAN and AKS against the static backbone, on one GPU.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/can_latency.py [--reps 20] [--out experiments/bench]
            CPU smoke run (tiny models, float32, dense attention):
            PYTHONPATH=. python3 experiments/bench/can_latency.py --small --reps 2 --out /tmp/canbench
  hardware  one NVIDIA H100 (bf16 compute, cuDNN attention); --small runs on CPU
  wall time not yet measured on the H100; --small: 90 s on 2 CPU cores shared at load ~7 (2026-12-07)
  expected  issue 23's goal: CAN adds at most 15 % to a sampling step of DiT-S/2 and U-ViT-S/2 (the recipes'
            placement and rank 8); not yet measured

What it times: `jax.jit(model.apply)` on random weights (static weights at N(0, 0.02²), generators too, so the
per-sample kernels are not all equal), images at shape_classes/32's 32x32x3, batch 1 (latency) and batch 64 (a
guided sampling batch of 32 images), median of --reps calls after one compiling call, each call ended by
block_until_ready. Variants, in one process on the same card: static backbone, + CAN rank 8, + AKS 8 kernels, with
the recipes' placement (configs/can/placement/*.gin). Writes <out>/can_latency.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxgen.nn.dit import DiT
from jaxgen.nn.uvit import UViT
from jaxgen.projects.can import AKS, CAN, ConditionAwareModel

DIT_RULES = ("patch_embed", "blocks/attn/out", "unpatchify")
UVIT_RULES = ("patch_embed/proj", "(in_blocks|mid_block|out_blocks)/attn/proj", "decoder_pred")


def backbones(small: bool):
    gpu = dict(dtype=jnp.bfloat16, attention_backend="cudnn")
    if small:
        return {"DiT-tiny/2": (DiT(num_classes=12, width=64, depth=2, num_heads=4, in_channels=3), DIT_RULES, 64),
                "U-ViT-tiny/2": (UViT(num_classes=13, embed_dim=64, depth=2, num_heads=4, in_channels=3), UVIT_RULES,
                                 64)}
    return {"DiT-S/2": (DiT(num_classes=12, width=384, depth=12, num_heads=6, in_channels=3, sample_size=32, **gpu),
                        DIT_RULES, 384),
            "U-ViT-S/2": (UViT(num_classes=13, embed_dim=512, depth=12, num_heads=8, in_channels=3, **gpu),
                          UVIT_RULES, 512)}


def time_call(fn, args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--small", action="store_true", help="tiny models on CPU (float32, dense attention)")
    parser.add_argument("--out", default="experiments/bench")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    rows = []
    for name, (backbone, rules, width) in backbones(args.small).items():
        variants = {"static": backbone}
        for label, weights in (("CAN rank 8", CAN(rank=8)), ("AKS 8 kernels", AKS(num_kernels=8))):
            variants[label] = ConditionAwareModel(backbone, num_classes=12, width=width, rules=rules, weights=weights)
        for batch in (int(b) for b in args.batches.split(",")):
            x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
            t = jax.random.randint(jax.random.key(1), (batch,), 0, 1000).astype(jnp.float32)
            y = jax.random.randint(jax.random.key(2), (batch,), 0, 13 if isinstance(backbone, UViT) else 12)
            base = None
            for label, model in variants.items():
                shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
                variables = jax.tree.map(lambda s: 0.02 * jax.random.normal(jax.random.key(3), s.shape, s.dtype),
                                         shapes)
                ms = time_call(jax.jit(model.apply), (variables, x, t, y), args.reps)
                base = ms if label == "static" else base
                rows.append(dict(model=name, variant=label, batch=batch, ms=round(ms, 3),
                                 overhead_pct=round(100 * (ms / base - 1), 1)))
                print(f"{name:12s} batch {batch:4d} {label:14s} {ms:9.3f} ms  {rows[-1]['overhead_pct']:+6.1f} %",
                      flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "can_latency.json").write_text(json.dumps(dict(
        date=time.strftime("%Y-%m-%d"), device=device.device_kind, platform=device.platform, jax=jax.__version__,
        reps=args.reps, small=args.small, rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
