"""Training-step time against history length L: AutoMLP (linear in L) against SASRec (quadratic), in one process.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/automlp.py [--lengths 50 200 800 3200] [--batch 64] [--out DIR]
            CPU run committed here: PYTHONPATH=. python3 experiments/bench/automlp.py --batch 16 --reps 5 --inner 2
            smoke (tests): --lengths 4 --batch 2 --reps 1 --inner 1 --features 8 --items 20
  hardware  any: one H100 for the GPU numbers, the 2-core CPU machine for the CPU ones
  wall time see experiments/bench/README.md (the CPU run is dominated by SASRec at L = 3200)
  expected  AutoMLP's time grows about linearly with L (log-log slope ~1 beyond L = 200), SASRec's faster; goal:
            AutoMLP (the trained model) >= 3x faster than SASRec at L = 800

What one step is: the full training step either model takes in `jaxgen.projects.automlp` — forward over a batch of
full histories (no padding) [batch, L], full-softmax cross-entropy over `--items` items, backward, an Adam update;
jitted once per (model, L), donated parameters, timed after one warm-up call (which compiles), `--reps` repetitions
of `--inner` steps each (one jitted scan), each ended by block_until_ready; the median repetition / inner is reported.
At each L the models take turns repetition by repetition, so on a shared machine a change of load falls on all of
them rather than on whichever model happened to run then.
All models at one width (`--features`) and depth 2, dropout on (as in training):
  automlp         the model AutoMLP trains after its search: the long-term branch over L and one short-term branch
                  over the last 16 items (the largest candidate window, so the slowest such model);
  automlp_search  the search's supernet: the long-term branch and short-term branches over the last 1, 2, 4, 8, 16;
  sasrec          one head, XLA's attention (`jaxgen.nn.attention` "dense": the L x L scores are materialised; a
                  flash kernel would save memory traffic, not the quadratic FLOPs).
float32 throughout.

Imports jax, optax, numpy and jaxgen's AutoMLP package (flax); no gin, TFDS or jraph, so it runs on a bare device
image. Results: <out>/automlp.json (device, versions, settings, per-(model, L) times, SASRec/AutoMLP ratios, log-log
slopes) and a markdown table on stdout.
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
import optax

from jaxgen.projects.automlp.baselines import SASRec
from jaxgen.projects.automlp.model import AutoMLP, cross_entropy

GOAL_SPEEDUP_AT_800 = 3.0
SEARCH_WINDOWS = (1, 2, 4, 8, 16)
MODELS = {
    "automlp": lambda num_items, length, features: AutoMLP(
        num_items, features=features, depth=2, windows=(min(SEARCH_WINDOWS[-1], length),), dropout_rate=0.2),
    "automlp_search": lambda num_items, length, features: AutoMLP(
        num_items, features=features, depth=2, windows=tuple(k for k in SEARCH_WINDOWS if k <= length),
        dropout_rate=0.2),
    "sasrec": lambda num_items, length, features: SASRec(
        num_items, max_len=length, features=features, depth=2, dropout_rate=0.2),
}


class TrainSteps:
    """One model's jitted training steps on one random batch of full histories (see the module docstring): built and
    compiled (the first call) on construction, then `rep(i)` times `inner` steps and returns seconds per step."""

    def __init__(self, model, *, batch: int, length: int, num_items: int, inner: int, seed: int):
        rng = np.random.default_rng(seed)
        history = jnp.asarray(rng.integers(1, num_items + 1, (batch, length)), jnp.int32)
        targets = jnp.asarray(rng.integers(1, num_items + 1, batch), jnp.int32)
        params = jax.jit(lambda h: model.init(jax.random.key(seed), h))(history)["params"]
        optimizer = optax.adam(1e-3)

        def loss_fn(params, key):
            scores = model.apply({"params": params}, history, train=True, rngs={"dropout": key})
            return cross_entropy(scores, targets)

        def steps(params, opt_state, key):
            def one(carry, key):
                params, opt_state = carry
                loss, grads = jax.value_and_grad(loss_fn)(params, key)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), loss

            (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), jax.random.split(key, inner))
            return params, opt_state, losses[-1]

        self.inner = inner
        self.parameters = int(sum(p.size for p in jax.tree.leaves(params)))
        self._steps = jax.jit(steps, donate_argnums=(0, 1))
        self._state = (params, optimizer.init(params))
        start = time.perf_counter()
        loss = self._run(0)
        self.first_call_s = time.perf_counter() - start
        if not np.isfinite(loss):
            raise FloatingPointError(f"{type(model).__name__} at L={length}: non-finite loss {loss}")

    def _run(self, rep: int) -> float:
        params, opt_state, loss = self._steps(*self._state, jax.random.key(rep))
        self._state = (params, opt_state)
        return float(loss.block_until_ready())

    def rep(self, rep: int) -> float:
        start = time.perf_counter()
        self._run(rep + 1)
        return (time.perf_counter() - start) / self.inner


def host_cpu() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loglog_slope(lengths, times) -> float | None:
    """Least-squares slope of log(time) against log(L) (1: linear, 2: quadratic); None with fewer than 2 points."""
    if len(lengths) < 2:
        return None
    return float(np.polyfit(np.log(lengths), np.log(times), 1)[0])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 800, 3200])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--items", type=int, default=1349, help="catalogue size (ML-100K after 5-core: 1,349)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5, help="steps per timed repetition (one jitted scan)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)), "
          f"jax {jax.__version__}", flush=True)
    results = []
    for length in args.lengths:
        steps = {name: TrainSteps(MODELS[name](args.items, length, args.features), batch=args.batch, length=length,
                                  num_items=args.items, inner=args.inner, seed=args.seed) for name in args.models}
        times = {name: [] for name in args.models}
        for rep in range(args.reps):  # the models take turns, so a change of load on a shared machine hits them all
            for name in args.models:
                times[name].append(steps[name].rep(rep))
        for name in args.models:
            ms_per_step = 1e3 * statistics.median(times[name])
            results.append({"model": name, "length": length, "ms_per_step": ms_per_step,
                            "ms_per_step_all": [1e3 * t for t in times[name]],
                            "first_call_s": steps[name].first_call_s, "parameters": steps[name].parameters,
                            "examples_per_s": args.batch / (ms_per_step / 1e3)})
            print(f"  {name:14s} L={length:5d}: {ms_per_step:10.2f} ms/step "
                  f"(first call {steps[name].first_call_s:.1f} s)", flush=True)
        del steps

    def ms(name, length):
        return next((r["ms_per_step"] for r in results if r["model"] == name and r["length"] == length), None)

    ratios = {name: {str(length): ms("sasrec", length) / ms(name, length) for length in args.lengths
                     if ms("sasrec", length) and ms(name, length)}
              for name in ("automlp", "automlp_search") if name in args.models}
    slopes = {name: {"all": loglog_slope(args.lengths, [ms(name, n) for n in args.lengths]),
                     "from_200": loglog_slope([n for n in args.lengths if n >= 200],
                                              [ms(name, n) for n in args.lengths if n >= 200])}
              for name in args.models}
    report = {
        "benchmark": "automlp train-step time vs history length",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"kind": device.device_kind, "backend": jax.default_backend(), "count": jax.device_count(),
                   "host_cpu": host_cpu()},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
        "sasrec_over": ratios,
        "loglog_slope": slopes,
        "goal": {"speedup_at_800": GOAL_SPEEDUP_AT_800,
                 "met": (ratios["automlp"]["800"] >= GOAL_SPEEDUP_AT_800
                         if "800" in ratios.get("automlp", {}) else None)},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "automlp.json").write_text(json.dumps(report, indent=2) + "\n")

    def cell(value, unit=""):
        return "-" if value is None else f"{value:.2f}{unit}"

    print("\n| L | " + " | ".join(f"{name} ms/step" for name in args.models) + " | "
          + " | ".join(f"SASRec / {name}" for name in ratios) + " |\n" + "| --- " * (1 + len(args.models) + len(ratios))
          + "|")
    for length in args.lengths:
        print(f"| {length} | " + " | ".join(cell(ms(name, length)) for name in args.models) + " | "
              + " | ".join(cell(r.get(str(length)), "x") for r in ratios.values()) + " |")
    print("log-log slope of ms/step against L (L >= 200): "
          + ", ".join(f"{name} {cell(v['from_200'])}" for name, v in slopes.items()))
    print(f"written: {out / 'automlp.json'}")
    return report


if __name__ == "__main__":
    main()
