"""Benchmark: one forward pass of a FLUX.1-dev-size transformer on one GPU, bf16: the baseline that SVDQuant's
quantized variants (issue 24: W4A4 + low rank, W4A16) are timed against in the same process.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/flux_forward.py [--batch 1] [--variants bf16] [--out PATH]
            CPU check at the tiny size: PYTHONPATH=. python3 experiments/bench/flux_forward.py --quick
  hardware  one NVIDIA H100 80GB (any GPU with ~40 GB free runs it); --quick on CPU
  wall time a few minutes on an H100 (weight creation, compilation, 3 × 10 forwards), not yet measured;
            --quick ~30 s on 2 CPU cores
  expected  no result yet. For scale: ~74 TFLOP per 1024-px image (formula below), so ~110-150 ms at 50-70 % of
            the H100's 989 TFLOP/s bf16 peak; weights 23.8 GB (11.9 B parameters in bf16)

Model: `jaxgen.nn.flux.flux("dev")` (19 double-stream + 38 single-stream blocks, width 3072, 24 heads of 128, guidance
embedding; 11.90 B parameters) with random weights (`flux.random_params`, made on the device), cuDNN attention on GPU
("dense" elsewhere), bf16 compute. Inputs as FluxPipeline makes them at 1024 × 1024 px: 64 × 64 packed latent tokens
(4,096 × 64 features), 512 T5 tokens (× 4096), a pooled CLIP vector (768), sigma, guidance 3.5, and the position ids.
--quick runs the "tiny" config with 16 image and 8 text tokens instead.

Variants: `VARIANTS` maps a name to `(module, bf16 params, inputs) -> (params, apply)`, `apply(params, *inputs)`
the forward to time; "bf16" is the identity. SVDQuant's quantized models register theirs
(`VARIANTS["svdquant_w4a4"] = ...`, quantizing the bf16 params they are given, calibrating on the inputs if they
wish; build time is reported) and `--variants bf16 svdquant_w4a4 w4a16` times them one after the other on the same
inputs, bf16 first; each later variant's output is compared with bf16's (relative Frobenius error).

Timing (`time_forward`): `jax.jit(apply)` compiled ahead of time (compile seconds reported), 2 warm-up calls, then
`--windows` windows of `--iters` back-to-back calls, synchronised at each window's end; ms per forward = median over
windows of window time / iters. Memory: the variant's parameter bytes; XLA's own accounting of the compiled forward
(`memory_analysis()`: arguments + outputs + temporaries − aliased, i.e. the forward's peak with its weights
resident); and the process's `peak_bytes_in_use` after the variant ran (monotonic over the process, so for the
second variant on it includes the first's peak: read it as an upper bound).
FLOPs, two per multiply-add, matrix products only, per image with N image + T text tokens (S = N + T), width D:
  57 blocks × S × (24 D² + 4 S D) + 2 T · 4096 · D + 2 N · 64 · D · 2 + per-image modulation and embeddings
  (24 D²: q/k/v 6 D², attention output 2 D², MLP 16 D² per token in both block kinds; 4 S D: q·kᵀ and attention·v).

Output: JSON at --out (default $OUT/flux_forward.json when OUT is set, else flux_forward.json beside this script;
--quick writes only with --out) and one line per variant on stdout. Imports jax, flax, numpy and jaxgen.nn (no gin,
no diffusers, no torch).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")  # before jax is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxgen.nn import flux  # noqa: E402

Apply = Callable[..., jax.Array]
Variant = Callable[[flux.FluxTransformer, Any, tuple], tuple[Any, Apply]]

VARIANTS: dict[str, Variant] = {
    "bf16": lambda module, params, inputs: (params, module.apply),
}

# Dense bf16 tensor-core peak by device name (first match wins: the PCIe and NVL parts before plain "H100").
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12))


def forward_flops(module: flux.FluxTransformer, image_tokens: int, text_tokens: int) -> float:
    """Matrix-product FLOPs of one forward over one image (the formula in the module docstring)."""
    d, s = module.width, image_tokens + text_tokens
    blocks = (module.num_layers + module.num_single_layers) * s * (24 * d * d + 4 * s * d)
    embed = 2 * text_tokens * module.joint_attention_dim * d + 2 * image_tokens * d * (
        module.in_channels + module.output_channels)
    per_image = (module.num_layers * 12 + module.num_single_layers * 3 + 2) * 2 * d * d + 2 * (
        (256 * 2 + module.pooled_projection_dim) * d + 3 * d * d)
    return blocks + embed + per_image


def make_inputs(module: flux.FluxTransformer, batch: int, latent_size: int, text_tokens: int, seed: int = 0):
    """FluxPipeline-shaped inputs in the compute dtype: packed latents of a `latent_size`² VAE latent, text, pooled
    text, sigma, guidance 3.5 (if the model takes it) and the ids."""
    keys = jax.random.split(jax.random.key(seed), 4)
    latents = jax.random.normal(keys[0], (batch, latent_size, latent_size, module.in_channels // 4), module.dtype)
    return (flux.pack_latents(latents),
            jax.random.normal(keys[1], (batch, text_tokens, module.joint_attention_dim), module.dtype),
            jax.random.normal(keys[2], (batch, module.pooled_projection_dim), module.dtype),
            jnp.full((batch,), 0.7, jnp.float32), flux.image_ids(latent_size, latent_size), flux.text_ids(text_tokens),
            jnp.full((batch,), 3.5, jnp.float32) if module.guidance_embeds else None)


def time_forward(apply: Apply, params, inputs, *, iters: int, windows: int, warmup: int = 2) -> dict[str, Any]:
    """Compile `apply(params, *inputs)` ahead of time, then time it (see the module docstring)."""
    start = time.perf_counter()
    compiled = jax.jit(apply).lower(params, *inputs).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        out = compiled(params, *inputs)
    out.block_until_ready()
    per_call = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(iters):
            out = compiled(params, *inputs)
        out.block_until_ready()
        per_call.append((time.perf_counter() - start) / iters)
    analysis = compiled.memory_analysis()
    xla_bytes = None if analysis is None else (
        analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes)
    return {"compile_s": compile_s, "ms": 1e3 * statistics.median(per_call), "ms_windows": [1e3 * t for t in per_call],
            "xla_forward_peak_gib": None if xla_bytes is None else xla_bytes / 2**30,
            "output_finite": bool(jnp.isfinite(out).all()), "output": out}


def tree_bytes(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def run_variant(name: str, module, bf16_params, inputs, flops: float, peak: float | None, args,
                baseline: jax.Array | None) -> dict[str, Any]:
    """Build variant `name` from the bf16 params and time its forward; one JSON row (its output under "output")."""
    start = time.perf_counter()
    params, apply = VARIANTS[name](module, bf16_params, inputs)
    jax.block_until_ready(params)
    row = {"variant": name, "build_s": time.perf_counter() - start, "param_gib": tree_bytes(params) / 2**30,
           **time_forward(apply, params, inputs, iters=args.iters, windows=args.windows)}
    stats = jax.devices()[0].memory_stats() or {}
    row["process_peak_gib"] = stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None
    row["tflops"] = flops * args.batch / (row["ms"] / 1e3) / 1e12
    row["mfu"] = row["tflops"] * 1e12 / peak if peak else None
    if baseline is not None:
        diff = row["output"].astype(jnp.float32) - baseline.astype(jnp.float32)
        row["rel_err_vs_bf16"] = float(jnp.linalg.norm(diff) / jnp.linalg.norm(baseline.astype(jnp.float32)))
    return row


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny config, 16 image + 8 text tokens (CPU check)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--latent-size", type=int, default=128, help="VAE latent side; 128 = 1024 px, 4,096 tokens")
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--variants", nargs="+", default=["bf16"], choices=sorted(VARIANTS))
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.latent_size, args.text_tokens, args.iters, args.windows = 8, 8, 2, 2

    device = jax.devices()[0]
    backend = "cudnn" if device.platform == "gpu" else "dense"
    module = flux.flux("tiny" if args.quick else "dev", dtype=jnp.bfloat16, attention_backend=backend)
    image_tokens = (args.latent_size // 2) ** 2
    flops = forward_flops(module, image_tokens, args.text_tokens)
    peak = next((p for key, p in PEAK_BF16_FLOPS if key in device.device_kind), None)
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}; FLUX "
          f"{'tiny' if args.quick else 'dev'}: {flux.num_params(module) / 1e6:,.1f} M parameters, batch {args.batch}, "
          f"{image_tokens} image + {args.text_tokens} text tokens, {flops / 1e12:.2f} TFLOP per image, "
          f"attention {backend}", flush=True)

    start = time.perf_counter()
    bf16_params = flux.random_params(module, seed=0, dtype=jnp.bfloat16)
    jax.block_until_ready(bf16_params)
    weights_s = time.perf_counter() - start
    inputs = make_inputs(module, args.batch, args.latent_size, args.text_tokens)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
              "config": "tiny" if args.quick else "dev", "batch": args.batch, "image_tokens": image_tokens,
              "text_tokens": args.text_tokens, "attention": backend, "tflop_per_image": flops / 1e12,
              "random_weights_s": weights_s, "rows": []}
    baseline = None
    for name in ["bf16"] + [v for v in args.variants if v != "bf16"]:
        row = run_variant(name, module, bf16_params, inputs, flops, peak, args, baseline)
        output = row.pop("output")
        baseline = output if baseline is None else baseline
        result["rows"].append(row)
        mfu = f", MFU {100 * row['mfu']:.1f} %" if row["mfu"] else ""
        xla = row["xla_forward_peak_gib"]
        print(f"{name}: {row['ms']:.2f} ms/forward ({row['tflops']:.1f} TFLOP/s{mfu}), weights "
              f"{row['param_gib']:.2f} GiB, forward peak (XLA) {'n/a' if xla is None else f'{xla:.2f} GiB'}, "
              f"process peak {row['process_peak_gib'] or float('nan'):.2f} GiB, compile {row['compile_s']:.1f} s, "
              f"finite {row['output_finite']}"
              + (f", rel. error vs bf16 {row['rel_err_vs_bf16']:.2e}" if "rel_err_vs_bf16" in row else ""), flush=True)

    out = args.out or (None if args.quick else Path(os.environ["OUT"]) / "flux_forward.json" if "OUT" in os.environ
                       else Path(__file__).with_name("flux_forward.json"))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
