"""The SVDQuant experiment on the class-conditional DiT: calibrate, quantize with each scheme, sample, compare.

A calibration driver, not a training loop (it stands in for `jaxgen.train.run` through `config.trainer.run`):
1. the DiT's parameters come from an image-diffusion run (`restore_from`: its workdir or checkpoint, EMA parameters
   by default), or are random (`restore_from=None`: every parameter, adaLN-Zero layers included, drawn at
   `random_scale`, so each layer is live; a pipeline check, not a model);
2. calibration inputs are what the 16-bit model sees along its own guided DDIM trajectories (`calib_batch` noise
   images per calibration seed, `calib_timesteps` of the `num_sample_steps` steps, evenly spaced from noise to data,
   conditional and unconditional halves), as deepcompressor's `qdiff` collection does;
3. each scheme (`SCHEMES`: naive W4A4, SmoothQuant W4A4, SVDQuant W4A4, W4A16; the rules are `model.dit_rules`)
   quantizes the model from the same calibration inputs, then samples from the same noise and labels as the 16-bit
   model. Reported per scheme and calibration seed: PSNR of the samples against the 16-bit ones (mean over images
   of the per-image PSNR, images in [-1, 1], range 2), relative MSE of the model output on the sampling noise at
   `probe_timestep` (None: skipped), model bytes at 16-bit floats, calibration seconds; with `judges`
   (`jaxgen.diffusion.sample_quality`, e.g. the shape_classes/32 classifier) and `real_data` (a loader over held-out
   images), also each judge's verdict on `num_judged_samples` samples (classes in turn, the same noise for every
   scheme): FD-classifier against the held-out images and the fraction of samples shown as their class, the 16-bit
   model's included, so a scheme's damage reads against where the 16-bit model stands;
4. `results.json` (per seed and mean/std over seeds) and `samples.png` (one row per scheme, first seed) in `workdir`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core.progress import CountProgress
from jaxgen.diffusion import ddim, ddpm, sampling
from jaxgen.diffusion.sample_quality import Judge, Judgement, judge_generated, judge_real
from jaxgen.diffusion.task import class_grid, save_png, to_uint8
from jaxgen.metrics import image as image_metrics
from jaxgen.projects.svdquant import model as sq_model

SCHEMES = ("w4a4", "smoothquant", "svdquant", "w4a16")
NAMES = {"float": "16-bit", "w4a4": "naive W4A4", "smoothquant": "SmoothQuant W4A4", "svdquant": "SVDQuant W4A4",
         "w4a16": "W4A16"}


def random_variables(module: nn.Module, image_shape: Sequence[int], seed: int, scale: float) -> dict:
    """`{"params": ...}` with every parameter drawn from N(0, scale²) (zero-initialised layers included)."""
    x = np.zeros((1, *image_shape), np.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(seed), x, np.zeros((1,), np.float32),
                              np.zeros((1,), np.int32))
    leaves, tree = jax.tree.flatten(nn.unbox(abstract))
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(tree, [jnp.asarray(scale * rng.normal(size=a.shape), a.dtype) for a in leaves])


def restore_variables(module: nn.Module, image_shape: Sequence[int], restore_from: str, key: str) -> dict:
    """`{"params": ...}` from an image-diffusion run: its train state's `key` ("ema_params" or "params")."""
    from jaxgen.core import checkpoint as ckpt_lib

    x = np.zeros((1, *image_shape), np.float32)
    abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), x, np.zeros((1,), np.float32),
                                       np.zeros((1,), np.int32)))["params"]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    source, step = ckpt_lib.open_source(restore_from, f"restore_from={restore_from!r}")
    logging.info("svdquant: %s of %s", key, source.step_dir(step))
    return {"params": source.restore_subtree(step, {key: abstract})[key]}


def _sampler(apply_fn, schedule, timesteps, num_classes: int, guidance_scale: float, record: bool):
    """A jitted guided DDIM `(params, noise, labels) -> (samples, model inputs per step or None)`."""

    def model_fn(params, x, t, step, y):
        return apply_fn(params, x, t, y), ((x, t, y) if record else None)

    def run(params, noise, labels):
        guided = sampling.guided(lambda x, t, step, y: model_fn(params, x, t, step, y), labels,
                                 jnp.full_like(labels, num_classes), guidance_scale)
        return ddim.ddim_sample(guided, schedule, noise, timesteps, clip_x0=1.0)

    return jax.jit(run)


def calibration_batches(variables, sample_fn, image_shape, num_classes: int, *, seed: int, batch: int,
                        num_timesteps: int) -> list[tuple[tuple, dict]]:
    """Model inputs along the 16-bit model's guided trajectories from `batch` noise images: `num_timesteps` of the
    sampler's steps, evenly spaced, each one `(x, t, y)` batch of conditional and unconditional rows."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(batch, *image_shape)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=(batch,)).astype(np.int32)
    _, (xs, ts, ys) = sample_fn(variables, noise, labels)
    steps = np.linspace(0, xs.shape[0] - 1, min(num_timesteps, xs.shape[0])).round().astype(int)
    return [((np.asarray(xs[i]), np.asarray(ts[i]), np.asarray(ys[i])), {}) for i in steps]


def judge_real_images(judges: Sequence[Judge], real_data, num_classes: int) -> dict[str, Judgement]:
    """Each judge's statistics of every image `real_data` (a `jaxgen.data.Loader`) yields in one eval pass."""
    return judge_real(judges, real_data.eval_batches(), num_classes,
                      empty_error=f"real_data ({real_data.name}, split {real_data.split!r}) yielded no images to judge")


def judge_samples(sample_fn, params, judges: Sequence[Judge], real: dict[str, Judgement], *, image_shape,
                  num_classes: int, count: int, batch_size: int, seed: int, desc: str, show_progress: bool = True) -> dict:
    """`count` samples of `sample_fn(params, noise, labels)` (classes in turn; noise from `seed`, so every scheme
    draws from the same noise), judged against `real`: each judge's `judged_metrics`."""
    rng = np.random.default_rng(seed)

    def draw(index, labels):
        noise = rng.normal(size=(len(labels), *image_shape)).astype(np.float32)
        return to_uint8(sample_fn(params, noise, labels)[0])

    with CountProgress(count, desc=desc, unit="img", enabled=show_progress) as progress:
        return judge_generated(draw, judges, real, num_classes=num_classes, count=count, batch_size=batch_size,
                               progress=progress)


def _mean_std(values):
    """Mean and population standard deviation; NaN (a metric that was not measured) stays NaN."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def quantize_and_compare(module: nn.Module, variables, *, image_shape: Sequence[int], num_classes: int,
                         schemes: Sequence[str] = SCHEMES, calib_seeds: Sequence[int] = (0, 1, 2),
                         calib_batch: int = 16, calib_timesteps: int = 8, num_samples: int = 16,
                         num_sample_steps: int = 25, guidance_scale: float = 1.5, schedule: str = "linear",
                         num_train_timesteps: int = 1000, sample_seed: int = 1234, rank: int = 32,
                         probe_timestep: int | None = 500, judges: Sequence[Judge] = (), real_data=None,
                         num_judged_samples: int = 600, judge_batch_size: int = 200, judge_seed: int = 4321,
                         show_progress: bool = True,
                         svd: str = "exact", lowrank_iters: int = 100, tokens_per_call: int = 256,
                         log=logging.info) -> tuple[dict, dict[str, np.ndarray]]:
    """The experiment's numbers and sample images (uint8 per scheme, first calibration seed); see the module doc."""
    unknown = [s for s in schemes if s not in sq_model.SCHEMES]
    if unknown:
        raise ValueError(f"unknown schemes {unknown}; choose from {sorted(sq_model.SCHEMES)}")
    if judges and real_data is None:
        raise ValueError("judges need real_data: a loader over held-out images to compare the samples with "
                         "(svdquant/judged.gin binds the shape_classes/32 test split)")
    if judges and (num_judged_samples < 2 or judge_batch_size < 1):
        raise ValueError(f"num_judged_samples must be >= 2 (a covariance) and judge_batch_size >= 1; got "
                         f"{num_judged_samples} and {judge_batch_size}")
    noise_schedule = ddpm.make_schedule(schedule, num_train_timesteps)
    timesteps = ddim.spaced_timesteps(num_train_timesteps, num_sample_steps, "trailing")
    recording = _sampler(module.apply, noise_schedule, timesteps, num_classes, guidance_scale, record=True)
    quantized_sampler = _sampler(lambda p, *a: sq_model.apply_quantized(module, p, *a), noise_schedule, timesteps,
                                 num_classes, guidance_scale, record=False)
    rng = np.random.default_rng(sample_seed)
    noise = rng.normal(size=(num_samples, *image_shape)).astype(np.float32)
    labels = (np.arange(num_samples) % num_classes).astype(np.int32)
    reference, _ = recording(variables, noise, labels)  # the trajectory record is dropped: one compile, not two
    if probe_timestep is not None:  # one model call on the sampling noise at this timestep: output error
        probe = (noise, np.full((num_samples,), probe_timestep, np.int32), labels)
        probe_out = jax.jit(module.apply)(variables, *probe)
    images = {"float": to_uint8(reference)}
    results = {"float": {"model_bytes": sq_model.model_bytes(variables)}}
    judge_settings = dict(image_shape=image_shape, num_classes=num_classes, count=num_judged_samples,
                          batch_size=judge_batch_size, seed=judge_seed, show_progress=show_progress)
    if judges:
        real = judge_real_images(judges, real_data, num_classes)
        plain = _sampler(module.apply, noise_schedule, timesteps, num_classes, guidance_scale, record=False)
        results["float"]["judged"] = judge_samples(plain, variables, judges, real, desc="16-bit samples",
                                                   **judge_settings)
        log(f"16-bit: {_judged_summary(results['float']['judged'])}")
    per_seed = {scheme: [] for scheme in schemes}
    for seed in calib_seeds:
        started = time.perf_counter()
        batches = calibration_batches(variables, recording, image_shape, num_classes, seed=seed,
                                      batch=calib_batch, num_timesteps=calib_timesteps)
        inputs = sq_model.collect_inputs(module, variables, batches, tokens_per_call=tokens_per_call)
        collected = time.perf_counter() - started
        for scheme in schemes:
            started = time.perf_counter()
            q = sq_model.quantize_model(module, variables, None, sq_model.dit_rules(scheme), rank=rank, svd=svd,
                                        inputs=inputs, lowrank_iters=lowrank_iters)
            jax.block_until_ready(jax.tree.leaves(q.params))
            seconds = time.perf_counter() - started
            samples, _ = quantized_sampler(q.params, noise, labels)
            record = {"calib_seed": seed, "psnr_vs_16bit": float(jnp.mean(image_metrics.psnr(samples, reference, 2.0))),
                      "output_rel_mse": float("nan"), "model_bytes": sq_model.model_bytes(q.params),
                      "calibration_seconds": seconds + collected}
            if probe_timestep is not None:
                out = jax.jit(q.apply)(q.params, *probe)
                record["output_rel_mse"] = float(jnp.mean((out - probe_out) ** 2) / jnp.mean(probe_out ** 2))
            if judges:
                record["judged"] = judge_samples(quantized_sampler, q.params, judges, real, **judge_settings,
                                                 desc=f"{NAMES.get(scheme, scheme)} samples (seed {seed})")
                log(f"calib seed {seed} {NAMES.get(scheme, scheme)}: {_judged_summary(record['judged'])}")
            per_seed[scheme].append(record)
            log(f"calib seed {seed} {NAMES.get(scheme, scheme)}: PSNR {record['psnr_vs_16bit']:.2f} dB, output "
                f"rel. MSE {record['output_rel_mse']:.3g}, {record['model_bytes']:,} bytes, {seconds:.1f} s")
            if seed == calib_seeds[0]:
                images[scheme] = to_uint8(samples)
    for scheme, records in per_seed.items():
        results[scheme] = {"psnr_vs_16bit": _mean_std([r["psnr_vs_16bit"] for r in records]),
                           "output_rel_mse": _mean_std([r["output_rel_mse"] for r in records]),
                           "model_bytes": records[0]["model_bytes"],
                           "compression_vs_16bit": results["float"]["model_bytes"] / records[0]["model_bytes"],
                           "calibration_seconds": _mean_std([r["calibration_seconds"] for r in records]),
                           "per_seed": records}
        if judges:
            results[scheme]["judged"] = {
                metric: _mean_std([r["judged"][metric] for r in records])
                for metric, value in records[0]["judged"].items() if isinstance(value, float)}
    return results, images


def _judged_summary(judged: dict) -> str:
    return ", ".join(f"{metric} {value:.4g}" for metric, value in judged.items() if isinstance(value, float))


def run(*, workdir: str | Path, model: nn.Module, image_shape: Sequence[int], num_classes: int,
        restore_from: str | None = None, restore_key: str = "ema_params", random_seed: int = 0,
        random_scale: float = 0.05, compare=quantize_and_compare, restore_step: int | None = None,
        progress: bool = True, mode: str = "train"):
    """`jaxgen run` entry point (`config.trainer.run = @driver.run`): `compare` (`quantize_and_compare`, its settings
    bound by the experiment file as `@driver.quantize_and_compare`) on the DiT `model`, writing `results.json` and
    `samples.png` to `workdir`."""
    from jaxgen.train import RunResult

    del restore_step, mode  # one pass, nothing to resume
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if restore_from:
        variables = restore_variables(model, image_shape, restore_from, restore_key)
    else:
        variables = random_variables(model, image_shape, random_seed, random_scale)
    results, images = compare(model, variables, image_shape=image_shape, num_classes=num_classes,
                              show_progress=progress)
    results["settings"] = {"restore_from": restore_from, "restore_key": restore_key if restore_from else None,
                           "random_seed": None if restore_from else random_seed, "date": time.strftime("%Y-%m-%d"),
                           "devices": [str(d) for d in jax.devices()]}
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    rows = list(images)
    save_png(workdir / "samples.png", class_grid(np.stack([images[r] for r in rows]), [NAMES.get(r, r) for r in rows],
                                                 scale=2))
    summary = {f"{scheme}_psnr": results[scheme]["psnr_vs_16bit"]["mean"] for scheme in rows if scheme != "float"}
    summary.update({f"{scheme}_bytes": results[scheme]["model_bytes"] for scheme in rows})
    for scheme in rows:
        judged = results[scheme].get("judged", {})
        summary.update({f"{scheme}_{metric}": value["mean"] if isinstance(value, dict) else value
                        for metric, value in judged.items() if isinstance(value, (float, dict))})
    return RunResult(workdir=workdir, step=0, state=None, last_train_record=None, eval_results={"svdquant": summary})
