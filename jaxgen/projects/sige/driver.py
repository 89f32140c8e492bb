"""`jaxgen run` for SIGE: edit a real photograph (or its semantic map) and compare the incremental engine's result
with the dense model's.

SIGE is inference only, so this driver stands in for `jaxgen.train.run` (through `config.trainer.run`, as the
SVDQuant calibration does); the experiment file binds `run.experiment` to one of:

- `sdedit_photo`: SDEdit (`sdedit.sdedit`) of a scikit-image photograph with a painted disc, through the engine
  (sparse) and through the plain model (dense), from the same noise, re-blending outside the edit mask in both.
  The model is a diffusers `UNet2DModel` folder (`model_dir`, e.g. google/ddpm-church-256 where the internet
  exists) or a `SigeUNet` with random weights (`model`; what runs here: a pipeline and cost check, whose pictures
  are not images of anything).
- `gaugan_map`: a semantic map made from the photograph (SLIC superpixels labelled by brightness), a disc of it
  relabelled (a GauGAN brush stroke), the SPADE generator (`gaugan.SpadeGenerator`, random weights) run densely on
  the edited map and incrementally after a full pass on the original.

Both write `results.json` (MACs of one model call dense / sparse / executed by the bucket, the agreement of sparse
and dense results as PSNR and max |difference|, and LPIPS when `lpips_weights` names LPIPS-VGG16's two files
(`jaxgen.metrics.lpips`; `configs/sige/lpips.gin`), wall times) and `edits.png` (original, edit, mask, dense, sparse,
10 × |sparse − dense|) to the workdir. Wall times are of a second run, after a first one compiled; an SDEdit run
includes the original image's trajectory, which the engine recomputes densely in lock-step (`sdedit`'s docstring).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core.errors import ConfigError
from jaxgen.metrics import lpips as lpips_lib
from jaxgen.projects.sige import masks as masks_lib
from jaxgen.projects.sige.engine import IncrementalEngine
from jaxgen.projects.sige.unet import random_params


def photograph(name: str, crop: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """`[height, width, 3]` float32 in [0, 1]: scikit-image's photograph `name`, cropped to rows
    `crop[0]:crop[1]`, columns `crop[2]:crop[3]`, resized to `size`."""
    import skimage.data
    from skimage.transform import resize

    if name not in skimage.data.__all__:
        raise ValueError(f"photograph: {name!r} is not a scikit-image photograph; e.g. chelsea, astronaut, coffee")
    image = getattr(skimage.data, name)()
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"photograph: {name!r} is not an RGB image (shape {image.shape})")
    top, bottom, left, right = crop
    return resize(image[top:bottom, left:right], tuple(size), anti_aliasing=True).astype(np.float32)


def disc(height: int, width: int, center: Sequence[float], radius: float) -> np.ndarray:
    """`[height, width]` bool disc at `center` (row, column as fractions of the size), `radius` a fraction of the
    height."""
    rows, cols = np.mgrid[:height, :width]
    return (rows - center[0] * height) ** 2 + (cols - center[1] * width) ** 2 <= (radius * height) ** 2


class DenseModel:
    """The plain jitted model behind the engine's `full` / `edit` interface: what the sparse result is compared to."""

    def __init__(self, module, params, compiler_options: dict | None = None):
        self.module, self.params = module, params
        self._apply = jax.jit(module.apply, compiler_options=compiler_options)

    def full(self, x, *, cache_id: Any = 0, **cond):
        return self._apply(self.params, x, **cond)

    def edit(self, x, *, mask=None, cache_id: Any = 0, **cond):
        return self._apply(self.params, x, **cond)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """`fn()` run twice (the first compiles); its result and the second run's seconds."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def _lpips(lpips_weights: Sequence[str] | None) -> lpips_lib.Lpips | None:
    """LPIPS-VGG16 from (torchvision's backbone file, lpips' lin file), read before the edit runs, so a missing file
    stops the run at once; None without weights."""
    if lpips_weights is None:
        return None
    try:
        return lpips_lib.load_lpips(*lpips_weights, net="vgg")
    except FileNotFoundError as error:  # a setting of the run: the CLI reports it in one line
        raise ConfigError(f"{error} (lpips_weights)") from error


def _agreement(sparse, dense, lpips: lpips_lib.Lpips | None = None) -> dict[str, float]:
    """PSNR and max |difference| of the sparse result against the dense one (images in [-1, 1]), and with `lpips`
    their LPIPS (mean over the batch; both clipped to [-1, 1], as pictures)."""
    sparse, dense = np.asarray(sparse, np.float32), np.asarray(dense, np.float32)
    mse = float(np.mean((sparse - dense) ** 2))
    results = {"psnr_sparse_vs_dense": 10 * np.log10(4.0 / mse) if mse else float("inf"),   # range 2: [-1, 1]
               "max_abs_sparse_vs_dense": float(np.abs(sparse - dense).max())}
    if lpips is not None:
        distances = jax.jit(lpips.__call__)(*(jnp.clip(x, -1.0, 1.0) for x in (sparse, dense)))
        results["lpips_sparse_vs_dense"] = float(jnp.mean(distances))
    return results


def _macs(engine: IncrementalEngine) -> dict[str, Any]:
    macs = engine.macs()
    return {"macs_dense": macs["dense"], "macs_sparse": macs["sparse"], "macs_executed": macs["executed"],
            "macs_ratio": macs["dense"] / macs["sparse"], "bucket": engine.last_plan.level,
            "implementation": engine.implementation, "fused_sites": len(engine.fused_sites)}


def _panels(original, edited, mask, dense, sparse) -> np.ndarray:
    """uint8 `[1, 6, h, w, 3]`: original, edit, mask, dense, sparse, 10 × |sparse − dense| (inputs in [-1, 1])."""
    to_unit = lambda a: np.clip((np.asarray(a, np.float32) + 1) / 2, 0, 1)  # noqa: E731
    mask_rgb = np.repeat(np.asarray(mask, np.float32)[..., None], 3, axis=-1)
    diff = np.clip(10 * np.abs(np.asarray(sparse, np.float32) - np.asarray(dense, np.float32)) / 2, 0, 1)
    images = [to_unit(original), to_unit(edited), mask_rgb, to_unit(dense), to_unit(sparse), diff]
    return (np.stack(images)[None] * 255).round().astype(np.uint8)


PANEL_NAMES = "original | edit | mask | dense | sparse | 10x|sparse-dense|"


def sdedit_photo(*, model=None, model_dir: str | None = None, image: str = "chelsea",
                 crop: Sequence[int] = (0, 300, 60, 360), size: int = 128,
                 center: Sequence[float] = (0.55, 0.35), radius: float = 0.07,
                 color: Sequence[float] = (0.9, 0.75, 0.2), schedule: str = "linear", num_train_timesteps: int = 1000,
                 start_timestep: int = 500, num_steps: int = 10, sampler: str = "ddim", dilation: int = 1,
                 min_sparse_res: int = 32, seed: int = 0, implementation: str = "xla",
                 compiler_options: dict | None = None,
                 lpips_weights: Sequence[str] | None = None) -> tuple[dict, np.ndarray]:
    """SDEdit of `image` with a disc of `color` painted at `center`; `num_steps` steps from `start_timestep` (the
    SDEdit strength is `start_timestep / num_train_timesteps`). The weights of the diffusers `UNet2DModel` folder
    `model_dir` if given, else `model` (a `SigeUNet` with a timestep input) with random weights. Returns results and
    the picture panels. `implementation`: how the engine runs sparse conv sites ("xla", or "pallas" for the fused
    site kernel; `layers.IMPLEMENTATIONS`). `compiler_options`: XLA's, for the engine and the dense model (the smoke
    test's -O0). `lpips_weights`: (backbone file, lin file) of LPIPS-VGG16, adding LPIPS of sparse vs dense to the
    results."""
    from jaxgen.diffusion import ddpm
    from jaxgen.projects.sige.sdedit import sdedit

    if model is None and model_dir is None:
        raise ValueError("sdedit_photo: give a model (random weights) or a model_dir (diffusers weights)")
    lpips = _lpips(lpips_weights)
    photo = photograph(image, crop, (size, size))
    mask = disc(size, size, center, radius)
    edited = np.where(mask[..., None], np.asarray(color, np.float32), photo)
    original_x, edited_x = jnp.asarray(photo[None] * 2 - 1), jnp.asarray(edited[None] * 2 - 1)
    if model_dir is not None:
        from jaxgen.projects.sige.port import from_diffusers

        module, params = from_diffusers(model_dir)
    else:
        module, params = model, random_params(model, original_x, jnp.zeros((1,)), seed=seed)
    noise_schedule = ddpm.make_schedule(schedule, num_train_timesteps)
    timesteps = np.linspace(start_timestep, 0, num_steps).round().astype(int)
    rng = jax.random.key(seed, impl="rbg")   # XLA's bit generator: compiles in a fraction of threefry's time on CPU
    engine = IncrementalEngine(module, params, dilation=dilation, min_sparse_res=min_sparse_res,
                               compiler_options=compiler_options, implementation=implementation)
    dense_model = DenseModel(module, params, compiler_options)
    edit = lambda runner: sdedit(runner, noise_schedule, original_x, edited_x, mask, timesteps, rng,  # noqa: E731
                                 sampler=sampler)[1]
    sparse, sparse_s = _timed(lambda: edit(engine))
    dense, dense_s = _timed(lambda: edit(dense_model))
    results = {**_agreement(sparse, dense, lpips), **_macs(engine), "seconds_sparse_sdedit": sparse_s,
               "seconds_dense_sdedit": dense_s, "edited_fraction": float(mask.mean()),
               "active_fraction": {k: float(g.mean()) for k, g in engine.last_plan.active.items()}}
    return results, _panels(original_x[0], edited_x[0], mask, dense[0], sparse[0])


def segmentation(photo: np.ndarray, num_classes: int, segments: int) -> np.ndarray:
    """`[h, w]` int labels: SLIC superpixels of `photo` (deterministic: seeded on a grid), each labelled by the
    brightness quantile of its mean colour (`num_classes` quantiles) — regions that follow the photograph, as a
    segmentation's would."""
    from skimage.segmentation import slic

    superpixels = slic(photo, n_segments=segments, start_label=0)
    brightness = np.array([photo[superpixels == s].mean() for s in range(superpixels.max() + 1)])
    edges = np.quantile(brightness, np.linspace(0, 1, num_classes + 1)[1:-1])
    return np.digitize(brightness, edges)[superpixels]


def gaugan_map(*, model, image: str = "chelsea", crop: Sequence[int] = (0, 300, 0, 450),
               size: Sequence[int] = (128, 256), segments: int = 200, center: Sequence[float] = (0.5, 0.6),
               radius: float = 0.12, dilation: int = 2, min_sparse_res: int = 8, seed: int = 0,
               implementation: str = "xla", compiler_options: dict | None = None,
               lpips_weights: Sequence[str] | None = None) -> tuple[dict, np.ndarray]:
    """Relabel a disc of a semantic map made from `image` (to the label half the classes away from the one at the
    disc's centre: a visible stroke) and regenerate it with the SPADE generator `model` (random weights), dense vs
    incremental (`implementation` as in `sdedit_photo`); `lpips_weights` as in `sdedit_photo`."""
    lpips = _lpips(lpips_weights)
    photo = photograph(image, crop, size)
    labels = segmentation(photo, model.num_classes, segments)
    mask = disc(*labels.shape, center, radius)
    centre = labels[int(center[0] * labels.shape[0]), int(center[1] * labels.shape[1])]
    brush = (centre + model.num_classes // 2) % model.num_classes
    edited_labels = np.where(mask, brush, labels)
    original, edited = (jax.nn.one_hot(m[None], model.num_classes) for m in (labels, edited_labels))
    params = random_params(model, original, seed=seed)
    engine = IncrementalEngine(model, params, dilation=dilation, min_sparse_res=min_sparse_res,
                               compiler_options=compiler_options, implementation=implementation)
    engine.full(original)
    difference = masks_lib.difference_mask(original, edited)
    dense_model = DenseModel(model, params, compiler_options)
    sparse, sparse_s = _timed(lambda: engine.edit(edited, mask=difference))
    dense, dense_s = _timed(lambda: dense_model.full(edited))
    results = {**_agreement(sparse, dense, lpips), **_macs(engine), "seconds_sparse": sparse_s,
               "seconds_dense": dense_s, "edited_fraction": float(difference.mean()),
               "active_fraction": {k: float(g.mean()) for k, g in engine.last_plan.active.items()}}
    palette = np.linspace(-1, 1, model.num_classes)[:, None] * np.ones(3)
    return results, _panels(palette[labels], palette[edited_labels], difference, dense[0], sparse[0])


def run(*, workdir: str | Path, experiment: Callable[[], tuple[dict, np.ndarray]] = sdedit_photo,
        restore_step: int | None = None, progress: bool = True, mode: str = "train"):
    """`jaxgen run` entry point (`config.trainer.run = @driver.run`): `experiment` (its settings bound by the
    experiment file), writing `results.json` and `edits.png` to `workdir`."""
    from jaxgen.diffusion.task import class_grid, save_png
    from jaxgen.train import RunResult

    del restore_step, progress, mode  # one pass, nothing to resume
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results, panels = experiment()
    results["settings"] = {"date": time.strftime("%Y-%m-%d"), "devices": [str(d) for d in jax.devices()],
                           "panels": PANEL_NAMES}
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    save_png(workdir / "edits.png", class_grid(panels, ["SIGE"], scale=2))
    summary = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    logging.info("sige: %s", summary)
    return RunResult(workdir=workdir, step=0, state=None, last_train_record=None, eval_results={"sige": summary})
