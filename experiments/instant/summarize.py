"""Tables and pictures of an InstanT sweep (`jaxgen sweep` over configs/instant/*.gin × algorithm tiers × seeds).

    PYTHONPATH=. python3 experiments/instant/summarize.py --root runs/instant --out experiments/instant

Writes `results.json` (every run's final error; pseudo-label quantity and quality at the end of training and binned
by mask rate; the selection test of the final evaluation), `pl_quality.png` (each algorithm's trajectory:
accepted-label accuracy against mask rate, per setting), `pl_curves_<setting>.png` (quantity, quality and threshold
through training, mean over seeds) and prints the markdown tables that go into the README.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from jaxgen import sweep
from jaxgen.projects.instant import analysis, plots, trainer

# Workdir tier names (`base` is the config's own algorithm, InstanT) in table order.
ALGORITHMS = {"supervised": "supervised", "fixmatch": "FixMatch", "flexmatch": "FlexMatch",
              "freematch": "FreeMatch", "softmatch": "SoftMatch", "base": "InstanT"}
MASK_BINS = np.linspace(0.0, 1.0, 11)
SMOOTHING = 20  # training records: 20 records of 10 steps = a 200-step running mean


def load(root: Path) -> dict[str, dict[str, list[list[dict]]]]:
    """{setting: {algorithm tier: [records of each seed]}} for the finished runs under `root`."""
    runs: dict[str, dict[str, list[list[dict]]]] = defaultdict(lambda: defaultdict(list))
    for name, records in sorted(sweep.collect(root).items()):
        setting, tier, _seed = name.split("/")
        runs[setting][tier].append(records)
    return runs


def error_table(runs) -> tuple[str, dict]:
    tiers = [t for t in ALGORITHMS if any(t in by_tier for by_tier in runs.values())]
    lines = ["| setting | " + " | ".join(ALGORITHMS[t] for t in tiers) + " |", "|---" * (len(tiers) + 1) + "|"]
    numbers = {}
    for setting, by_tier in sorted(runs.items()):
        stats = {t: analysis.mean_std([100 * analysis.final_error(r) for r in by_tier[t]]) for t in tiers
                 if t in by_tier}
        best = min(mean for mean, _ in stats.values())
        cells = []
        for t in tiers:
            if t not in stats:
                cells.append("–")
                continue
            mean, std = stats[t]
            text = f"{mean:.1f} ± {std:.1f} ({len(by_tier[t])})"
            cells.append(f"**{text}**" if mean == best else text)
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        numbers[setting] = {t: {"mean": m, "std": s, "seeds": len(by_tier[t]),
                                "errors": [100 * analysis.final_error(r) for r in by_tier[t]]}
                            for t, (m, s) in stats.items()}
    return "\n".join(lines), numbers


def quantity_quality_table(runs, late_from: int) -> tuple[str, dict]:
    """Mask rate and accepted-label accuracy at the end of training (training records after `late_from`), mean over
    seeds; and each algorithm's quality per mask-rate bin over the whole run, for the trajectory picture."""
    tiers = [t for t in ALGORITHMS if t != "supervised" and any(t in by_tier for by_tier in runs.values())]
    lines = ["| setting | " + " | ".join(ALGORITHMS[t] for t in tiers) + " |", "|---" * (len(tiers) + 1) + "|"]
    numbers = {}
    for setting, by_tier in sorted(runs.items()):
        numbers[setting] = {}
        cells = []
        for t in tiers:
            if t not in by_tier:
                cells.append("–")
                continue
            mask = np.mean([analysis.late_mean(r, "mask_rate", late_from) for r in by_tier[t]])
            quality = np.mean([analysis.late_mean(r, "pl_accuracy", late_from) for r in by_tier[t]])
            binned, counts = analysis.quality_at_mask_rate([r for run in by_tier[t] for r in run], MASK_BINS)
            numbers[setting][t] = {"late_mask_rate": float(mask), "late_pl_accuracy": float(quality),
                                   "binned_pl_accuracy": binned.tolist(), "binned_records": counts.tolist()}
            cells.append(f"{100 * mask:.0f} % / {100 * quality:.1f} %")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines), numbers


def selection_table(runs) -> tuple[str, dict]:
    """The final evaluation's selection test (trainer.SELECTION_RATES): on the same model and test images, the
    accuracy of the top share ranked by confidence minus the algorithm's threshold against ranked by confidence."""
    key = "eval/pseudo_labels/select{rate:g}_by_{rule}"
    tiers = [t for t in ALGORITHMS if t not in ("supervised", "fixmatch")]
    rates = trainer.SELECTION_RATES
    lines = ["| setting | algorithm | " + " | ".join(f"top {rate:.0%}" for rate in rates) + " | mean gain |",
             "|---" * (len(rates) + 3) + "|"]
    numbers: dict[str, dict] = defaultdict(dict)
    for setting, by_tier in sorted(runs.items()):
        for t in tiers:
            finals = [_last_eval(run) for run in by_tier.get(t, [])]
            finals = [f for f in finals if key.format(rate=rates[0], rule="threshold") in f]
            if not finals:
                continue
            cells, gains = [], []
            for rate in rates:
                ours = np.mean([f[key.format(rate=rate, rule="threshold")] for f in finals])
                fixed = np.mean([f[key.format(rate=rate, rule="confidence")] for f in finals])
                cells.append(f"{100 * ours:.1f} / {100 * fixed:.1f}")
                gains.append(ours - fixed)
                numbers[setting].setdefault(t, {})[f"{rate:g}"] = {"by_threshold": ours, "by_confidence": fixed}
            lines.append(f"| {setting} | {ALGORITHMS[t]} ({len(finals)} seeds) | " + " | ".join(cells)
                         + f" | {100 * np.mean(gains):+.1f} pt |")
    return "\n".join(lines), dict(numbers)


def _last_eval(records) -> dict:
    evals = [r for r in records if analysis.ERROR_KEY in r]
    return evals[-1] if evals else {}


def quality_picture(quality_numbers, path: Path) -> None:
    plt = plots._pyplot()
    settings = sorted(quality_numbers)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), squeeze=False)
    centres = (MASK_BINS[:-1] + MASK_BINS[1:]) / 2
    for ax, setting in zip(axes[0], settings):
        for tier, label in ALGORITHMS.items():
            if tier in quality_numbers[setting] and tier != "supervised":
                quality = np.array(quality_numbers[setting][tier]["binned_pl_accuracy"], np.float64)
                ax.plot(centres, 100 * quality, marker="o", ms=3, label=label, lw=2.2 if tier == "base" else 1.2)
        ax.set_title(setting, fontsize=9)
        ax.set_xlabel("mask rate (share of unlabeled batch accepted)")
        ax.set_ylabel("accepted pseudo-label accuracy %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve_pictures(runs, out: Path) -> list[Path]:
    paths = []
    for setting, by_tier in sorted(runs.items()):
        averaged = {}
        for tier, label in ALGORITHMS.items():
            if tier in by_tier and tier != "supervised":
                merged: dict[int, dict] = defaultdict(dict)
                for key, _title in plots.CURVES:
                    for point in analysis.seed_mean_curve(by_tier[tier], key, window=SMOOTHING):
                        merged[point["step"]].update(point)
                averaged[label] = [merged[s] for s in sorted(merged)]
        paths.append(plots.pseudo_label_curves(averaged, out / f"pl_curves_{setting}.png"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the sweep's root folder")
    parser.add_argument("--out", required=True, help="where results.json and the pictures go")
    parser.add_argument("--late-from", type=int, default=4500,
                        help="end-of-training quantity and quality: training records after this step")
    args = parser.parse_args()
    runs = load(Path(args.root))
    if not runs:
        raise SystemExit(f"no finished runs under {args.root}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    errors_md, errors = error_table(runs)
    quality_md, quality = quantity_quality_table(runs, args.late_from)
    selection_md, selection = selection_table(runs)
    (out / "results.json").write_text(json.dumps({"error_percent": errors, "mask_bins": MASK_BINS.tolist(),
                                                  "late_from_step": args.late_from,
                                                  "pseudo_labels": quality, "selection": selection}, indent=1))
    quality_picture(quality, out / "pl_quality.png")
    curve_pictures(runs, out)
    print("Error rate % (EMA model, final evaluation; mean ± sample std (ddof = 1) over seeds, seed count in brackets)\n")
    print(errors_md)
    print(f"\nPseudo-labels at the end of training: mask rate (quantity) / accuracy of the accepted ones (quality), "
          f"training batches after step {args.late_from}, mean over seeds\n")
    print(quality_md)
    if selection:
        print("\nSelection at equal quantity, final EMA model on the test split: accuracy % of the top share ranked by "
              "confidence minus the algorithm's threshold / ranked by confidence alone (FixMatch's rule), mean over "
              "seeds\n")
        print(selection_md)
    print(f"\nwrote {out / 'results.json'}, {out / 'pl_quality.png'}, {out}/pl_curves_*.png")


if __name__ == "__main__":
    main()
