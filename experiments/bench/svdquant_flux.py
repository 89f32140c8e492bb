"""Benchmark: SVDQuant on a FLUX.1-dev-size transformer, one GPU, one process: the bf16 forward, then SVDQuant W4A4
(rank 32) and W4A16 forwards on the same inputs (ms, memory, output error vs bf16), and the whole-model calibration
wall time (issue 24; goal <= 1 h on one H100, against deepcompressor's ~12 h).

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/svdquant_flux.py [--calibration auto|full|sampled] [--out PATH]
            CPU check at a tiny size: PYTHONPATH=. python3 experiments/bench/svdquant_flux.py --quick
  hardware  one NVIDIA H100 80GB (bf16 weights 23.8 GB, ~47 GB of host RAM for the float32 kernels); --quick on CPU
  wall time meant to fit one 10-minute command (`--budget-s`, default 540 s); not yet run on a GPU
  expected  no result yet

Model: `jaxgen.nn.flux.flux("dev")` (11.9 B parameters) with random bf16 weights (`flux.random_params`) and planted
outliers (`plant_outliers`), as diffusion transformers have them: 16 activation outlier channels (x30) at the input
of every W4A4 linear, planted upstream (the adaLN scale of the modulated inputs of q/k/v and fc1, v's columns of
q/k/v for the attention output projections, fc1's columns for the post-GELU fc2), and two weight outlier input rows
(x10) in every W4A4 kernel. Inputs as in `flux_forward.py`: 1024 px, 4,096 image + 512 text tokens, batch 1.
--quick: the tiny config at width 64 (the int4 kernels need multiples of 64), 16 image + 8 text tokens, and the
reduced search in place of the official one (a pipeline check, not a measurement).

Quantization (`jaxgen.projects.svdquant`, rules `flux_rules`: embeddings and the final layer 16-bit, adaLN linears
W4A16, every other block linear W4A4 + rank-32 branch, fc2 with GELU-shifted unsigned inputs): calibration on
`--calib-batches` batch-1 forwards at sigmas spread over (0.1, 0.9), `--tokens-per-call` strided tokens per layer
and call, the randomized SVD (`--svd`). The official search (deepcompressor): 39 smoothing candidates (`num_grids`
20), up to 100 low-rank iterations with early stop.

Calibration time, and what the W4A4 forward runs:
  1. collection (`collect_inputs`, one forward per calibration batch), timed;
  2. sampled: the official search on every quantized linear of the first `--sample-blocks` double-stream and
     single-stream blocks, each block timed; the whole model is extrapolated EXPLICITLY as
     collection + first double + 18 x later doubles (mean) + first single + 37 x later singles (mean)
     (the first block of each kind pays the compilation);
  3. full: `quantize_model` on the whole model with the official search, timed; compilation already happened in
     step 2, so the whole-model figure is collection + this time + compile (first minus mean later block, per kind).
  `--calibration auto` (default) runs 3 if the extrapolation fits what is left of `--budget-s` (keeping time for the
  quantized forwards), else quantizes the W4A4 model with a reduced search (`--reduced-grids` 2: smoothing
  candidates none, (0.5, 0), (0.5, 0.5); `--reduced-iters` 2 low-rank iterations), timed and labelled as such; the
  official whole-model time is then the extrapolation. `full` / `sampled` force either branch.
W4A16 (weights only, no search) quantizes the whole model, timed.

Timing and memory per variant (`flux_forward.run_variant`; bf16 first, W4A16 once quantized, W4A4 last):
AOT-compiled forward, ms per forward (median over windows); parameter bytes as stored (QuantizedLinear keeps scales,
smoothing and branch in float32) and at 16 bit (`model_bytes`, a deployed model's); XLA's per-program figure
(`memory_analysis`: arguments + outputs + temporaries - aliases) beside the process peak (`peak_bytes_in_use`,
monotonic: calibration included, an upper bound); relative Frobenius error of the output vs bf16. The device bf16
copies of the quantized layers are freed once their float32 host copies exist, before any quantized forward. A
quantized forward that fails on the platform's default int4 kernels is recorded and rerun on
`implementation="reference"` (XLA). JSON at --out (default $OUT/svdquant_flux.json when OUT is set, else beside this
script; --quick writes only with --out), rewritten after every phase, so a run cut short keeps what it measured.
Imports jax, flax, numpy, jaxgen and pallas_kernels (no gin, no diffusers, no torch).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")  # before jax is imported

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import flux_forward  # noqa: E402  (beside this script)
from jaxgen.nn import flux  # noqa: E402
from jaxgen.projects.svdquant import linear as sq_linear  # noqa: E402
from jaxgen.projects.svdquant import model as sq_model  # noqa: E402

OFFICIAL = dict(num_grids=sq_linear.NUM_GRIDS, lowrank_iters=sq_linear.LOWRANK_ITERS)
BLOCKS = {"double": "transformer_blocks", "single": "single_transformer_blocks"}


def plant_outliers(variables, width: int, *, seed: int = 0, count: int = 16, factor: float = 30.0,
                   weight_factor: float = 10.0, weight_rows: int = 2):
    """The bf16 parameters with activation outlier channels planted upstream of every W4A4 linear and weight outlier
    input rows in every W4A4 kernel (see the module docstring); the same channels in every block."""
    rng = np.random.default_rng(seed)
    pick = lambda n, k: np.sort(rng.choice(n, k, replace=False))  # noqa: E731
    params = jax.tree.map(lambda a: a, dict(variables["params"]))
    modulated, attention, hidden = pick(width, count), pick(width, count), pick(4 * width, count)
    streams = {"transformer_blocks": (("img_mod", "img_attn", "img_mlp"), ("txt_mod", "txt_attn", "txt_mlp")),
               "single_transformer_blocks": (("mod", "attn", "mlp"),)}
    for blocks, kinds in streams.items():
        tree = params[blocks]
        for mod, attn, mlp in kinds:
            bias = tree[mod]["bias"]  # chunks of width: shift, scale (, gate, shift, scale, gate); scale -> 1 + scale
            for chunk in ((1, 4) if blocks == "transformer_blocks" else (1,)):
                bias = bias.at[:, chunk * width + modulated].set(factor - 1)
            tree[mod]["bias"] = bias
            qkv = tree[attn]["qkv"]["kernel"].at[:, :, 2 * width + attention].multiply(factor)  # v's columns
            tree[attn]["qkv"]["kernel"] = qkv
            tree[mlp]["fc1"]["kernel"] = tree[mlp]["fc1"]["kernel"].at[:, :, hidden].multiply(factor)
            for layer in (tree[attn]["qkv"], tree[attn]["out"], tree[mlp]["fc1"], tree[mlp]["fc2"]):
                rows = pick(layer["kernel"].shape[1], weight_rows)
                layer["kernel"] = layer["kernel"].at[:, rows].multiply(weight_factor)
    return {**variables, "params": params}


def calib_batches(module, count: int, latent_size: int, text_tokens: int):
    """`count` batch-1 calibration forwards, sigmas evenly in (0.1, 0.9), fresh latents and text each."""
    for i, sigma in enumerate(np.linspace(0.1, 0.9, count) if count > 1 else [0.5]):
        inputs = flux_forward.make_inputs(module, 1, latent_size, text_tokens, seed=100 + i)
        yield (*inputs[:3], jnp.full((1,), sigma, jnp.float32), *inputs[4:]), {}


def _subtree(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def host_float32(variables, paths):
    """The kernels and biases of `paths` as host float32 numpy arrays (converted on the device, one array at a
    time): `quantize_linear` calibrates in float32 from host arrays, and both quantized models reuse these."""
    params = jax.tree.map(lambda a: a, dict(variables["params"]))
    to32 = jax.jit(lambda a: a.astype(jnp.float32))
    for path in paths:
        layer = _subtree(params, path)
        for name in ("kernel", "bias"):
            if name in layer:
                layer[name] = np.asarray(to32(layer[name]))
    return {**variables, "params": params}


def time_blocks(params32, inputs, schemes, kind: str, count: int, options) -> list[float]:
    """Seconds to calibrate every quantized linear of each of the first `count` blocks of `kind`, one block at a
    time with the public `quantize_linear`."""
    prefix = BLOCKS[kind] + "/"
    seconds = []
    for i in range(count):
        start = time.perf_counter()
        for path, scheme in sorted(schemes.items()):
            if not path.startswith(prefix) or scheme.method is None:
                continue
            layer, data = _subtree(params32["params"], path), inputs[path]
            out = sq_linear.quantize_linear(layer["kernel"][i], data.samples[i], method=scheme.method,
                                            shift=scheme.shift, x_span=data.absmax[i],
                                            bias=layer["bias"][i] if "bias" in layer else None, **options)
            jax.block_until_ready(out)
        seconds.append(time.perf_counter() - start)
    return seconds


def extrapolate(collect_s: float, per_block: dict[str, list[float]], depth: dict[str, int]) -> dict[str, Any]:
    """Whole-model calibration seconds from the sampled blocks: first block of each kind + later blocks' mean."""
    total, compile_s = collect_s, 0.0
    for kind, seconds in per_block.items():
        later = float(np.mean(seconds[1:])) if len(seconds) > 1 else seconds[0]
        total += seconds[0] + (depth[kind] - 1) * later
        compile_s += seconds[0] - later
    return {"extrapolated": True, "whole_model_s": total, "compile_s": compile_s,
            "formula": f"collect + first double + ({depth['double']} - 1) x mean(later doubles) + first single + "
                       f"({depth['single']} - 1) x mean(later singles)"}


def with_implementation(params, implementation: str):
    """The quantized parameter tree with every QuantizedLinear running on `implementation`."""
    is_layer = lambda x: isinstance(x, sq_linear.QuantizedLinear)  # noqa: E731
    return jax.tree.map(lambda x: x.replace(implementation=implementation) if is_layer(x) else x, params,
                        is_leaf=is_layer)


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny config, 16 image + 8 text tokens (CPU check)")
    parser.add_argument("--latent-size", type=int, default=128, help="VAE latent side; 128 = 1024 px, 4,096 tokens")
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--tokens-per-call", type=int, default=256)
    parser.add_argument("--candidate-batch", type=int, default=8)
    parser.add_argument("--svd", choices=sq_linear.SVDS, default="randomized")
    parser.add_argument("--sample-blocks", type=int, default=2, help="blocks of each kind timed for extrapolation")
    parser.add_argument("--calibration", choices=("auto", "full", "sampled"), default="auto")
    parser.add_argument("--reduced-grids", type=int, default=2)
    parser.add_argument("--reduced-iters", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole run (auto)")
    parser.add_argument("--implementation", default=None, help="int4 backend (default: the platform's)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.quick:
        args.latent_size, args.text_tokens, args.iters, args.windows = 8, 8, 2, 2
        args.tokens_per_call = 24
    # --quick checks the pipeline: the "official" search shrinks to the reduced one (the full one takes minutes
    # per tiny block on shared CPU cores).
    official_search = dict(num_grids=args.reduced_grids, lowrank_iters=args.reduced_iters) if args.quick else OFFICIAL
    args.batch = 1
    out_path = args.out or (None if args.quick else Path(os.environ["OUT"]) / "svdquant_flux.json"
                            if "OUT" in os.environ else Path(__file__).with_name("svdquant_flux.json"))

    device = jax.devices()[0]
    backend = "cudnn" if device.platform == "gpu" else "dense"
    overrides = dict(num_heads=4, head_dim=16) if args.quick else {}
    module = flux.flux("tiny" if args.quick else "dev", dtype=jnp.bfloat16, attention_backend=backend, **overrides)
    depth = {"double": module.num_layers, "single": module.num_single_layers}
    image_tokens = (args.latent_size // 2) ** 2
    flops = flux_forward.forward_flops(module, image_tokens, args.text_tokens)
    peak = next((p for key, p in flux_forward.PEAK_BF16_FLOPS if key in device.device_kind), None)
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}; FLUX "
          f"{'tiny (width 64)' if args.quick else 'dev'}: {flux.num_params(module) / 1e6:,.1f} M parameters, "
          f"{image_tokens} image + {args.text_tokens} text tokens, attention {backend}", flush=True)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
        "config": "tiny-width64" if args.quick else "dev", "image_tokens": image_tokens,
        "text_tokens": args.text_tokens, "attention": backend, "settings": {
            k: v for k, v in vars(args).items() if k not in ("out",)}, "rows": []}

    def save(phase: str):
        result["phase_done"] = phase
        result["elapsed_s"] = time.perf_counter() - started
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")

    def time_quantized(name: str, q: sq_model.QuantizedModel):
        """Times a quantized model's forward (flux_forward.run_variant) and records its row."""
        params = q.params if args.implementation is None else with_implementation(q.params, args.implementation)
        flux_forward.VARIANTS[name] = lambda module, _, __, params=params, q=q: (params, q.apply)
        try:
            row = flux_forward.run_variant(name, module, None, inputs, flops, peak, args, baseline)
        except Exception as err:  # noqa: BLE001 -- recorded, then the XLA reference path
            print(f"{name}: failed on the default int4 kernels ({type(err).__name__}: {err}); rerunning on "
                  f"implementation='reference'", flush=True)
            flux_forward.VARIANTS[name] = lambda module, _, __, q=q: (with_implementation(q.params, "reference"),
                                                                      q.apply)
            row = flux_forward.run_variant(name, module, None, inputs, flops, peak, args, baseline)
            row.update(implementation="reference", default_implementation_error=f"{type(err).__name__}: {err}")
        row.pop("output")
        row["model_gib_16bit"] = sq_model.model_bytes(q.params) / 2**30
        row["speedup_vs_bf16"] = bf16["ms"] / row["ms"]
        result["rows"].append(row)
        print(f"{name}: {row['ms']:.2f} ms/forward ({row['speedup_vs_bf16']:.2f}x bf16), weights "
              f"{row['param_gib']:.2f} GiB stored / {row['model_gib_16bit']:.2f} GiB at 16 bit (bf16 "
              f"{bf16['model_gib_16bit']:.2f}), forward peak (XLA) {row['xla_forward_peak_gib'] or float('nan'):.2f}"
              f" GiB, process peak {row['process_peak_gib'] or float('nan'):.2f} GiB, rel. error vs bf16 "
              f"{row['rel_err_vs_bf16']:.3e}, finite {row['output_finite']}", flush=True)
        save(name)

    start = time.perf_counter()
    variables = plant_outliers(flux.random_params(module, seed=0, dtype=jnp.bfloat16), module.width,
                               count=min(16, module.width // 8))
    jax.block_until_ready(variables)
    result["weights_s"] = time.perf_counter() - start
    inputs = flux_forward.make_inputs(module, 1, args.latent_size, args.text_tokens)

    bf16 = flux_forward.run_variant("bf16", module, variables, inputs, flops, peak, args, None)
    baseline = bf16.pop("output")
    bf16["model_gib_16bit"] = sq_model.model_bytes(variables) / 2**30
    result["rows"].append(bf16)
    print(f"bf16: {bf16['ms']:.2f} ms/forward, weights {bf16['param_gib']:.2f} GiB, forward peak (XLA) "
          f"{bf16['xla_forward_peak_gib'] or float('nan'):.2f} GiB, compile {bf16['compile_s']:.1f} s", flush=True)
    forward_s = time.perf_counter() - start - result["weights_s"]
    save("bf16")

    # Calibration data, and the float32 host copies of every layer a rule quantizes.
    start = time.perf_counter()
    calib = sq_model.collect_inputs(module, variables, calib_batches(module, args.calib_batches, args.latent_size,
                                                                     args.text_tokens),
                                    tokens_per_call=args.tokens_per_call)
    collect_s = time.perf_counter() - start
    schemes = sq_model.assign_schemes(calib, sq_model.flux_rules("svdquant"))
    quantized_paths = [path for path, scheme in schemes.items() if scheme.method is not None]
    start = time.perf_counter()
    params32 = host_float32(variables, quantized_paths)
    del variables  # the device bf16 copies of the quantized layers; params32 keeps the rest (shared)
    result["calibration"] = {"collect_s": collect_s, "to_host_float32_s": time.perf_counter() - start,
                             "calib_batches": args.calib_batches, "tokens_per_layer": int(
                                 calib[quantized_paths[0]].samples.shape[-2]), "quantized_linears": sum(
                                 depth["double" if p.startswith("transformer_") else "single"]
                                 for p in quantized_paths)}
    print(f"calibration inputs: {collect_s:.1f} s for {args.calib_batches} forwards", flush=True)
    save("collect")

    options = dict(rank=args.rank, svd=args.svd, candidate_batch=args.candidate_batch)
    start = time.perf_counter()
    w4a16 = sq_model.quantize_model(module, params32, None, sq_model.flux_rules("w4a16"), inputs=calib, **options)
    jax.block_until_ready(w4a16.params)
    result["calibration"]["w4a16_whole_model_s"] = time.perf_counter() - start
    time_quantized("w4a16", w4a16)

    # Sampled official calibration, per block, and its extrapolation to the whole model.
    per_block = {kind: time_blocks(params32, calib, schemes, kind, min(args.sample_blocks, depth[kind]),
                                   {**options, **official_search}) for kind in BLOCKS}
    official = {"search": official_search, "per_block_s": per_block, **extrapolate(collect_s, per_block, depth)}
    result["calibration"]["official"] = official
    print(f"official calibration ({official_search}), sampled blocks {per_block}: whole model EXTRAPOLATED to "
          f"{official['whole_model_s']:.0f} s ({official['whole_model_s'] / 3600:.2f} h)", flush=True)
    save("sampled")

    elapsed = time.perf_counter() - started
    reserve = 1.5 * forward_s + 30  # the W4A4 forward still to run
    fits = elapsed + official["whole_model_s"] - collect_s + reserve <= args.budget_s
    recipe = "official" if args.calibration == "full" or (args.calibration == "auto" and fits) else "reduced"
    reduced = dict(num_grids=args.reduced_grids, lowrank_iters=args.reduced_iters)
    search = official_search if recipe == "official" else reduced
    start = time.perf_counter()
    w4a4 = sq_model.quantize_model(module, params32, None, sq_model.flux_rules("svdquant"), inputs=calib,
                                   **options, **search)
    jax.block_until_ready(w4a4.params)
    quantize_s = time.perf_counter() - start
    result["calibration"]["w4a4_forward_model"] = {"recipe": recipe, **search, "quantize_s": quantize_s}
    if recipe == "official":
        official.update(measured_whole_model_s=collect_s + quantize_s + official["compile_s"], measured_note=(
            "collect + quantize_model over the whole model + compile (measured during the sampled timing)"))
        print(f"official calibration of the whole model MEASURED: {official['measured_whole_model_s']:.0f} s "
              f"(extrapolation said {official['whole_model_s']:.0f} s)", flush=True)
    else:
        print(f"W4A4 forward model quantized with the REDUCED search {search} in {quantize_s:.0f} s (the official "
              f"whole-model time is the extrapolation above)", flush=True)
    del params32
    save("quantize")
    time_quantized("svdquant_w4a4", w4a4)

    if out_path is not None:
        print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
