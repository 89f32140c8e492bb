"""One denoising step of Wan2.1 (the Flax port) at real video shapes: dense (cuDNN) against SVG, with attention recall.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/svg_real.py [--model 1.3B] [--resolution 480p] [--density 0.25]
            [--reps 3] [--out DIR]
            CPU smoke run (the tiny Wan config, Pallas interpret, XLA dense):
            PYTHONPATH=. python3 experiments/bench/svg_real.py --quick --out /tmp/svgreal
  hardware  one NVIDIA H100 80GB (--model 14B --resolution 720p fits too: 28.6 GB of bf16 weights); --quick: CPU
  wall time not measured on a GPU yet; --quick: about a minute on 2 shared CPU cores
  expected  not measured yet. The paper's per-step goal is >= 3x at density 0.25 for the attention-bound shapes
            (HunyuanVideo 720p); Wan-1.3B at 480p has 32,760 tokens, where attention is a smaller share of the step.

What one step is: the transformer called once on the guided batch (prompt and negative prompt: batch 2) of latents
`[2, 21, 60, 104, 16]` at 480p (832 x 480, 81 frames) or `[2, 21, 90, 160, 16]` at 720p (75,600 tokens, no multiple of
128), timestep 500, text states `[2, 512, 4096]`, random bf16 weights (every parameter drawn, so no zero-initialised
layer hides the attention). Variants, all jitted once outside the timing loop, median of --reps after a warm-up:
  dense   self-attention by cuDNN (XLA with --quick);
  svg     self-attention by SVG at --density with the official Wan settings that apply within one step (64 profiled
          rows, first-frame sink keys; the dense warm-up of steps/layers is left out: this times a sparse step).
Reported: ms per step, speed-up, the relative L2 distance of SVG's output to dense, the density computed, the
attention recall per layer (softmax mass the computed masks keep on the profiled rows, averaged over batch and heads)
and the share of heads classified temporal. Random weights make recall and the head classes informative only about
the machinery, not about what a trained Wan attends to. Before timing: SVG at density 1.0 must equal dense on a small
shape. Results: <out>/svg_real.json. Imports jax, flax, numpy, pallas_kernels and jaxgen.projects.svg (no gin, no
diffusers, no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.svg import wan
from jaxgen.projects.svg.attention import MaskOptions
from jaxgen.projects.svg.sampling import sown

LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}  # (frames, height, width) of 81-frame videos
QUICK_LATENTS = (3, 8, 10)  # 3 x 4 x 5 = 60 tokens: a ragged last block at block 16
TEXT_LEN = 512


def random_params(module, latents, timestep, text, seed: int):
    """Every parameter drawn from N(0, 1/fan_in) (norm scales around 1), in bf16, made on the device."""
    abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), latents, timestep, text))
    leaves, tree = jax.tree.flatten(abstract)

    @jax.jit
    def make(key):
        out = []
        for i, leaf in enumerate(leaves):
            fan_in = leaf.shape[-2] if leaf.ndim >= 2 else leaf.shape[-1]
            value = jax.random.normal(jax.random.fold_in(key, i), leaf.shape, jnp.float32) / np.sqrt(fan_in)
            out.append(value.astype(jnp.bfloat16))
        return tree.unflatten(out)

    return make(jax.random.key(seed))


def median_ms(fn, *args, reps: int):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), first, out


def rel_err(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def step_functions(module, svg_options, dense_backend):
    dense = module.clone(attention_backend=dense_backend)
    sparse = module.clone(attention_backend="svg", attention_options=svg_options)

    def run_dense(params, latents, timestep, text):
        return dense.apply(params, latents, timestep, text)

    def run_svg(params, latents, timestep, text, rng):
        out, state = sparse.apply(params, latents, timestep, text, rng=rng, mutable=["intermediates"])
        return out, sown(state["intermediates"])

    return jax.jit(run_dense), jax.jit(run_svg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="1.3B", choices=["1.3B", "14B"])
    parser.add_argument("--resolution", default="480p", choices=sorted(LATENTS))
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny Wan on CPU: Pallas interpret, XLA dense")
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args()
    if not 0.0 < args.density <= 1.0:
        sys.exit(f"--density must be in (0, 1]; got {args.density}")

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    if not args.quick and device.platform != "gpu":
        sys.exit("the full-size run needs a GPU (cuDNN attention); use --quick for a CPU smoke run")
    if args.quick:
        module = wan.named("tiny", dtype=jnp.bfloat16)
        grid, text_len, block, implementation, dense_backend = QUICK_LATENTS, 8, 16, "interpret", "dense"
    else:
        module = wan.named(args.model, dtype=jnp.bfloat16)
        grid, text_len, block, implementation, dense_backend = LATENTS[args.resolution], TEXT_LEN, 128, None, "cudnn"
    svg_options = dict(density=args.density, num_sampled_rows=64, block_q=block, block_kv=block,
                       implementation=implementation, mask_options=MaskOptions(sink_first_frame=True))

    keys = jax.random.split(jax.random.key(0), 3)
    latents = jax.random.normal(keys[0], (2, *grid, module.in_channels), jnp.bfloat16)
    text = jax.random.normal(keys[1], (2, text_len, module.text_dim), jnp.bfloat16)
    timestep = jnp.full((2,), 500.0)
    layout = module.layout(latents.shape)
    result = dict(device=device.device_kind, platform=device.platform, jax=jax.__version__,
                  date=time.strftime("%Y-%m-%d"), model="tiny" if args.quick else args.model,
                  resolution="quick" if args.quick else args.resolution, latents=list(latents.shape),
                  tokens=layout.seq_len, text_len=text_len, density=args.density, block=block,
                  sparse_implementation=implementation or "default", dense_backend=dense_backend, reps=args.reps)
    print(f"{result['model']} {result['resolution']}: latents {latents.shape}, {layout.seq_len} tokens, "
          f"{module.depth} layers x {module.num_heads} heads", flush=True)
    params = random_params(module, latents, timestep, text, seed=1)

    # Correctness first, on a small shape: SVG at density 1.0 is exact.
    small = latents[:, :2, :8, :8]
    check_dense, check_svg = step_functions(module, {**svg_options, "density": 1.0, "block_q": 16, "block_kv": 16},
                                            dense_backend)
    reference = check_dense(params, small, timestep, text)
    exact, _ = check_svg(params, small, timestep, text, keys[2])
    result["check_svg_d1_vs_dense"] = rel_err(exact, reference)
    print("check: svg at density 1.0 vs dense, relative L2", result["check_svg_d1_vs_dense"], flush=True)
    if result["check_svg_d1_vs_dense"] > 2e-2:
        sys.exit("SVG at density 1.0 differs from dense: not timing")

    run_dense, run_svg = step_functions(module, svg_options, dense_backend)
    dense_ms, dense_first, dense_out = median_ms(run_dense, params, latents, timestep, text, reps=args.reps)
    svg_ms, svg_first, (svg_out, aux) = median_ms(run_svg, params, latents, timestep, text, keys[2], reps=args.reps)
    recall = np.asarray(aux["recall"], np.float64)  # [layers, batch, heads]
    result.update(dense_ms=dense_ms, svg_ms=svg_ms, speedup=dense_ms / svg_ms, dense_first_call_s=dense_first,
                  svg_first_call_s=svg_first, svg_vs_dense_relative_l2=rel_err(svg_out, dense_out),
                  computed_density=float(np.mean(aux["density"])), recall=float(recall.mean()),
                  recall_by_layer=[float(x) for x in recall.mean(axis=(1, 2))],
                  temporal_fraction=float(np.mean(aux["head_is_temporal"])))
    if device.platform == "gpu":
        stats = device.memory_stats() or {}
        result["peak_memory_gb"] = stats.get("peak_bytes_in_use", 0) / 1e9
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "svg_real.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"| variant | ms / step | speed-up |\n|---|---|---|\n| dense ({dense_backend}) | {dense_ms:.1f} | 1.00 |\n"
          f"| SVG d{args.density:g} | {svg_ms:.1f} | {dense_ms / svg_ms:.2f} |")
    print(f"computed density {result['computed_density']:.4f}, recall {result['recall']:.4f} (per layer "
          f"{np.round(result['recall_by_layer'], 3).tolist()}), temporal heads {result['temporal_fraction']:.2f}, "
          f"SVG vs dense relative L2 {result['svg_vs_dense_relative_l2']:.4f}; wrote {path}")


if __name__ == "__main__":
    main()
