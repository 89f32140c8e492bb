"""Sparse VideoGen (SVG) attention inside one HunyuanVideo-size DiT block, against cuDNN dense, on one GPU.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/svg_block.py [--reps 5] [--densities 0.25,0.15] [--out DIR]
            CPU smoke run (tiny shape, Pallas interpret, XLA dense):
            PYTHONPATH=. python3 experiments/bench/svg_block.py --small --reps 1 --out /tmp/svgbench
  hardware  one NVIDIA H100 80GB (Hopper: the block-sparse op runs its Mosaic GPU kernel; other GPUs run Triton);
            --small runs on CPU
  wall time 43 s on the device machine (H100, 2026-11-26), mostly compilation; --small: about 10 s on 2 CPU cores
  expected  measured 2026-11-26 on one H100 80GB HBM3, JAX 0.11.2 (svg_block.json): block 347 ms dense vs 125 ms
            SVG at density 0.25 (2.77x, goal >= 2.3x) and 100 ms at 0.15 (3.48x); profiling 1.75 % and layout
            transform 1.10 % of dense attention (goals <= 2 % and <= 3 %)

Why: the kernel benchmark (block_sparse_attention.py) times the sparse kernel alone on synthetic masks. What a video
DiT gains from SVG is the end-to-end time of a transformer block, where the linear layers are not sparsified and
svg_attention adds work around the kernel: online head profiling (sample_rows + profile_heads), the per-head
frame-major <-> token-major transform of q, k, v and the output, building the band mask and its index lists. This
script measures the block and splits svg_attention into those parts, in one process, baseline rerun in it.

What it times (ms, median of --reps after one warm-up call that also compiles; each rep ended by block_until_ready;
each function jitted once, outside the timing loop):
  1. One DiT block, dense (cuDNN) and SVG at each density -> block speed-up = dense / SVG. The block is a simplified
     single-stream Hunyuan/DiT block in plain jnp over a params dict: LayerNorm -> fused QKV 3072 -> 3 x 3072 ->
     [B, S, 3, H, D] -> per-head RMSNorm of q and k (Hunyuan's QK norm) -> attention -> output projection ->
     residual; LayerNorm -> MLP 3072 -> 4 x 3072 (GELU tanh) -> 3072 -> residual. bf16, random weights (std 0.02),
     random input; only the attention function differs between variants.
  2. Attention alone on the block's own q, k, v: cuDNN dense; svg_attention at each density; the block-sparse op
     alone with the same band block mask (masks.band_for_density -> masks.band_block_mask, broadcast over heads as
     attention._svg does; the op's time includes its mask -> index-list conversion, as inside svg_attention).
  3. The extras alone, at density 0.25 (else the first density given): profiling (sample_rows + profile_heads exactly as
     attention._svg calls them), layout transform (heads_to_token_major of q, k, v and heads_to_frame_major of an
     output-shaped tensor, half the heads flagged temporal) and mask building (band search + block mask + density);
     each as % of dense attention time. "other" = svg_attention - (kernel + profiling + transform + mask build).
  4. The density the kernel actually computed (masks.block_mask_density of the band mask) and the fraction of heads
     classified temporal in the SVG block (random weights: informative only).
Before timing, a correctness check on a small shape: svg_attention at density 1.0 must match dense attention (it is
exact there: the band covers everything and the layout transform is a permutation), and the dense implementation
must match an f32 XLA reference, both within bf16 tolerance (relative L2 error < 2e-2).

density and the profiling key are passed to the jitted functions as runtime arguments (svg_attention accepts a traced
density), so one compilation serves every density. Results: <out>/svg_block.json, and a markdown table on stdout.
Imports jax, numpy, pallas_kernels and jaxgen.projects.svg (which pulls in flax; no gin, no TFDS).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.svg import masks
from jaxgen.projects.svg.attention import svg_attention
from jaxgen.projects.svg.layout import VideoLayout, heads_to_frame_major, heads_to_token_major
from jaxgen.projects.svg.profiling import profile_heads, sample_rows
from pallas_kernels.block_sparse_attention import block_sparse_attention
from pallas_kernels.block_sparse_attention import ops as block_sparse_ops

BLOCK = 128  # block_q = block_kv, svg_attention's default
NUM_SAMPLED_ROWS = 64
GOAL_BLOCK_SPEEDUP = 2.3  # at density 0.25
GOAL_PROFILING_PCT = 2.0  # of dense attention time
GOAL_TRANSFORM_PCT = 3.0


@dataclasses.dataclass(frozen=True)
class Config:
    heads: int
    head_dim: int
    layout: VideoLayout
    dense_implementation: str | None  # jax.nn.dot_product_attention's
    sparse_implementation: str | None  # block_sparse_attention's (and svg_attention's)
    batch: int = 1
    mlp_ratio: int = 4
    block: int = BLOCK
    num_sampled_rows: int = NUM_SAMPLED_ROWS

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def seq(self) -> int:
        return self.layout.seq_len

    @property
    def sm_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)


# HunyuanVideo 720p: 33 latent frames x 3600 tokens + 256 text tokens placed last = 119,056 tokens; 24 heads x 128.
FULL_LAYOUT = VideoLayout(num_frames=33, frame_tokens=3600, text_tokens=256, text_first=False)
# CPU smoke shape: 8 frames x 256 tokens + 64 text tokens = 2,112 tokens (17 blocks of 128, the last one ragged).
SMALL_LAYOUT = VideoLayout(num_frames=8, frame_tokens=256, text_tokens=64, text_first=False)


def full_config(sparse_implementation: str | None) -> Config:
    return Config(heads=24, head_dim=128, layout=FULL_LAYOUT, dense_implementation="cudnn",
                  sparse_implementation=sparse_implementation)


def small_config(sparse_implementation: str | None) -> Config:
    return Config(heads=2, head_dim=128, layout=SMALL_LAYOUT, dense_implementation="xla",
                  sparse_implementation=sparse_implementation or "interpret")


def resolve_sparse_implementation(requested: str | None, head_dim: int) -> str:
    """What block_sparse_attention would pick by itself, made explicit so the JSON records it."""
    return requested or block_sparse_ops.default_implementation(jnp.bfloat16, head_dim, BLOCK, BLOCK)


# ---- the block: plain jnp over a params dict ---------------------------------------------------------------------

def init_params(key: jax.Array, cfg: Config) -> dict:
    hidden, mlp = cfg.hidden, cfg.mlp_ratio * cfg.hidden
    keys = jax.random.split(key, 4)

    def normal(k, shape):
        return (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(jnp.bfloat16)

    def zeros(n):
        return jnp.zeros((n,), jnp.bfloat16)

    return dict(qkv_w=normal(keys[0], (hidden, 3 * hidden)), qkv_b=zeros(3 * hidden),
                q_norm=jnp.ones((cfg.head_dim,), jnp.bfloat16), k_norm=jnp.ones((cfg.head_dim,), jnp.bfloat16),
                proj_w=normal(keys[1], (hidden, hidden)), proj_b=zeros(hidden),
                mlp_in_w=normal(keys[2], (hidden, mlp)), mlp_in_b=zeros(mlp),
                mlp_out_w=normal(keys[3], (mlp, hidden)), mlp_out_b=zeros(hidden))


def layer_norm(x, eps=1e-6):
    """No affine (as Hunyuan's pre-modulation norms); statistics in f32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def rms_norm(x, scale, eps=1e-6):
    """Over the last axis (head_dim): Hunyuan's per-head QK norm."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


def linear(x, w, b):
    return (jnp.dot(x, w, preferred_element_type=jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


def qkv_projection(params, x, cfg: Config):
    """LayerNorm -> fused QKV -> [B, S, 3, H, D] -> QK RMSNorm; returns q, k, v `[B, S, H, D]`."""
    batch, seq, _ = x.shape
    qkv = linear(layer_norm(x), params["qkv_w"], params["qkv_b"]).reshape(batch, seq, 3, cfg.heads, cfg.head_dim)
    q = rms_norm(qkv[:, :, 0], params["q_norm"])
    k = rms_norm(qkv[:, :, 1], params["k_norm"])
    return q, k, qkv[:, :, 2]


def dit_block(params, x, attention, cfg: Config):
    """attention(q, k, v) -> (out [B, S, H, D], head_is_temporal [B, H]); returns (x, head_is_temporal)."""
    batch, seq, _ = x.shape
    q, k, v = qkv_projection(params, x, cfg)
    out, head_is_temporal = attention(q, k, v)
    x = x + linear(out.reshape(batch, seq, cfg.hidden), params["proj_w"], params["proj_b"])
    h = linear(layer_norm(x), params["mlp_in_w"], params["mlp_in_b"])
    x = x + linear(jax.nn.gelu(h, approximate=True), params["mlp_out_w"], params["mlp_out_b"])
    return x, head_is_temporal


# ---- attention variants and the pieces of svg_attention -----------------------------------------------------------

def dense_attention(q, k, v, cfg: Config):
    out = jax.nn.dot_product_attention(q, k, v, scale=cfg.sm_scale, implementation=cfg.dense_implementation)
    return out, jnp.zeros((q.shape[0], q.shape[2]), jnp.bool_)


def svg(q, k, v, density, rng, cfg: Config):
    return svg_attention(q, k, v, cfg.layout, density=density, num_sampled_rows=cfg.num_sampled_rows, rng=rng,
                         block_q=cfg.block, block_kv=cfg.block, sm_scale=cfg.sm_scale,
                         implementation=cfg.sparse_implementation)


def band_mask_for(density, cfg: Config):
    """As attention._svg: (2-D band block mask, band in video tokens, the density the kernel computes)."""
    band = masks.band_for_density(cfg.layout, density, block_q=cfg.block, block_kv=cfg.block)
    band_mask = masks.band_block_mask(cfg.layout, band, block_q=cfg.block, block_kv=cfg.block)
    return band_mask, band, masks.block_mask_density(band_mask, cfg.layout, block_q=cfg.block, block_kv=cfg.block)


def sparse_kernel(q, k, v, band_mask, cfg: Config):
    block_mask = jnp.broadcast_to(band_mask, (1, q.shape[2], *band_mask.shape))
    return block_sparse_attention(q, k, v, block_mask, block_q=cfg.block, block_kv=cfg.block, sm_scale=cfg.sm_scale,
                                  implementation=cfg.sparse_implementation)


def profiling(q, k, v, rng, band_mask, cfg: Config):
    rows = sample_rows(rng, cfg.layout, cfg.num_sampled_rows)
    return profile_heads(q, k, v, rows, band_mask, cfg.layout, block_q=cfg.block, block_kv=cfg.block,
                         sm_scale=cfg.sm_scale)


def layout_transform(q, k, v, out, head_is_temporal, cfg: Config):
    q, k, v = (heads_to_token_major(x, head_is_temporal, cfg.layout) for x in (q, k, v))
    return q, k, v, heads_to_frame_major(out, head_is_temporal, cfg.layout)


def build(cfg: Config) -> dict:
    """The jitted functions, each compiled once (density and rng are runtime arguments)."""
    def block_dense(params, x):
        return dit_block(params, x, functools.partial(dense_attention, cfg=cfg), cfg)

    def block_svg(params, x, density, rng):
        return dit_block(params, x, lambda q, k, v: svg(q, k, v, density, rng, cfg), cfg)

    return dict(
        qkv=jax.jit(functools.partial(qkv_projection, cfg=cfg)),
        block_dense=jax.jit(block_dense),
        block_svg=jax.jit(block_svg),
        attention_dense=jax.jit(functools.partial(dense_attention, cfg=cfg)),
        attention_svg=jax.jit(functools.partial(svg, cfg=cfg)),
        band_mask=jax.jit(functools.partial(band_mask_for, cfg=cfg)),
        sparse_kernel=jax.jit(functools.partial(sparse_kernel, cfg=cfg)),
        profiling=jax.jit(functools.partial(profiling, cfg=cfg)),
        layout_transform=jax.jit(functools.partial(layout_transform, cfg=cfg)),
    )


# ---- timing and checks --------------------------------------------------------------------------------------------

def median_ms(fn, *args, reps):
    """(median ms over reps, warm-up + compile seconds, the last output)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))  # warm-up (and compile)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), first_s, out


def rel_err(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def check_correctness(cfg: Config) -> dict:
    """On the small shape, with cfg's implementations: SVG at density 1.0 vs dense, dense vs an f32 reference."""
    small = dataclasses.replace(cfg, heads=2, head_dim=128, layout=SMALL_LAYOUT)
    keys = jax.random.split(jax.random.key(123), 4)
    shape = (1, small.seq, small.heads, small.head_dim)
    q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys[:3])
    ref = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), implementation="xla")
    dense, _ = jax.jit(functools.partial(dense_attention, cfg=small))(q, k, v)
    sparse, head_is_temporal = jax.jit(functools.partial(svg, cfg=small))(q, k, v, jnp.float32(1.0), keys[3])
    result = dict(shape=list(shape), dense_vs_f32=rel_err(dense, ref), svg_d1_vs_f32=rel_err(sparse, ref),
                  svg_d1_vs_dense=rel_err(sparse, dense),
                  svg_d1_heads_temporal=int(np.asarray(head_is_temporal).sum()))
    result["ok"] = bool(max(result["dense_vs_f32"], result["svg_d1_vs_f32"], result["svg_d1_vs_dense"]) < 2e-2)
    return result


def goal(value, limit, at_most: bool):
    if value is None:
        return None
    return bool(value <= limit) if at_most else bool(value >= limit)


# ---- main ---------------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--densities", default="0.25,0.15",
                        help="comma-separated; the extras are timed at 0.25 if listed, else at the first")
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--small", action="store_true",
                        help="tiny shape, Pallas interpret and XLA dense attention: a CPU smoke run")
    parser.add_argument("--implementation", default=None,
                        help="block-sparse implementation (default: mosaic_gpu on Hopper, else triton; interpret with "
                             "--small)")
    args = parser.parse_args()

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    if not args.small and device.platform != "gpu":
        sys.exit("the full-size run needs a GPU (cuDNN attention); use --small for a CPU smoke run")
    densities = [float(d) for d in args.densities.split(",") if d.strip()]
    if not densities or not all(0.0 < d <= 1.0 for d in densities):
        sys.exit(f"--densities must be in (0, 1]; got {args.densities!r}")
    if args.small:
        cfg = small_config(args.implementation)
    else:
        cfg = full_config(resolve_sparse_implementation(args.implementation, 128))
    reps = args.reps
    os.makedirs(args.out, exist_ok=True)
    out_path = os.path.join(args.out, "svg_block.json")
    wall_start = time.perf_counter()

    result = dict(device=device.device_kind, platform=device.platform, jax=jax.__version__,
                  date=time.strftime("%Y-%m-%d"), mode="small" if args.small else "full",
                  shape=dict(batch=cfg.batch, seq=cfg.seq, hidden=cfg.hidden, heads=cfg.heads, head_dim=cfg.head_dim,
                             mlp=cfg.mlp_ratio * cfg.hidden, layout=dataclasses.asdict(cfg.layout), block=cfg.block,
                             dtype="bfloat16"),
                  dense_implementation=cfg.dense_implementation, sparse_implementation=cfg.sparse_implementation,
                  num_sampled_rows=cfg.num_sampled_rows, reps=reps, densities=densities)
    print(f"shape: batch {cfg.batch}, {cfg.seq} tokens ({cfg.layout}), hidden {cfg.hidden}, {cfg.heads} heads x "
          f"{cfg.head_dim}; dense {cfg.dense_implementation}, sparse {cfg.sparse_implementation}", flush=True)

    result["correctness"] = check_correctness(cfg)
    print("check", result["correctness"], flush=True)
    if not result["correctness"]["ok"]:
        json.dump(result, open(out_path, "w"), indent=1)
        sys.exit("correctness check failed: not timing")

    fns = build(cfg)
    keys = jax.random.split(jax.random.key(0), 3)
    params = init_params(keys[0], cfg)
    x = jax.random.normal(keys[1], (cfg.batch, cfg.seq, cfg.hidden), jnp.bfloat16)
    rng = keys[2]
    q, k, v = jax.block_until_ready(fns["qkv"](params, x))
    timings, compile_s = {}, {}

    def timed(name, fn, *fn_args):
        ms, first_s, out = median_ms(fn, *fn_args, reps=reps)
        timings[name], compile_s[name] = ms, first_s
        print(f"{name}: {ms:.2f} ms (first call {first_s:.1f} s)", flush=True)
        return out

    # 1. the block.
    timed("block_dense", fns["block_dense"], params, x)
    per_density = {}
    for d in densities:
        _, head_is_temporal = timed(f"block_svg_{d}", fns["block_svg"], params, x, jnp.float32(d), rng)
        band_mask, band, density_run = fns["band_mask"](jnp.float32(d))
        per_density[d] = dict(band_tokens=int(band), band_frames=int(band) / cfg.layout.frame_tokens,
                              density_computed=float(density_run),
                              heads_temporal_fraction=float(np.asarray(head_is_temporal).mean()))
        print(f"  density {d}: kernel computes {float(density_run):.4f} (band {int(band)} video tokens), "
              f"{per_density[d]['heads_temporal_fraction']:.2f} of heads temporal", flush=True)

    # 2. attention alone, on the block's own q, k, v.
    dense_out, _ = timed("attention_dense", fns["attention_dense"], q, k, v)
    for d in densities:
        timed(f"attention_svg_{d}", fns["attention_svg"], q, k, v, jnp.float32(d), rng)
        band_mask = fns["band_mask"](jnp.float32(d))[0]
        timed(f"sparse_kernel_{d}", fns["sparse_kernel"], q, k, v, band_mask)

    # 3. the extras, at the first density.
    d0 = 0.25 if 0.25 in densities else densities[0]
    band_mask = fns["band_mask"](jnp.float32(d0))[0]
    timed("mask_build", fns["band_mask"], jnp.float32(d0))
    timed("profiling", fns["profiling"], q, k, v, rng, band_mask)
    half_temporal = (jnp.arange(cfg.heads) % 2 == 0)[None].repeat(cfg.batch, axis=0)
    timed("layout_transform", fns["layout_transform"], q, k, v, dense_out, half_temporal)
    del dense_out

    dense_attn, dense_block = timings["attention_dense"], timings["block_dense"]

    def pct(ms):
        return 100.0 * ms / dense_attn

    extras = {name: dict(ms=timings[name], pct_of_dense_attention=pct(timings[name]))
              for name in ("profiling", "layout_transform", "mask_build")}
    accounted = timings[f"sparse_kernel_{d0}"] + sum(timings[n] for n in extras)
    extras["other"] = dict(ms=timings[f"attention_svg_{d0}"] - accounted,
                           pct_of_dense_attention=pct(timings[f"attention_svg_{d0}"] - accounted))
    for d in densities:
        per_density[d].update(
            block_speedup=dense_block / timings[f"block_svg_{d}"],
            attention_speedup=dense_attn / timings[f"attention_svg_{d}"],
            kernel_speedup=dense_attn / timings[f"sparse_kernel_{d}"],
            kernel_efficiency=per_density[d]["density_computed"] * dense_attn / timings[f"sparse_kernel_{d}"],
            svg_overhead_over_kernel_ms=timings[f"attention_svg_{d}"] - timings[f"sparse_kernel_{d}"])
    speedup_025 = per_density[0.25]["block_speedup"] if 0.25 in per_density else None
    result.update(
        timings_ms=timings, first_call_s=compile_s, per_density={str(d): r for d, r in per_density.items()},
        extras_at_density=d0, extras=extras,
        block_non_attention_ms=dense_block - dense_attn,
        goals=dict(block_speedup_at_0_25=dict(value=speedup_025, goal=f">= {GOAL_BLOCK_SPEEDUP}",
                                              met=goal(speedup_025, GOAL_BLOCK_SPEEDUP, at_most=False)),
                   profiling_pct=dict(value=extras["profiling"]["pct_of_dense_attention"],
                                      goal=f"<= {GOAL_PROFILING_PCT}",
                                      met=goal(extras["profiling"]["pct_of_dense_attention"], GOAL_PROFILING_PCT,
                                               at_most=True)),
                   transform_pct=dict(value=extras["layout_transform"]["pct_of_dense_attention"],
                                      goal=f"<= {GOAL_TRANSFORM_PCT}",
                                      met=goal(extras["layout_transform"]["pct_of_dense_attention"],
                                               GOAL_TRANSFORM_PCT, at_most=True))),
        wall_s=time.perf_counter() - wall_start)
    if args.small:
        result["note"] = "--small: CPU smoke shape, Pallas interpret and XLA dense; timings and goals not meaningful"
    json.dump(result, open(out_path, "w"), indent=1)

    print(f"\n{result['device']}, jax {result['jax']}, {result['mode']}: {cfg.seq} tokens, {cfg.heads} heads x "
          f"{cfg.head_dim}, dense {cfg.dense_implementation}, sparse {cfg.sparse_implementation}, median of {reps}")
    print("\n| what | density (computed) | ms | vs dense | % of dense attention |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| block, dense | 1 | {dense_block:.2f} | 1.00x | – |")
    for d in densities:
        r = per_density[d]
        print(f"| block, SVG | {d} ({r['density_computed']:.3f}) | {timings[f'block_svg_{d}']:.2f} | "
              f"{r['block_speedup']:.2f}x | – |")
    print(f"| attention, dense | 1 | {dense_attn:.2f} | 1.00x | 100 % |")
    for d in densities:
        r = per_density[d]
        print(f"| attention, svg_attention | {d} ({r['density_computed']:.3f}) | {timings[f'attention_svg_{d}']:.2f} "
              f"| {r['attention_speedup']:.2f}x | {pct(timings[f'attention_svg_{d}']):.1f} % |")
        print(f"| attention, block-sparse op alone | {d} ({r['density_computed']:.3f}) | "
              f"{timings[f'sparse_kernel_{d}']:.2f} | {r['kernel_speedup']:.2f}x | "
              f"{pct(timings[f'sparse_kernel_{d}']):.1f} % |")
    for name, e in extras.items():
        print(f"| extra: {name.replace('_', ' ')} | {d0} | {e['ms']:.2f} | – | {e['pct_of_dense_attention']:.2f} % |")
    print()
    for d in densities:
        print(f"density {d}: {per_density[d]['heads_temporal_fraction']:.2f} of heads classified temporal "
              f"(random weights); kernel efficiency {per_density[d]['kernel_efficiency']:.2f}")
    for name, g in result["goals"].items():
        value = "n/a" if g["value"] is None else f"{g['value']:.2f}"
        met = "n/a" if g["met"] is None else ("met" if g["met"] else "missed")
        print(f"goal {name}: {value} (goal {g['goal']}): {met}")
    if args.small:
        print(result["note"])
    print(f"wrote {out_path} ({result['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
