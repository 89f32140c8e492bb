"""DC-AE's speed claim on one GPU: a UViT-H-size diffusion transformer on the token counts that f8, f32 and f64
autoencoders give a 512 px image, and the autoencoders' own encode + decode throughput.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/dcae.py --out experiments/bench/dcae.json
            CPU check at toy sizes (2-block UViT of width 64; the CPU-sized f32 / f64 DC-AEs at 64 / 128 px):
            PYTHONPATH=. python3 experiments/bench/dcae.py --quick --out /tmp/dcae_bench.json
  hardware  one NVIDIA H100 80GB (any CUDA GPU runs); --quick runs on CPU
  wall time not yet measured on a GPU (compilation of 3 UViT shapes x batch sizes + 4 autoencoder shapes);
            --quick 2.3 min on 2 CPU cores shared with other jobs (load ~7, 2026-12-07), nearly all compilation
  expected  the paper (UViT-H, ImageNet 512): 19.1x inference speedup of DC-AE-f64 (p1) over SD-VAE-f8 (p2); the
            issue's goal: forward throughput f64p1 / f8p2 >= 10x. Results: experiments/dcae/README.md once run.

UViT (`jaxgen.nn.uvit.UViT`, depth 28 x 1152, 16 heads: UViT-H as DC-AE's paper sizes it; 1001 classes) forward
passes in bf16 compute with float32 parameters, on latents of a 512 px image:
  f8p2   SD-VAE-f8 latents 64 x 64 x 4, patch 2: 1024 tokens (the baseline, rerun in this process)
  f32p1  DC-AE-f32c32 latents 16 x 16 x 32, patch 1: 256 tokens
  f64p1  DC-AE-f64c128 latents 8 x 8 x 128, patch 1: 64 tokens
For each, images/s at every batch size of --batch-sizes (the best is the throughput); ratios are best over best.
Autoencoders: DC-AE f32c32 and f64c128 (official layouts, random weights: speed does not depend on them) at 512 and
1024 px, encode, decode and both, images/s in bf16 compute.

Timing: compile and one warm-up call, then --windows windows of --steps calls, each window synchronised at its end
(block_until_ready); the time per call is the median window time / steps. Needs only jax, flax, numpy and this
repository (no gin, TFDS or diffusers).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxgen.nn.uvit import UViT
from jaxgen.projects.dcae import model as dcae_model

LAYOUTS = {"f8p2": (64, 4, 2), "f32p1": (16, 32, 1), "f64p1": (8, 128, 1)}  # latent side, channels, patch at 512 px
QUICK_LAYOUTS = {"f8p2": (16, 4, 2), "f32p1": (4, 32, 1), "f64p1": (2, 128, 1)}  # the same token ratios at 128 px


def device_name() -> str:
    device = jax.devices()[0]
    return f"{device.platform}: {device.device_kind}" + ("" if device.platform != "cpu" else
                                                         f" ({platform.processor() or platform.machine()})")


def time_calls(fn, args, steps: int, windows: int) -> float:
    """Median seconds per call of `fn(*args)` over `windows` windows of `steps` back-to-back calls."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def bench_uvit(args) -> dict:
    layouts = QUICK_LAYOUTS if args.quick else LAYOUTS
    size = dict(embed_dim=64, depth=2, num_heads=4) if args.quick else dict(embed_dim=1152, depth=28, num_heads=16)
    results = {}
    for name, (side, channels, patch) in layouts.items():
        model = UViT(num_classes=1001, patch_size=patch, in_channels=channels, dtype=args.dtype,
                     attention_backend=args.attention, **size)
        example = jnp.zeros((1, side, side, channels))
        params = jax.jit(model.init)(jax.random.key(0), example, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
        forward = jax.jit(model.apply)
        per_batch = {}
        for batch in args.batch_sizes:
            x = jax.random.normal(jax.random.key(1), (batch, side, side, channels))
            t, y = jnp.full((batch,), 500.0), jnp.zeros((batch,), jnp.int32)
            try:
                seconds = time_calls(forward, (params, x, t, y), args.steps, args.windows)
            except Exception as e:  # out of memory at a large batch: keep the smaller ones
                per_batch[str(batch)] = f"failed: {type(e).__name__}"
                break
            per_batch[str(batch)] = {"seconds_per_call": seconds, "images_per_s": batch / seconds}
            print(f"uvit {name}: {(side // patch) ** 2} tokens, batch {batch}: {batch / seconds:.1f} images/s",
                  flush=True)
        best = max((r["images_per_s"] for r in per_batch.values() if isinstance(r, dict)), default=float("nan"))
        results[name] = {"tokens": (side // patch) ** 2, "latent": [side, side, channels], "patch": patch,
                         "per_batch": per_batch, "best_images_per_s": best}
    base = results["f8p2"]["best_images_per_s"]
    for name in results:
        results[name]["speedup_over_f8p2"] = results[name]["best_images_per_s"] / base
    return {"model": size, "layouts": results}


def bench_autoencoders(args) -> dict:
    cases = ([("f32c32_cpu", 64, 4), ("f64c128_cpu", 128, 2)]
             if args.quick else [("f32c32", 512, args.ae_batch), ("f32c32", 1024, max(1, args.ae_batch // 4)),
                                 ("f64c128", 512, args.ae_batch), ("f64c128", 1024, max(1, args.ae_batch // 4))])
    results = []
    for config, size, batch in cases:
        module = dcae_model.dcae(config, dtype=args.dtype)
        images = jax.random.uniform(jax.random.key(0), (batch, size, size, 3), minval=-1, maxval=1)
        variables = jax.jit(lambda x, m=module: dcae_model.init(m, jax.random.key(0), x))(images[:1])
        encode = jax.jit(lambda v, x, m=module: m.apply(v, x, method="encode"))
        decode = jax.jit(lambda v, z, m=module: m.apply(v, z, method="decode"))
        both = jax.jit(lambda v, x, m=module: m.apply(v, x))
        latents = encode(variables, images)
        row = {"config": config, "size": size, "batch": batch, "latent": list(latents.shape[1:])}
        for name, fn, arg in (("encode", encode, images), ("decode", decode, latents), ("encode_decode", both, images)):
            seconds = time_calls(fn, (variables, arg), args.steps, args.windows)
            row[f"{name}_images_per_s"] = batch / seconds
        print(f"dcae {config} at {size} px, batch {batch}: encode {row['encode_images_per_s']:.1f}, decode "
              f"{row['decode_images_per_s']:.1f}, both {row['encode_decode_images_per_s']:.1f} images/s", flush=True)
        results.append(row)
    return {"cases": results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, for a CPU check")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="UViT batch sizes (default 32 128 512; --quick: 4)")
    parser.add_argument("--ae-batch", type=int, default=8, help="autoencoder batch at 512 px (1024 px: a quarter)")
    parser.add_argument("--steps", type=int, default=None, help="calls per timing window (default 10; --quick 2)")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--attention", default=None, help="UViT attention backend (default: cudnn on GPU, dense)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--out", default="experiments/bench/dcae.json")
    args = parser.parse_args(argv)
    on_gpu = jax.devices()[0].platform == "gpu"
    args.batch_sizes = args.batch_sizes or ([4] if args.quick else [32, 128, 512])
    args.steps = args.steps or (2 if args.quick else 10)
    args.attention = args.attention or ("cudnn" if on_gpu else "dense")
    args.dtype = jnp.dtype(args.dtype or ("bfloat16" if on_gpu else "float32"))
    print(f"device {device_name()}, jax {jax.__version__}", flush=True)
    results = {"device": device_name(), "jax": jax.__version__, "quick": args.quick, "dtype": str(args.dtype),
               "attention": args.attention, "steps": args.steps, "windows": args.windows,
               "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written after each part, so a run stopped by a time limit still leaves the UViT result on disk.
    results["uvit"] = bench_uvit(args)
    out.write_text(json.dumps(results, indent=1, default=float))
    ratios = {k: round(v["speedup_over_f8p2"], 2) for k, v in results["uvit"]["layouts"].items()}
    print(f"UViT forward throughput over f8p2: {ratios} (goal f64p1 >= 10x)", flush=True)
    results["autoencoders"] = bench_autoencoders(args)
    out.write_text(json.dumps(results, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
