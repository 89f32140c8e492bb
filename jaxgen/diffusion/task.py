"""ClassConditionalDiffusionTask: a class-conditional image diffusion model (DiT, U-ViT, ...) trained with DDPM.

The shared spine of the image-diffusion papers: a backbone `model(x, t, y) -> prediction` on NHWC images scaled to
[-1, 1], the simple DDPM ε-prediction loss (`ddpm.loss`), and classifier-free guidance learnt by replacing each label
with the null label `num_classes` with probability `label_dropout` (`sampling.drop_conditions`). The backbone must
know the null label: DiT with `num_classes = C` (its table has C + 1 rows), U-ViT with `num_classes = C + 1`.

Evaluators (the trainer hands them the EMA parameters when the run keeps an average):
- `denoising`: the held-out loss at a few fixed timesteps, with noise fixed by the eval key, so runs and steps compare
  (one number per timestep: the loss is very different at the two ends of the schedule);
- `samples`: DDIM with classifier-free guidance, `samples_per_class` images of every class, drawn as `samples.png`
  in the eval folder, one row per class with its name;
- `sample_quality` (when the task has `judges`, `jaxgen.diffusion.sample_quality`): `num_judged_samples` guided DDIM
  samples, classes in turn, judged against the whole eval split: `fd_<judge>` (the Fréchet distance in the judge's
  feature space: `fd_classifier`, `fd_inception` = FID) and, for a judge that classifies, `<judge>_accuracy` (the
  fraction of samples classified as the class they were drawn for), its worst class, and `<judge>_real_accuracy`
  (the judge on the real eval images: the ceiling samples can reach). The real images' statistics are computed at
  the first evaluation and kept. Sampling shows a progress bar (`EvalContext.show_progress`). Single-process: the
  judges read this process's rows of each eval batch.

Latent diffusion: with `latents` (a `LatentSpace`, e.g. a trained autoencoder's encoder and decoder), the backbone
sees `latents.encode(images)` instead of the images, samples are drawn in latent space and decoded before they are
drawn or judged, so every evaluator compares pictures. Latents are not bounded like pixels: such recipes set
`clip_x0 = None` (or a bound that fits their latents' scale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core.progress import CountProgress
from jaxgen.core.sharding import local_rows
from jaxgen.core.task import EvalContext
from jaxgen.diffusion import ddim, ddpm, sampling
from jaxgen.diffusion.sample_quality import Judge, Judgement, judge_generated, judge_real

GRID_GAP = 2  # pixels between the cells of the samples grid
LABEL_WIDTH = 96  # pixels of the class-name column of the samples grid


class LatentSpace(Protocol):
    """Where a latent diffusion model works: `encode` images in [-1, 1] `[b, h, w, c]` (traced inside the jitted
    loss), `decode` latents back to images in [-1, 1], and the latent shape of one image."""

    def encode(self, images: jax.Array) -> jax.Array: ...

    def decode(self, latents: jax.Array) -> jax.Array: ...

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]: ...


class ClassConditionalDiffusionTask:
    """Batches hold `image` uint8 `[batch, height, width, channels]` and `label` int `[batch]` in [0, num_classes).

    `schedule` names a `ddpm.SCHEDULES` entry of `num_train_timesteps` steps. `eval_timesteps` are the timesteps the
    `denoising` evaluator reports; it reads at most `max_eval_batches` eval batches. The `samples` evaluator runs
    `num_sample_steps` DDIM steps (`timestep_spacing` as in diffusers; "trailing" starts from pure noise) at guidance
    `guidance_scale` (1 is the conditional model alone), clipping predicted x0 to [-clip_x0, clip_x0] (None: no
    clipping). `latents`: diffuse in that latent space instead of pixels (module docstring). The `sample_quality`
    evaluator draws `num_judged_samples` such samples, `sample_batch_size` per sampler call, for the `judges`.
    """

    partition_rules = ()

    def __init__(self, model: nn.Module, num_classes: int, *, label_dropout: float = 0.1,
                 schedule: str = "linear", num_train_timesteps: int = 1000,
                 eval_timesteps: Sequence[int] = (50, 250, 500, 750, 950), max_eval_batches: int = 8,
                 num_sample_steps: int = 50, timestep_spacing: str = "trailing", guidance_scale: float = 1.5,
                 samples_per_class: int = 8, class_names: Sequence[str] | None = None, grid_scale: int = 2,
                 judges: Sequence[Judge] = (), num_judged_samples: int = 1200, sample_batch_size: int = 256,
                 clip_x0: float | None = 1.0, latents: LatentSpace | None = None):
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1); got {label_dropout}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        bad = [t for t in eval_timesteps if not 0 <= t < num_train_timesteps]
        if bad:
            raise ValueError(f"eval_timesteps {bad} are outside the schedule's [0, {num_train_timesteps})")
        names = [judge.name for judge in judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judges need distinct names (their metrics are named after them); got {names}")
        if judges and (num_judged_samples < 2 or sample_batch_size < 1):
            raise ValueError(f"num_judged_samples must be >= 2 (a covariance) and sample_batch_size >= 1; got "
                             f"{num_judged_samples} and {sample_batch_size}")
        self.model = model
        self.num_classes = num_classes
        self.label_dropout = label_dropout
        self.schedule = ddpm.make_schedule(schedule, num_train_timesteps)
        self.eval_timesteps = tuple(int(t) for t in eval_timesteps)
        self.max_eval_batches = max_eval_batches
        self.sample_timesteps = ddim.spaced_timesteps(num_train_timesteps, num_sample_steps, timestep_spacing)
        self.guidance_scale = guidance_scale
        self.samples_per_class = samples_per_class
        self.class_names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
        self.grid_scale = grid_scale
        self.judges = tuple(judges)
        self.num_judged_samples = num_judged_samples
        self.sample_batch_size = sample_batch_size
        self.clip_x0 = clip_x0
        self.latents = latents
        self._real_judgements = None  # the eval split's statistics per judge, computed at the first evaluation
        self._denoising_jit = jax.jit(self._denoising_errors)
        self._sample_jit = jax.jit(self._sample, static_argnames=("image_shape",))

    @staticmethod
    def preprocess(image: jax.Array) -> jax.Array:
        """uint8 [0, 255] -> float32 [-1, 1]."""
        return image.astype(jnp.float32) / 127.5 - 1.0

    def diffused(self, image: jax.Array) -> jax.Array:
        """What the model denoises: uint8 images preprocessed, encoded when the task has `latents`."""
        x = self.preprocess(image)
        return x if self.latents is None else self.latents.encode(x)

    def _model_fn(self, variables):
        return lambda x, t, y: self.model.apply(variables, x, t, y)

    def init(self, rng, batch):
        x = self.diffused(batch["image"])
        return self.model.init({"params": rng}, x, jnp.zeros(x.shape[0], jnp.int32), batch["label"])

    def drop_labels(self, rng: jax.Array, labels: jax.Array) -> jax.Array:
        """Labels with each replaced by the null label `num_classes` with probability `label_dropout`."""
        null = jnp.full((1,), self.num_classes, labels.dtype)
        return sampling.drop_conditions(rng, labels, null, self.label_dropout)

    def loss(self, variables, batch, rng):
        drop_rng, noise_rng = jax.random.split(rng)
        labels = self.drop_labels(drop_rng, batch["label"])
        loss = ddpm.loss(self._model_fn(variables), self.schedule, noise_rng, self.diffused(batch["image"]), labels)
        return loss, {"eps_mse": loss}

    # ---------------------------------------------------------------------------------------------------- evaluation
    def evaluators(self):
        evaluators = {"denoising": self.evaluate_denoising, "samples": self.evaluate_samples}
        if self.judges:
            evaluators["sample_quality"] = self.evaluate_sample_quality
        return evaluators

    def _denoising_errors(self, variables, batch, rng):
        """Per-example squared error `[len(eval_timesteps), batch]` of the conditional model at each eval timestep."""
        x0 = self.diffused(batch["image"])
        noise = jax.random.normal(rng, x0.shape)
        model_fn = self._model_fn(variables)

        def at(t):
            t = jnp.full((x0.shape[0],), t, jnp.int32)
            output = model_fn(ddpm.add_noise(self.schedule, x0, noise, t), t, batch["label"])
            return jnp.mean((output - noise) ** 2, axis=(1, 2, 3))

        return jax.lax.map(at, jnp.asarray(self.eval_timesteps, jnp.int32))  # one model in the graph, not one per t

    def evaluate_denoising(self, variables, context: EvalContext) -> Mapping[str, Any]:
        total, count = np.zeros(len(self.eval_timesteps)), 0.0
        for index, batch in enumerate(context.batches()):
            if index == self.max_eval_batches:
                break
            valid = np.asarray(jax.device_get(batch["valid"]), np.float64)
            errors = np.asarray(jax.device_get(self._denoising_jit(variables, batch,
                                                                    jax.random.fold_in(context.rng, index))))
            total += errors @ valid
            count += valid.sum()
        if not count:
            raise ValueError("The denoising evaluator read no valid eval example: is the eval split empty?")
        results = {f"eps_mse_t{t}": float(v) for t, v in zip(self.eval_timesteps, total / count)}
        results["eps_mse_mean"] = float(np.mean(total / count))
        return results

    def _sample(self, variables, labels, rng, *, image_shape):
        model_fn = self._model_fn(variables)
        guided = sampling.guided(lambda x, t, step, y: (model_fn(x, t, y), None), labels,
                                 jnp.full_like(labels, self.num_classes), self.guidance_scale)
        noise = jax.random.normal(rng, (labels.shape[0], *image_shape))
        samples, _ = ddim.ddim_sample(guided, self.schedule, noise, self.sample_timesteps, clip_x0=self.clip_x0)
        return samples

    def sample(self, variables, labels: jax.Array, rng: jax.Array, image_shape: tuple[int, int, int]) -> jax.Array:
        """Guided DDIM samples, float32 in [-1, 1] `[len(labels), *image_shape]` (decoded from latents when the task
        has `latents`)."""
        image_shape = tuple(int(n) for n in image_shape)
        if self.latents is None:
            return self._sample_jit(variables, labels, rng, image_shape=image_shape)
        latents = self._sample_jit(variables, labels, rng, image_shape=tuple(self.latents.latent_shape(image_shape)))
        return self.latents.decode(latents)

    def evaluate_samples(self, variables, context: EvalContext) -> Mapping[str, Any]:
        image_shape = next(context.batches())["image"].shape[1:]
        labels = jnp.repeat(jnp.arange(self.num_classes, dtype=jnp.int32), self.samples_per_class)
        images = to_uint8(self.sample(variables, labels, context.rng, image_shape))
        if context.is_main_process:
            grid = class_grid(images.reshape(self.num_classes, self.samples_per_class, *image_shape),
                              self.class_names, self.grid_scale)
            save_png(context.outdir / "samples.png", grid)
        return {"num_samples": int(labels.shape[0]), "sample_mean": float(images.mean() / 255),
                "sample_std": float(images.std() / 255)}

    def _judge_real_images(self, context: EvalContext) -> dict[str, Judgement]:
        """Each judge's statistics of the eval split's images (kept: the split does not change during a run)."""
        if self._real_judgements is None:
            local = ({key: local_rows(batch[key]) for key in ("image", "label", "valid")} for batch in context.batches())
            self._real_judgements = judge_real(
                self.judges, local, self.num_classes,
                empty_error="The sample_quality evaluator read no eval batch: is the eval split empty?")
        return self._real_judgements

    def evaluate_sample_quality(self, variables, context: EvalContext) -> Mapping[str, Any]:
        real = self._judge_real_images(context)
        image_shape = next(context.batches())["image"].shape[1:]
        count = self.num_judged_samples
        rng = jax.random.fold_in(context.rng, 1)  # not the samples grid's key

        def draw(index, labels):
            return to_uint8(self.sample(variables, jnp.asarray(labels), jax.random.fold_in(rng, index), image_shape))

        with CountProgress(count, desc="sampling", unit="img", enabled=context.show_progress) as progress:
            judged = judge_generated(draw, self.judges, real, num_classes=self.num_classes, count=count,
                                     batch_size=self.sample_batch_size, progress=progress)
        return {"num_samples": count, **judged}


def to_uint8(samples: jax.Array) -> np.ndarray:
    """Samples in [-1, 1] as the uint8 images one would save (values outside are clipped)."""
    return np.asarray(jax.device_get(jnp.round((jnp.clip(samples, -1, 1) + 1) * 127.5)), np.uint8)


def class_grid(images: np.ndarray, names: Sequence[str], scale: int = 1) -> np.ndarray:
    """uint8 `[rows, cols, h, w, c]` -> one uint8 RGB picture: row r is class `names[r]`, its name in a left column.

    Size: height `rows * (h * scale + GRID_GAP) + GRID_GAP`, width `LABEL_WIDTH + cols * (w * scale + GRID_GAP)`.
    """
    from PIL import Image, ImageDraw

    rows, cols, h, w, channels = images.shape
    if len(names) != rows:
        raise ValueError(f"{len(names)} names for {rows} rows of samples")
    if channels == 1:
        images = np.repeat(images, 3, axis=-1)
    cell_h, cell_w = h * scale + GRID_GAP, w * scale + GRID_GAP
    canvas = np.full((rows * cell_h + GRID_GAP, LABEL_WIDTH + cols * cell_w, 3), 255, np.uint8)
    big = images.repeat(scale, axis=2).repeat(scale, axis=3)
    for r in range(rows):
        for c in range(cols):
            top, left = GRID_GAP + r * cell_h, LABEL_WIDTH + c * cell_w
            canvas[top:top + h * scale, left:left + w * scale] = big[r, c, ..., :3]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for r, name in enumerate(names):
        draw.text((4, GRID_GAP + r * cell_h + h * scale // 2 - 5), str(name), fill=(0, 0, 0))
    return np.asarray(picture)


def save_png(path, picture: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(picture).save(path)
