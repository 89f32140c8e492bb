"""The table of a CAN sweep (`jaxgen sweep` over configs/can/*_shape_classes32.gin × method tiers × seeds).

    PYTHONPATH=. python3 experiments/can/summarize.py --root runs/can [--out experiments/can/results.json]

For every experiment and method (workdir tier `base` = the backbone's own conditioning, `can`, `aks`), the last
evaluation of each finished seed: every `eval/...` number it logged (held-out ε-MSE now; the sample-quality
evaluators' FD-classifier and sample accuracy once they are merged), as mean ± sample standard deviation over seeds,
and the final training loss. Prints one markdown table per experiment; writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from jaxgen import sweep

METHODS = {"base": "backbone alone", "can": "+ CAN", "aks": "+ AKS"}


def last_eval(records: list[dict]) -> dict[str, float]:
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    if not evals:
        return {}
    numbers = {k: v for k, v in evals[-1].items() if k.startswith("eval/") and isinstance(v, (int, float))}
    losses = [r["loss"] for r in records if "loss" in r]
    return {"step": evals[-1]["step"], **numbers, **({"train/loss": losses[-1]} if losses else {})}


def summarize(root: Path) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{experiment: {method: {metric: [value of each seed]}}} from the finished runs under `root`."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for name, records in sweep.collect(root).items():
        experiment, method, _seed = name.split("/")
        for metric, value in last_eval(records).items():
            table[experiment][method][metric].append(value)
    return table


def markdown(experiment: str, by_method: dict) -> str:
    methods = [m for m in METHODS if m in by_method] + sorted(set(by_method) - set(METHODS))
    metrics = sorted({k for m in methods for k in by_method[m] if k != "step"})
    seeds = {m: len(next(iter(by_method[m].values()))) for m in methods}
    lines = [f"{experiment} (seeds per method: " + ", ".join(f"{METHODS.get(m, m)} {seeds[m]}" for m in methods)
             + ")", "", "| metric | " + " | ".join(METHODS.get(m, m) for m in methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for metric in metrics:
        cells = []
        for m in methods:
            values = np.asarray(by_method[m].get(metric, []), np.float64)
            spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.4f}{spread}" if len(values) else "—")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out")
    args = parser.parse_args()
    table = summarize(Path(args.root))
    if not table:
        raise SystemExit(f"summarize: no finished run under {args.root}")
    for experiment, by_method in sorted(table.items()):
        print(markdown(experiment, by_method), end="\n\n")
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
