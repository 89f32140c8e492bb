"""Tables and the accuracy-vs-epsilon plot of a DP-FedGCL grid (`experiments/fedgcl/sweeps.sh ROOT [DATASET]`).

    PYTHONPATH=. python3 experiments/fedgcl/summarize.py --root runs/fedgcl/grid --out experiments/fedgcl
    PYTHONPATH=. python3 experiments/fedgcl/summarize.py --root runs/fedgcl/sbm --dataset sbm --out experiments/fedgcl

Each run's score is its test accuracy at the evaluation with the best validation accuracy (the earliest one on ties;
evaluations every 5 rounds); the final round's test accuracy is kept beside it. Writes `results.json` (every run's
numbers and the per-cell means) and `accuracy_vs_epsilon.png` (`results_<dataset>.json` and
`accuracy_vs_epsilon_<dataset>.png` for a dataset other than the Drosophila connectome), and prints the markdown
tables of the README: accuracy per (model, GCL) and epsilon, the DP-induced drop acc(inf) - acc(epsilon) without and
with GRACE, and the final round's accuracy.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from jaxgen import sweep

ALL_EPSILONS = {"epsinf": float("inf"), "eps8": 8.0, "eps4": 4.0, "eps2": 2.0, "eps1": 1.0}
LAYERS = {"gcn": "GCN", "gat": "GAT", "sage": "GraphSAGE", "gin": "GIN"}
DATASETS = {"drosophila": "the Drosophila connectome", "sbm": "the small contextual SBM"}
# The grid being summarised (set by main from --dataset and the folders present).
EPSILONS = dict(ALL_EPSILONS)
MODELS = {f"drosophila_{layer}": name for layer, name in LAYERS.items()}
GCL = {"base": "without GCL", "grace": "with GRACE"}
VAL, TEST = "eval/accuracy/val_accuracy", "eval/accuracy/test_accuracy"


def score(records: list[dict]) -> dict[str, float]:
    evals = [r for r in records if VAL in r and r.get("source") != "eval"]
    best = max(evals, key=lambda r: (r[VAL], -r["step"]))
    return {"test_at_best_val": best[TEST], "best_val": best[VAL], "best_round": best["step"],
            "final_test": evals[-1][TEST]}


def load(root: Path) -> dict:
    """{(epsilon name, model, gcl): {seed: score}} for every finished run."""
    runs: dict = defaultdict(dict)
    for eps_name in EPSILONS:
        if not (root / eps_name).is_dir():
            continue
        for name, records in sweep.collect(root / eps_name).items():
            config, tier, seed = name.split("/")
            runs[(eps_name, config, tier)][int(seed.removeprefix("s"))] = score(records)
    return runs


def cell(runs, eps_name, config, tier, key="test_at_best_val"):
    values = [s[key] for s in runs.get((eps_name, config, tier), {}).values()]
    if not values:
        return float("nan"), float("nan"), 0
    return (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))


def fmt(mean, std, n):
    return f"{100 * mean:.1f} ± {100 * std:.1f}" + ("" if n == 3 else f" (n={n})") if n else "–"


def accuracy_table(runs, key: str) -> str:
    header = "| model | GCL | " + " | ".join("ε = ∞" if np.isinf(e) else f"ε = {e:g}" for e in EPSILONS.values())
    rows = [header + " |", "|---" * (2 + len(EPSILONS)) + "|"]
    for config, model in MODELS.items():
        for tier, gcl in GCL.items():
            rows.append(f"| {model} | {gcl} | " + " | ".join(fmt(*cell(runs, e, config, tier, key)) for e in EPSILONS)
                        + " |")
    return "\n".join(rows)


def drop_table(runs) -> str:
    noisy = list(EPSILONS.values())[1:]
    drops = ["| model | " + " | ".join(f"drop at ε = {e:g}: without → with GRACE" for e in noisy) + " |",
             "|---" * len(EPSILONS) + "|"]
    for config, model in MODELS.items():
        row = []
        for eps_name in list(EPSILONS)[1:]:
            parts = []
            for tier in GCL:
                base, noisy = cell(runs, "epsinf", config, tier)[0], cell(runs, eps_name, config, tier)[0]
                parts.append(f"{100 * (base - noisy):+.1f}")
            row.append(" → ".join(parts))
        drops.append(f"| {model} | " + " | ".join(row) + " |")
    return "\n".join(drops)


def plot(runs, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.arange(len(EPSILONS))
    fig, axes = plt.subplots(1, len(MODELS), figsize=(4.2 * len(MODELS), 3.4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (config, model) in zip(axes, MODELS.items()):
        for tier, gcl in GCL.items():
            stats = [cell(runs, e, config, tier) for e in EPSILONS]
            ax.errorbar(xs, [100 * m for m, _, _ in stats], yerr=[100 * s for _, s, _ in stats], marker="o",
                        capsize=3, label=gcl)
        ax.set_xticks(xs, ["∞" if np.isinf(e) else f"{e:g}" for e in EPSILONS.values()])
        ax.set_xlabel("ε (EdgeRand, per client)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy % (best val round)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--dataset", default="drosophila", choices=sorted(DATASETS))
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    global EPSILONS, MODELS
    EPSILONS = {name: e for name, e in ALL_EPSILONS.items() if (args.root / name).is_dir()}
    runs = load(args.root)
    MODELS = {config: name for layer, name in LAYERS.items()
              if any(k[1] == (config := f"{args.dataset}_{layer}") for k in runs)}
    suffix = "" if args.dataset == "drosophila" else f"_{args.dataset}"
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / f"accuracy_vs_epsilon{suffix}.png",
         f"DP-FedGCL on {DATASETS[args.dataset]}: 2 clients, mean ± std over 3 seeds")
    results = {"runs": {"/".join(k): v for k, v in sorted(runs.items())},
               "cells": {"/".join(k): dict(zip(("mean", "std", "n"), cell(runs, *k))) for k in sorted(runs)}}
    (args.out / f"results{suffix}.json").write_text(json.dumps(results, indent=1))
    print(accuracy_table(runs, "test_at_best_val"), drop_table(runs), accuracy_table(runs, "final_test"), sep="\n\n")


if __name__ == "__main__":
    main()
