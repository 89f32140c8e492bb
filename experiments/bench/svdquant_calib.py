"""SVDQuant calibration time of FLUX.1-size linear layers, against naive W4A4 and SmoothQuant in the same process.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/svdquant_calib.py [--tokens 4096] [--out experiments/bench]
            smoke (CPU): PYTHONPATH=. python3 experiments/bench/svdquant_calib.py --quick
  hardware  one H100 (the CPU --quick run checks the script only)
  wall time not yet measured on an H100
  expected  not yet measured; goal (issue 24): a whole FLUX.1-dev calibration <= 1 h on one H100, i.e. about
            7 s per linear layer (diffusers' FLUX.1-dev has ~500 linears in its blocks: 14 per double-stream block
            x 19, 6 per single-stream block x 38), against deepcompressor's ~12 h

What is timed: `jaxgen.projects.svdquant.quantize_linear` on one layer, `w [K, N]` with two planted outlier input rows
(x10) and calibration inputs `x [tokens, K]` with 16 outlier channels (x30), as diffusion transformers have them, for
the FLUX.1 shapes 3072 x 3072 (attention projections), 3072 x 12288 (MLP up) and 12288 x 3072 (MLP down). Methods:
naive W4A4 (the baseline: round to nearest), SmoothQuant (the official 39-candidate smoothing search), SVDQuant
(search with a rank-32 branch per candidate, then up to 100 low-rank refinement iterations with early stop) with the
exact SVD and with the randomized one. Each (shape, method) runs once to compile, then `--reps` times; the median is
reported, with the held-out output MSE (fresh inputs from the same distribution) so speed never hides quality.
float32 weights and activations (calibration precision); the products are HIGHEST precision.

Imports jax, numpy and jaxgen's svdquant package (flax, pallas_kernels); no gin or TFDS. Results:
<out>/svdquant_calib.json (device, versions, settings, per-(shape, method) seconds and MSE) and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.svdquant import linear

FLUX_SHAPES = ((3072, 3072), (3072, 12288), (12288, 3072))
QUICK_SHAPES = ((256, 256), (256, 512))
# The randomized SVD before the exact one: on the H100 the exact path's 39 + up to 100 full SVDs of a 3072 x 3072
# layer did not finish in 130 s (2026-12-07), so a time-limited run reaches the path a FLUX calibration would use.
METHODS = (("naive", "exact"), ("smoothquant", "exact"), ("svdquant", "randomized"), ("svdquant", "exact"))


def planted(k: int, n: int, tokens: int, seed: int):
    """w [K, N] with 2 outlier rows, calibration and held-out inputs [tokens, K] with 16 outlier channels."""
    rng = np.random.default_rng(seed)
    channels = rng.choice(k, min(16, k // 8), replace=False)
    w = (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float32)
    w[rng.choice(k, 2, replace=False)] *= 10

    def inputs():
        x = rng.normal(size=(tokens, k)).astype(np.float32)
        x[:, channels] *= 30
        return x

    return w, inputs(), inputs()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="calibration tokens per layer")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 rep, few iterations: a CPU check")
    parser.add_argument("--out", default="experiments/bench")
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else FLUX_SHAPES
    tokens, reps = (256, 1) if args.quick else (args.tokens, args.reps)
    iters = 5 if args.quick else linear.LOWRANK_ITERS
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    results = []
    summary = {"device": device.device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
               "python": platform.python_version(), "date": datetime.date.today().isoformat(),
               "settings": {"tokens": tokens, "rank": args.rank, "reps": reps, "lowrank_iters": iters,
                            "quick": args.quick}, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("svdquant_calib_quick.json" if args.quick else "svdquant_calib.json")
    for k, n in shapes:
        w, x_calib, x_test = planted(k, n, tokens, seed=0)
        reference = x_test @ w.astype(np.float64)
        apply = jax.jit(lambda layer, x: layer(x))
        for method, svd in METHODS:
            def calibrate():
                layer, calibration = linear.quantize_linear(w, x_calib, method=method, rank=args.rank, svd=svd,
                                                            lowrank_iters=iters, return_calibration=True)
                jax.block_until_ready(layer)
                return layer, calibration

            started = time.perf_counter()
            layer, calibration = calibrate()  # compiles
            first = time.perf_counter() - started
            times = []
            for _ in range(reps):
                started = time.perf_counter()
                layer, calibration = calibrate()
                times.append(time.perf_counter() - started)
            mse = float(np.mean((np.asarray(apply(layer, jnp.asarray(x_test)), np.float64) - reference) ** 2))
            iterations = int(np.sum(~np.isnan(calibration.lowrank_errors)))
            row = {"k": k, "n": n, "method": method, "svd": svd, "seconds": statistics.median(times),
                   "first_call_seconds": first, "held_out_mse": mse, "lowrank_iterations": iterations,
                   "alpha_beta": calibration.alpha_beta}
            results.append(row)
            print(f"{k:6d} x {n:<6d} {method:12s} {svd:10s} {row['seconds']:8.2f} s (first {first:.1f} s) "
                  f"MSE {mse:.3e} low-rank iterations {iterations}", flush=True)
            path.write_text(json.dumps(summary, indent=2))  # after every row: a time-limited run keeps what it did
    return summary


if __name__ == "__main__":
    main()
