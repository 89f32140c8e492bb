"""Pictures of generated videos: animated GIFs (Pillow), a labelled frame strip and the spatial/temporal head map.

Videos are uint8 `[frames, height, width, 3]`. GIFs are upscaled with nearest-neighbour so 32x32 clips stay sharp
and visible in a browser; the strip puts one video per row so frame-to-frame motion reads left to right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def to_uint8(video) -> np.ndarray:
    """Float video in [-1, 1] -> uint8 in [0, 255]."""
    return np.asarray(np.clip((np.asarray(video, np.float32) + 1.0) * 127.5 + 0.5, 0, 255), np.uint8)


def save_gif(path: str | Path, video: np.ndarray, *, fps: int = 6, scale: int = 4) -> None:
    from PIL import Image

    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"save_gif needs a uint8 video [frames, height, width, 3]; got {video.shape} {video.dtype}")
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def save_frame_strip(path: str | Path, rows: Sequence[tuple[str, np.ndarray]], *, title: str = "") -> None:
    """One labelled row per `(label, uint8 video)`, frames left to right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_frames = max(v.shape[0] for _, v in rows)
    fig, axes = plt.subplots(len(rows), num_frames, figsize=(0.75 * num_frames + 1.6, 0.8 * len(rows) + 0.4),
                             squeeze=False)
    for (label, video), row in zip(rows, axes):
        for f, ax in enumerate(row):
            if f < video.shape[0]:
                ax.imshow(video[f], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=8)
        top -= 0.3 / fig.get_figheight()  # room for the title above the first row
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, top))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_head_map(path: str | Path, temporal_fraction: np.ndarray, *, title: str = "") -> None:
    """`temporal_fraction` `[layers, heads]`: how often each head was classified temporal (1) vs spatial (0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temporal_fraction = np.asarray(temporal_fraction)
    if temporal_fraction.ndim != 2:
        raise ValueError(f"head map needs [layers, heads]; got {temporal_fraction.shape}")
    layers, heads = temporal_fraction.shape
    fig, ax = plt.subplots(figsize=(max(3.6, 1.2 + 0.35 * heads), 1.2 + 0.3 * layers))
    image = ax.imshow(temporal_fraction, vmin=0, vmax=1, cmap="coolwarm", aspect="auto")
    ax.set(xlabel="head", ylabel="layer", xticks=range(heads), yticks=range(layers))
    ax.set_title(title or "fraction of calls classified temporal", fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
