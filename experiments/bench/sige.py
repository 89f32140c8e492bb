"""SIGE: one pass of a UNet or of the GauGAN generator on an edited input, dense vs spatially sparse incremental, at
edit areas 1.2 / 5 / 15 / 30 %.

Recipe:
  command   GPU: PYTHONPATH=. python3 experiments/bench/sige.py --out experiments/bench/sige.json
            CPU (reduced widths and sizes, see --quick; bf16 is emulated on CPU, so float32 only):
            PYTHONPATH=. nice -n 10 python3 experiments/bench/sige.py --quick --reps 5 --dtypes float32 \
                --out experiments/bench/sige_cpu.json
            (--models gaugan runs one model; the merge comparison then runs only with --merge)
            The fused site kernel against today's XLA chain, DDPM and SD in float32 (one model per command keeps
            each under the device's 10-minute slot):
            PYTHONPATH=. python3 experiments/bench/sige.py --models ddpm --dtypes float32 --reps 20 \
                --implementations xla,pallas --out experiments/bench/sige_fused_ddpm_h100.json
  hardware  one GPU (H100) for the full sizes; --quick runs on CPU
  wall time --quick: about 6 minutes on 2 shared CPU cores for ddpm and sd, 2 for gaugan (2026-12-07); full sizes
            on an H100: DDPM + SD float32 and DDPM bfloat16 took about 260 s with the XLA chain alone (2026-12-07);
            the fused kernel: not yet run
  expected  goals from the paper's claim: at ~1.2 % edit area ≥ 5× fewer MACs and ≥ 2× lower latency than dense;
            at 30 % never slower than 1.1× dense

Models (random weights; timing does not depend on their values):
  ddpm  the DDPM UNet of google/ddpm-church-256 (`ddpm_unet`: ch 128, mult 1,1,2,2,4,4, two resnets per level,
        attention at 16², 256 px, timestep input), sites below 64² dense as in the official config
        (sparse_resolution_threshold 64); --quick: ch 32 at 128 px, sites below 32² dense
  sd    a Stable-Diffusion-1.x-shaped latent UNet (`sd_unet`: 320/640/1280/1280, transformer blocks with self- and
        cross-attention on 77 × 768 text tokens, 64² latents), sites below 16² dense; --quick: 64/128/256/256
        channels, same latents and threshold
  gaugan the GauGAN generator of the official SIGE benchmark (`gaugan`: ngf 64, 36 input channels, "more"
        upsampling, eval-mode batch norm) on 256 × 512 one-hot maps, sites below 16 rows dense (the official
        num_sparse_layers 5: G_middle_1 and up); --quick: ngf 16 on 128 × 256 maps, sites below 8 rows dense (the
        same blocks sparse)

The edit is a square of the given area fraction placed off-centre: for the UNets the input moves there and the
mask is given to the engine (as SDEdit does with the mask of the clean images); for GauGAN the map is relabelled
there (a random map of 16-pixel label cells, each edited pixel gets the next label) and the mask is the
difference of the two one-hot maps. Masks are dilated by one pixel per resolution (the UNets' official default),
two for GauGAN (its official downsample_dilate_radius). For each model, dtype and area, in one process: the dense
jitted `module.apply` on the edited input, and `IncrementalEngine.edit` after `full` on the original (the plan of
a mask — for GauGAN with its difference mask — is built once per edit and reused by every later call, so it is
timed separately as `plan_ms`). Latencies: median of --reps after one warm-up call (which compiles), each ended
by block_until_ready, dense and sparse calls alternating. MACs: convs, attention and projections from shapes
(`IncrementalEngine.macs`): `sparse` counts active tiles, `executed` the padded bucket slots the program runs.
First, the merge alone at the DDPM UNet's finest site: tiles written into the cached map through the scatter map
(a gather, as the engine does) against XLA's scatter with unique indices.

--implementations (`layers.IMPLEMENTATIONS`) picks how sparse conv sites run, each with its own engine and rows in
the same process: "xla" chains XLA ops per site (gather → norm / activation → VALID conv → merge); "pallas" runs each
site as one launch of `pallas_kernels.sparse_conv` (the Triton-lowered kernel on a GPU, its jnp reference on CPU).
Every row re-times the dense baseline alternating with its own sparse pass, and records `fused_sites` (sites the
kernel took; RGB `conv_in` / `conv_out`, attention and SPADE-modulated convs stay on XLA) and the largest
|difference| of its output from the first implementation's (TF32 roundings on a GPU; the outputs should agree).
--kernel-blocks rows:block_n:block_k,... runs each fused implementation once per block-size spec (a tuning sweep of
`pallas_kernels/sparse_conv/tuning.py` in the same process).
Writes the JSON after every row, prints a markdown table at the end.
Imports jax, flax, numpy, jaxgen.projects.sige and pallas_kernels only (no gin, no TFDS, no diffusers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.sige import IncrementalEngine, SigeUNet, ddpm_unet, gaugan, random_params, sd_unet
from jaxgen.projects.sige import masks as masks_lib
from jaxgen.projects.sige.layers import FUSED_SITE_KERNELS, IMPLEMENTATIONS, merge_tiles
from pallas_kernels.sparse_conv import BlockSizes

AREAS = (0.012, 0.05, 0.15, 0.30)
MODELS = ("ddpm", "sd", "gaugan")


@dataclasses.dataclass
class Setting:
    """One benchmarked model: its input shape, conditioning shapes, the engine's `min_sparse_res` and dilation;
    `segmap`: the input is a one-hot semantic map (edited by relabelling, no timesteps) rather than an image."""

    module: object
    shape: tuple[int, ...]
    cond_shapes: dict
    min_res: int
    dilation: int = 1
    segmap: bool = False


def models(quick: bool, dtype) -> dict[str, Setting]:
    if quick:
        ddpm = SigeUNet(block_out_channels=(32, 32, 64, 64, 128, 128), dtype=dtype)
        sd = SigeUNet(in_channels=4, out_channels=4, block_out_channels=(64, 128, 256, 256),
                      attention_levels=(True, True, True, False), groups=32, eps=1e-5, num_heads=8,
                      cross_attention_dim=768, flip_sin_to_cos=True, freq_shift=0.0, dtype=dtype)
        return {"ddpm": Setting(ddpm, (1, 128, 128, 3), {}, 32),
                "sd": Setting(sd, (1, 64, 64, 4), {"context": (1, 77, 768)}, 16),
                "gaugan": Setting(gaugan(ngf=16, dtype=dtype), (1, 128, 256, 36), {}, 8, 2, True)}
    return {"ddpm": Setting(ddpm_unet(dtype), (1, 256, 256, 3), {}, 64),
            "sd": Setting(sd_unet(dtype), (1, 64, 64, 4), {"context": (1, 77, 768)}, 16),
            "gaugan": Setting(gaugan(dtype=dtype), (1, 256, 512, 36), {}, 16, 2, True)}


def inputs(setting: Setting, rng: np.random.Generator, dtype):
    """(original input, its edit for a mask) — a Gaussian image moved by 1 inside the mask, or a one-hot map of
    16-pixel label cells relabelled inside it."""
    batch, height, width, channels = setting.shape
    if not setting.segmap:
        x = jnp.asarray(rng.standard_normal(setting.shape), dtype)
        return x, lambda mask: jnp.where(jnp.asarray(mask)[None, :, :, None], x + 1.0, x).astype(dtype)
    cells = rng.integers(0, channels, (batch, height // 16, width // 16))
    labels = np.repeat(np.repeat(cells, 16, axis=1), 16, axis=2)
    return (jax.nn.one_hot(labels, channels, dtype=dtype),
            lambda mask: jax.nn.one_hot(np.where(mask, (labels + 1) % channels, labels), channels, dtype=dtype))


def square_mask(height: int, width: int, area: float) -> np.ndarray:
    side_h, side_w = max(1, round(math.sqrt(area) * height)), max(1, round(math.sqrt(area) * width))
    top, left = int(0.3 * (height - side_h)), int(0.6 * (width - side_w))
    mask = np.zeros((height, width), bool)
    mask[top:top + side_h, left:left + side_w] = True
    return mask


def timed_pair(first, second, reps: int) -> tuple[float, float]:
    """Median ms of each function over `reps` alternating calls (drift on a shared machine hits both alike)."""
    jax.block_until_ready(first())
    jax.block_until_ready(second())
    times = ([], [])
    for _ in range(reps):
        for fn, out in zip((first, second), times):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1])


def variants(implementations: list[str], kernel_blocks: list[str]) -> dict[str, tuple[str, BlockSizes | None]]:
    """Label -> (implementation, fused-kernel block sizes): each fused implementation once per `rows:block_n:block_k`
    spec (labelled `pallas[64:64:32]`), or once with the tuned defaults when no spec is given."""
    out = {}
    for impl in implementations:
        if impl not in FUSED_SITE_KERNELS or not kernel_blocks:
            out[impl] = (impl, None)
            continue
        for spec in kernel_blocks:
            rows, block_n, block_k = (int(v) for v in spec.split(":"))
            out[f"{impl}[{spec}]"] = (impl, BlockSizes(rows=rows, block_n=block_n, block_k=block_k))
    return out


def run(quick: bool, reps: int, dtypes: list[str], areas: tuple[float, ...], names: list[str],
        implementations: dict[str, tuple[str, BlockSizes | None]], on_row) -> list[dict]:
    """One row per model, dtype, area and sparse-site implementation (`variants`); `on_row(row)` after each (it
    saves)."""
    rows = []
    for dtype_name in dtypes:
        dtype = jnp.dtype(dtype_name)
        settings = models(quick, dtype)
        for name in names:
            setting = settings[name]
            module, shape = setting.module, setting.shape
            rng = np.random.default_rng(0)
            x, edit_of = inputs(setting, rng, dtype)
            cond = {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in setting.cond_shapes.items()}
            if not setting.segmap:
                cond["timesteps"] = jnp.full((shape[0],), 500.0)
            params = random_params(module, x, **cond)
            dense = jax.jit(module.apply)
            engines = {label: IncrementalEngine(module, params, dilation=setting.dilation,
                                                min_sparse_res=setting.min_res, implementation=impl,
                                                kernel_blocks=blocks)
                       for label, (impl, blocks) in implementations.items()}
            first = next(iter(engines))
            for engine in engines.values():
                engine.full(x, **cond)
            for area in areas:
                edited = edit_of(square_mask(shape[1], shape[2], area))
                outputs = {}
                for label, engine in engines.items():
                    start = time.perf_counter()
                    mask = masks_lib.difference_mask(x, edited) if setting.segmap else square_mask(shape[1], shape[2],
                                                                                                     area)
                    plan = engine.plan(mask)
                    plan_ms = 1e3 * (time.perf_counter() - start)
                    dense_ms, sparse_ms = timed_pair(lambda: dense(params, edited, **cond),
                                                     lambda: engine.edit(edited, mask=mask, **cond), reps)
                    outputs[label] = np.asarray(engine.edit(edited, mask=mask, **cond), np.float32)
                    macs = engine.macs(plan)
                    row = {"model": name, "dtype": dtype_name, "area": area, "implementation": label,
                           "mask_area": float(mask.mean()), "bucket": plan.level, "macs_dense": macs["dense"],
                           "macs_sparse": macs["sparse"], "macs_executed": macs["executed"],
                           "macs_ratio": macs["dense"] / macs["sparse"], "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                           "speedup": dense_ms / sparse_ms, "plan_ms": plan_ms,
                           "fused_sites": len(engine.fused_sites),
                           f"max_abs_diff_vs_{first}": float(np.abs(outputs[label] - outputs[first]).max())}
                    rows.append(row)
                    on_row(row)
    return rows


def merge_variants(quick: bool, reps: int, areas: tuple[float, ...], on_row) -> list[dict]:
    """Writing 4×4 tiles into a cached map, at the DDPM UNet's finest site: through the scatter map (a gather,
    what the engine does) and through XLA's scatter (`.at[].set`, unique indices promised)."""
    size, channels = (128, 32) if quick else (256, 128)
    rng = np.random.default_rng(0)
    cached = jnp.asarray(rng.standard_normal((1, size, size, channels)), jnp.float32)
    rows = []
    for area in areas:
        grid = masks_lib.active_tiles(masks_lib.dilate(square_mask(size, size, area), 1), masks_lib.CONV3)
        indices = masks_lib.tile_indices(grid)
        tiles = jnp.asarray(rng.standard_normal((1, len(indices), 4, 4, channels)), jnp.float32)
        scatter_map = jnp.asarray(masks_lib.scatter_map(indices, size, size, 4))
        ty, tx = indices[:, 0, None, None] * 4 + np.arange(4)[:, None], indices[:, 1, None, None] * 4 + np.arange(4)
        pixels = jnp.asarray((ty * size + tx).reshape(-1))
        gather = jax.jit(merge_tiles)
        scatter = jax.jit(lambda t, p, c: c.reshape(1, size * size, channels).at[:, p].set(
            t.reshape(1, -1, channels), unique_indices=True, indices_are_sorted=False).reshape(c.shape))
        gather_ms, scatter_ms = timed_pair(lambda: gather(tiles, scatter_map, cached),
                                           lambda: scatter(tiles, pixels, cached), reps)
        same = bool(jnp.array_equal(gather(tiles, scatter_map, cached), scatter(tiles, pixels, cached)))
        rows.append({"area": area, "tiles": len(indices), "map_shape": [size, size, channels],
                     "gather_map_ms": gather_ms, "xla_scatter_ms": scatter_ms, "equal": same})
        on_row(rows[-1])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced widths and sizes (CPU)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--areas", default=",".join(str(a) for a in AREAS))
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)} (default: all, "
                        "and the merge comparison)")
    parser.add_argument("--merge", action="store_true", help="the merge comparison even with --models given")
    parser.add_argument("--implementations", default="xla",
                        help=f"comma-separated sparse-site implementations, of {', '.join(IMPLEMENTATIONS)}; each gets "
                        "its own rows against the same dense baseline (e.g. xla,pallas: the fused site kernel)")
    parser.add_argument("--kernel-blocks", default="",
                        help="comma-separated rows:block_n:block_k of the fused kernel (e.g. 64:64:32,16:64:32); "
                        "each fused implementation runs once per spec (default: once, with its tuned defaults)")
    parser.add_argument("--out", default="experiments/bench/sige.json")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else list(MODELS)
    if set(names) - set(MODELS):
        parser.error(f"unknown models {sorted(set(names) - set(MODELS))}; choose from {', '.join(MODELS)}")
    implementations = args.implementations.split(",")
    if set(implementations) - set(IMPLEMENTATIONS):
        parser.error(f"unknown implementations {sorted(set(implementations) - set(IMPLEMENTATIONS))}; choose from "
                     f"{', '.join(IMPLEMENTATIONS)}")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    areas = tuple(float(a) for a in args.areas.split(","))
    result = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
              "quick": args.quick, "reps": args.reps, "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "rows": [], "merge": []}

    def saving(key):
        def on_row(row):
            print(json.dumps(row), flush=True)
            result[key].append(row)
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        return on_row

    if args.models is None or args.merge:
        merge_variants(args.quick, args.reps, areas, saving("merge"))
    rows = run(args.quick, args.reps, args.dtypes.split(","), areas, names,
               variants(implementations, [b for b in args.kernel_blocks.split(",") if b]), saving("rows"))
    print("\n| model | dtype | area | implementation | bucket | MACs dense (G) | MACs sparse (G) | MACs ratio | dense ms "
          "| sparse ms | speed-up |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['dtype']} | {100 * r['area']:.1f} % | {r['implementation']} | {r['bucket']} "
              f"| {r['macs_dense'] / 1e9:.1f} "
              f"| {r['macs_sparse'] / 1e9:.2f} | {r['macs_ratio']:.1f}× | {r['dense_ms']:.1f} | {r['sparse_ms']:.1f} "
              f"| {r['speedup']:.2f}× |")


if __name__ == "__main__":
    main()
