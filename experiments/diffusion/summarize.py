"""The results table of experiments/diffusion/README.md from run workdirs: one row per workdir group (the runs of one
recipe, one per seed), the sample-quality and denoising numbers of each run's last evaluation, mean ± sample standard
deviation over the runs.

    python experiments/diffusion/summarize.py runs/diffusion/dit_s2_shape_classes32 runs/diffusion/uvit_s_shape_classes32

Each argument is a recipe's folder holding one workdir per seed (`s0`, `s1`, ... as h100_runs.sh lays them out), or a
single workdir. A run is read from `eval/<last step>/metrics.json`; the step is printed, so an unfinished run shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COLUMNS = {  # column title -> (evaluator, metric)
    "sample accuracy": ("sample_quality", "classifier_accuracy"),
    "worst class": ("sample_quality", "classifier_worst_class_accuracy"),
    "FD-classifier": ("sample_quality", "fd_classifier"),
    "held-out ε-MSE (mean of 5 t)": ("denoising", "eps_mse_mean"),
    "judge on real images": ("sample_quality", "classifier_real_accuracy"),
}


def last_evaluation(workdir: Path) -> tuple[int, dict]:
    steps = sorted(int(p.name) for p in (workdir / "eval").iterdir() if (p / "metrics.json").is_file())
    if not steps:
        raise FileNotFoundError(f"{workdir} has no eval/<step>/metrics.json yet")
    return steps[-1], json.loads((workdir / "eval" / str(steps[-1]) / "metrics.json").read_text())


def workdirs(folder: Path) -> list[Path]:
    if (folder / "eval").is_dir():
        return [folder]
    runs = sorted(p for p in folder.iterdir() if (p / "eval").is_dir())
    if not runs:
        raise FileNotFoundError(f"{folder} is neither a workdir nor a folder of workdirs")
    return runs


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g}"


def table(folders: list[Path]) -> str:
    lines = ["| runs | seeds | step | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 3)]
    for folder in folders:
        results = [last_evaluation(w) for w in workdirs(folder)]
        steps = sorted({step for step, _ in results})
        values = [[metrics.get(evaluator, {}).get(name, float("nan")) for _, metrics in results]
                  for evaluator, name in COLUMNS.values()]
        lines.append(f"| {folder.name} | {len(results)} | {', '.join(map(str, steps))} | "
                     + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    print(table(parser.parse_args(argv).folders))


if __name__ == "__main__":
    main()
