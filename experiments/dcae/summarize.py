"""Tables for experiments/dcae/README.md from the workdirs of experiments/dcae/sweeps.sh.

Usage: python3 experiments/dcae/summarize.py --root runs/dcae [--out experiments/dcae/results.json]
Each run's last evaluation (eval/<step>/metrics.json): PSNR / SSIM on the test split (`reconstruction`) and on the
held-out photographs (`holdout`); runs named `<variant>_s<seed>` are grouped by variant, mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def last_eval(workdir: Path) -> tuple[int, dict] | None:
    steps = sorted((int(p.name), p) for p in (workdir / "eval").glob("*") if p.name.isdigit()
                   and (p / "metrics.json").is_file())
    if not steps:
        return None
    step, folder = steps[-1]
    return step, json.loads((folder / "metrics.json").read_text())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    groups: dict[str, list[dict]] = {}
    for workdir in sorted(Path(args.root).iterdir()):
        match = re.fullmatch(r"(.+)_s(\d+)", workdir.name)
        found = last_eval(workdir) if match and workdir.is_dir() else None
        if found is None:
            continue
        step, metrics = found
        groups.setdefault(match.group(1), []).append({"seed": int(match.group(2)), "step": step, **{
            f"{name}_{k}": v for name, values in metrics.items() for k, v in values.items() if k in ("psnr", "ssim")}})
    print("| run | seeds | steps | test PSNR | test SSIM | photos PSNR | photos SSIM |")
    print("|---|---|---|---|---|---|---|")
    for variant, runs in groups.items():
        cells = []
        for key in ("reconstruction_psnr", "reconstruction_ssim", "holdout_psnr", "holdout_ssim"):
            values = [r[key] for r in runs if key in r]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}" if values else "-")
        seeds = ",".join(str(r["seed"]) for r in runs)
        print(f"| {variant} | {seeds} | {runs[0]['step']} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(groups, indent=1))
    return groups


if __name__ == "__main__":
    main()
