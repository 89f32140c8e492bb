"""`jaxgen data list|inspect`: what a dataset holds, in text and (optionally) as a picture grid."""

from __future__ import annotations

import numpy as np

from jaxgen.data import sources

PICTURE_COLUMNS = 8
MAX_CLASS_ROWS = 32  # datasets with at most this many classes get a picture with one row per class


def list_text(data_dir: str | None = None) -> str:
    """Every registered dataset (the built-in ones and those the papers' packages register)."""
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
    """Splits, features (shape, dtype, range over the first `count` examples; a shape range for examples of different
    sizes), label counts and optionally a picture grid: one row per class, titled with the class names, for labelled
    data of at most `MAX_CLASS_ROWS` classes; else the first `count` examples."""
    b = sources.builder(name, data_dir)
    src = sources.source(name, split, data_dir)
    examples = [src[i] for i in range(min(count, len(src)))]
    lines = [f"{name} ({b.info.version}) in {b.data_dir}",
             "  splits: " + ", ".join(f"{s}={b.info.splits[s].num_examples}" for s in b.info.splits),
             f"  features of {split!r}:"]
    for key in examples[0]:
        values = [np.asarray(e[key]) for e in examples]
        shapes = sorted({v.shape for v in values})
        shape = f"shape {shapes[0]}" if len(shapes) == 1 else f"shapes {shapes[0]} .. {shapes[-1]} (varying)"
        if values[0].dtype.kind in "SUO":  # text: its first value says more than a min and max would
            first = values[0].item()
            lines.append(f"    {key}: text, e.g. {first.decode() if isinstance(first, bytes) else first!r}")
            continue
        nonempty = [v for v in values if v.size]
        low = min(v.min() for v in nonempty) if nonempty else None
        high = max(v.max() for v in nonempty) if nonempty else None
        lines.append(f"    {key}: {shape} dtype {values[0].dtype}, min {low} max {high}")
    labels = None
    if "label" in examples[0]:
        labels = (src.arrays["label"] if isinstance(src, sources.ArraySource)
                  else np.asarray([src[i]["label"] for i in range(len(src))]))
        values, counts = np.unique(labels, return_counts=True)
        lines.append("  label counts: " + ", ".join(f"{v}:{c}" for v, c in zip(values, counts)))
    if picture and "image" in examples[0]:
        per_class = labels is not None and len(np.unique(labels)) <= MAX_CLASS_ROWS
        if per_class:
            indices = per_class_indices(labels, PICTURE_COLUMNS)
            names = getattr(b.info.features["label"], "names", None)
            titles = [names[labels[i]] if names else str(labels[i]) for i in indices]
            images = np.stack([np.asarray(src[int(i)]["image"]) for i in indices])
        else:
            images = np.stack([e["image"] for e in examples])
            titles = ([str(e["label"]) for e in examples] if labels is not None else
                      [np.asarray(e["name"]).item().decode() for e in examples] if "name" in examples[0] else None)
        save_grid(images, titles, picture, cols=PICTURE_COLUMNS)
        lines.append(f"  picture: {picture}" + (" (one row per class)" if per_class else ""))
    return "\n".join(lines)


def per_class_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first `per_class` indices of each class, class by class: a picture with one row per class shows at a glance
    whether every class looks like its name."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


def save_grid(images: np.ndarray, titles, path: str, cols: int = PICTURE_COLUMNS) -> None:
    """A grid of images (grey `[..., 1]` or RGB), each titled by the matching entry of `titles` when given."""
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
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
