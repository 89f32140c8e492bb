"""The ML-100K table of experiments/automlp/README.md from the sweeps of `experiments/automlp/sweeps.sh`.

    PYTHONPATH=. python3 experiments/automlp/summarize.py --root runs/automlp --out experiments/automlp

Model selection as RecBole's early stopping: each run is evaluated every EVAL_EVERY steps on valid and test in one
pass; the evaluation with the best valid NDCG@10 is that run's result, and its test metrics are what the table shows
(mean ± sample std over seeds). AutoMLP's rows are its retrained model's, with the window each seed's search chose.
Writes `results.json` (every run's selected step and metrics, AutoMLP's search results) and
`alpha_trajectories.png` (softmax(alpha) of each window during each seed's search), and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from jaxgen import sweep
from jaxgen.core import metrics as metrics_lib
from jaxgen.projects.automlp import trainer

SELECT_ON = "eval/ranking/valid/ndcg@10"
METRICS = [f"{name}@{k}" for name in ("hr", "ndcg", "mrr") for k in (5, 10, 20)]


def model_name(root: Path, run: str) -> str:
    """`automlp_ml100k/base/s0` -> AutoMLP; a fixed-k sweep's root is named `k<window>` -> mixer k=<window>."""
    config = run.split("/")[0].removesuffix("_ml100k")
    if config == "mixer":
        return f"mixer k={root.name.removeprefix('k')}"
    return {"automlp": "AutoMLP (searched k)", "sasrec": "SASRec", "gru4rec": "GRU4Rec"}[config]


def selected(records: list[dict]) -> dict:
    """The evaluation with the best valid NDCG@10 (the earliest of equals): its step, valid and test metrics."""
    evaluations = [r for r in records if SELECT_ON in r and r.get("source") != "eval"]
    if not evaluations:
        raise ValueError("a finished run without ranking evaluations")
    best = max(evaluations, key=lambda r: (r[SELECT_ON], -r["step"]))
    return {"step": best["step"], "last_step": evaluations[-1]["step"],
            **{f"{split}/{m}": best[f"eval/ranking/{split}/{m}"] for split in ("valid", "test") for m in METRICS}}


def load(root: Path) -> dict[str, list[dict]]:
    runs = defaultdict(list)
    for sweep_root in sorted(p for p in root.iterdir() if p.is_dir()):
        for run, records in sorted(sweep.collect(sweep_root).items()):
            result = {"run": f"{sweep_root.name}/{run}", **selected(records)}
            search_file = sweep_root / run / trainer.SEARCH_FILE
            if search_file.is_file():
                result["search"] = json.loads(search_file.read_text())
            runs[model_name(sweep_root, run)].append(result)
    return dict(runs)


def table(runs: dict[str, list[dict]], split: str) -> str:
    order = sorted(runs, key=lambda name: (not name.startswith("AutoMLP"), name.startswith("mixer"), name))
    means = {name: {m: np.mean([r[f"{split}/{m}"] for r in runs[name]]) for m in METRICS} for name in order}
    best = {m: max(means[name][m] for name in order) for m in METRICS}
    lines = ["| model | seeds | " + " | ".join(m.upper() for m in METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for name in order:
        cells = []
        for m in METRICS:
            values = [r[f"{split}/{m}"] for r in runs[name]]
            std = np.std(values, ddof=1) if len(values) > 1 else float("nan")
            text = f"{np.mean(values):.4f} ± {std:.4f}"
            cells.append(f"**{text}**" if means[name][m] == best[m] else text)
        lines.append(f"| {name} | {len(runs[name])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_alpha(root: Path, runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    searched = runs.get("AutoMLP (searched k)", [])
    if not searched:
        return
    fig, axes = plt.subplots(1, len(searched), figsize=(4.2 * len(searched), 3.2), squeeze=False, sharey=True)
    for ax, run in zip(axes.flat, searched):
        windows = run["search"]["windows"]
        steps, weights = trainer.alpha_trajectory(
            metrics_lib.read_records(root / run["run"] / trainer.SEARCH_DIR), windows)
        for i, k in enumerate(windows):
            ax.plot(steps, weights[:, i], label=f"k = {k}")
        ax.set_title(f"{run['run'].split('/')[-1]}: chose k = {run['search']['chosen_window']}", fontsize=9)
        ax.set_xlabel("search step")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("softmax(alpha)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the sweeps' root (one folder per sweep under it)")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load(root)
    (out / "results.json").write_text(json.dumps(runs, indent=1) + "\n")
    plot_alpha(root, runs, out / "alpha_trajectories.png")
    print("Test (at the best valid NDCG@10):\n" + table(runs, "test"))
    print("\nValid (the selection metric's split):\n" + table(runs, "valid"))
    for run in runs.get("AutoMLP (searched k)", []):
        search = run["search"]
        print(f"{run['run']}: chose k={search['chosen_window']}, weights "
              + ", ".join(f"{k}: {w:.3f}" for k, w in zip(search["windows"], search["weights"])))
    for name, results in sorted(runs.items()):
        print(f"{name}: selected steps {[r['step'] for r in results]} of {[r['last_step'] for r in results]}")


if __name__ == "__main__":
    main()
