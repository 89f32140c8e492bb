"""`jaxgen data list|inspect`: what a dataset holds, in text and (optionally) as a picture grid."""

from __future__ import annotations

import numpy as np

from jaxgen.data import sources


def list_text(data_dir: str | None = None) -> str:
    """Every registered dataset (the built-in ones and those the packages under `jaxgen.projects` register)."""
    lines = [f"Data folder: {sources.data_dir(data_dir)}", "Offline datasets (need no internet):"]
    for name, module in sources.registered_datasets().items():
        b = sources.builder(name, data_dir, prepare_offline=False)
        configs = [c.name for c in (b.BUILDER_CONFIGS or [])]
        variants = f" (configs: {', '.join(f'{name}/{c}' for c in configs)})" if configs else ""
        state = "prepared" if b.is_prepared() else "prepared on first use"
        lines.append(f"  {name}{variants}: {state} — {module}")
    lines.append("Any other TFDS name works where the internet exists: `jaxgen data prepare cifar10`.")
    return "\n".join(lines)


def describe(name: str, split: str, data_dir: str | None = None, picture: str | None = None, count: int = 32) -> str:
    b = sources.builder(name, data_dir)
    src = sources.source(name, split, data_dir)
    batch = sources.read_batch(src, np.arange(min(count, len(src))))
    lines = [f"{name} ({b.info.version}) in {b.data_dir}",
             "  splits: " + ", ".join(f"{s}={b.info.splits[s].num_examples}" for s in b.info.splits),
             f"  features of {split!r}:"]
    for key, value in batch.items():
        lines.append(f"    {key}: shape {value.shape[1:]} dtype {value.dtype}, min {value.min()} max {value.max()}")
    if "label" in batch:
        labels = sources.read_batch(src, np.arange(len(src)))["label"]
        values, counts = np.unique(labels, return_counts=True)
        lines.append("  label counts: " + ", ".join(f"{v}:{c}" for v, c in zip(values, counts)))
    if picture and "image" in batch:
        save_grid(batch["image"], batch.get("label"), picture)
        lines.append(f"  picture: {picture}")
    return "\n".join(lines)


def save_grid(images: np.ndarray, labels: np.ndarray | None, path: str, cols: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            image = images[i]
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
