"""Latency of one model evaluation (a sampling step) with CAN and AKS against the static backbone, on one GPU.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/can_latency.py [--reps 20] [--out experiments/bench]
            CPU smoke run (tiny models, float32, dense attention; a pipeline check, its times mean nothing):
            PYTHONPATH=. python3 experiments/bench/can_latency.py --small --reps 2 --out /tmp/canbench
  hardware  one NVIDIA H100 (bf16 compute, cuDNN attention); --small runs on CPU
  wall time not yet measured on the H100; --small: 240 s on 2 CPU cores shared at load ~8 (2026-12-07, with the
            distinct-condition and fused rows; 90 s at load ~7 without them)
  expected  issue 23's goal: CAN adds at most 15 % to a sampling step of DiT-S/2 and U-ViT-S/2 (the recipes'
            placement and rank 8); not yet measured

What it times: `jax.jit(model.apply)` on random weights (static weights at N(0, 0.02²), generators too, so the
per-sample kernels are not all equal), images at shape_classes/32's 32x32x3, batch 1 (latency) and batch 64, each
batch a guided sampling step: one timestep shared by all samples, the first half labelled 0, 1, ..., 11, 0, ...
and the second half the null label 12 (batch 64: 32 images, 13 distinct conditions). Median of --reps calls after
one compiling call, each call ended by block_until_ready. Variants, in one process on the same card: static
backbone, + CAN rank 8, + AKS 8 kernels, with the recipes' placement (configs/can/placement/*.gin), and CAN rank 8
with kernels per distinct condition (`DistinctConditions`, told the batch's number of distinct conditions as
`max_distinct`): "gather" (per-group kernels gathered per sample), "ragged" (`lax.ragged_dot` on the batch sorted
by condition) as XLA compiles it by default, and "ragged" compiled with XLA's cuDNN grouped-matmul fusion
(`xla_gpu_experimental_use_ragged_dot_fusion`; a row that fails to compile is recorded with its error), and CAN
rank 8 with `fused=True` (one kernel per sample, formed tile by tile on chip by `pallas_kernels/can_matmul`; on CPU
its jnp reference). Each of these rows also records `max_abs_diff_vs_can`, its largest output difference from the
per-sample CAN row on the same weights (bf16 on the GPU: expect rounding-sized differences, not zero). Writes <out>/can_latency.json after
every row and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.dit import DiT
from jaxgen.nn.uvit import UViT
from jaxgen.projects.can import AKS, CAN, ConditionAwareModel, DistinctConditions

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


NUM_CLASSES = 12  # shape_classes/32; label 12 is the guidance null label


def sampling_batch(batch: int):
    """x, t, y of one guided sampling step (module docstring) and its number of distinct (label, t) conditions."""
    x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
    t = jnp.full((batch,), 500.0)
    images = max(batch // 2, 1)
    labels = np.arange(images) % NUM_CLASSES
    y = np.concatenate([labels, np.full(batch - images, NUM_CLASSES)])
    return x, t, jnp.asarray(y, jnp.int32), len(np.unique(y))


# Rows computing CAN rank 8 another way, on its weights and checked against its output: label -> (fields of
# ConditionAwareModel, XLA compiler options).
CAN_ROWS = {"CAN distinct gather": (dict(distinct=DistinctConditions(product="gather")), {}),
            "CAN distinct ragged": (dict(distinct=DistinctConditions(product="ragged")), {}),
            "CAN distinct ragged cuDNN": (dict(distinct=DistinctConditions(product="ragged")),
                                          {"xla_gpu_experimental_use_ragged_dot_fusion": True}),
            "CAN fused (Pallas)": (dict(fused=True), {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--small", action="store_true", help="tiny models on CPU (float32, dense attention)")
    parser.add_argument("--out", default="experiments/bench")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []

    def record(row):
        rows.append(row)
        (out / "can_latency.json").write_text(json.dumps(dict(
            date=time.strftime("%Y-%m-%d"), device=device.device_kind, platform=device.platform,
            jax=jax.__version__, reps=args.reps, small=args.small, rows=rows), indent=1) + "\n")

    for name, (backbone, rules, width) in backbones(args.small).items():
        can = ConditionAwareModel(backbone, num_classes=NUM_CLASSES, width=width, rules=rules, weights=CAN(rank=8))
        variants = {"static": (backbone, {}), "CAN rank 8": (can, {}),
                    "AKS 8 kernels": (can.clone(weights=AKS(num_kernels=8)), {})}
        for label, (fields, options) in CAN_ROWS.items():
            variants[label] = (can.clone(**fields), options)
        for batch in (int(b) for b in args.batches.split(",")):
            x, t, y, distinct = sampling_batch(batch)
            base, can_out, can_variables = None, None, None
            for label, (model, options) in variants.items():
                call = {"max_distinct": distinct} if label in CAN_ROWS else {}
                if label in CAN_ROWS:
                    variables = can_variables
                else:
                    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
                    variables = jax.tree.map(lambda s: 0.02 * jax.random.normal(jax.random.key(3), s.shape, s.dtype),
                                             shapes)
                row = dict(model=name, variant=label, batch=batch, distinct_conditions=distinct)
                try:
                    fn = jax.jit(lambda v, x, t, y, model=model, call=call: model.apply(v, x, t, y, **call))
                    fn = fn.lower(variables, x, t, y).compile(compiler_options=options or None)
                except Exception as err:  # a compiler option this XLA or cuDNN lacks: recorded, not fatal
                    record(dict(row, error=f"{type(err).__name__}: {str(err)[:300]}"))
                    print(f"{name:12s} batch {batch:4d} {label:26s} failed to compile: {rows[-1]['error']}", flush=True)
                    continue
                ms = time_call(fn, (variables, x, t, y), args.reps)
                base = ms if label == "static" else base
                row.update(ms=round(ms, 3), overhead_pct=round(100 * (ms / base - 1), 1))
                if label == "CAN rank 8":
                    can_out, can_variables = fn(variables, x, t, y), variables
                elif label in CAN_ROWS:
                    diff = jnp.abs(fn(variables, x, t, y).astype(jnp.float32) - can_out.astype(jnp.float32))
                    row["max_abs_diff_vs_can"] = float(diff.max())
                record(row)
                check = f"  max |diff| vs CAN {row['max_abs_diff_vs_can']:.3g}" if "max_abs_diff_vs_can" in row else ""
                print(f"{name:12s} batch {batch:4d} {label:26s} {ms:9.3f} ms  {row['overhead_pct']:+6.1f} %{check}",
                      flush=True)


if __name__ == "__main__":
    main()
