"""Training DC-AE in the paper's three phases, as one Task whose phase picks the loss and the trainable parameters.

The paper's decoupled high-resolution adaptation (the official autoencoder training code was never released):

1. `full`: low-resolution training of the whole autoencoder with L1 + a perceptual loss. The paper's is LPIPS
   (VGG16), whose weights cannot be downloaded here, so the default perceptual term is `1 - SSIM`
   (`jaxgen.metrics.image.ssim`, on [0, 1]); `perceptual="lpips"` with `lpips_weights` (torchvision's VGG16 file and
   the lpips package's lin file, `jaxgen.metrics.lpips`) trains with L1 + LPIPS as the paper does;
2. `latent_adaptation`: high-resolution images, only the encoder's head (its last stage and project-out) and the
   decoder's input (project-in and its first, deepest stage) trainable: the latent space adapts to large images
   while the low-resolution layers, which see only local detail, stay as phase 1 left them;
3. `refinement`: low-resolution, only the decoder's head (its highest-resolution stage, output norm and project-out)
   trainable, adding a PatchGAN hinge loss for local detail.

Trainable subsets are optax masks: `phase_frozen(phase, model)` gives the regexes of the frozen parameters for
`OptimizerConfig.frozen`, whose `set_to_zero` group gives them exactly zero updates and no optimizer state, so they
stay bit-identical. Each phase is a run of the shared trainer started from the previous phase's checkpoint
(`init_from`); the parameter tree is the same in all three (the discriminator exists, frozen and unused, in phases 1
and 2), so checkpoints carry over without conversion.

Phase 3's GAN runs in the shared trainer's single-loss step: the discriminator's hinge loss sees the reconstruction
through `stop_gradient`, and the generator's adversarial term sees the discriminator's parameters through
`stop_gradient`, so one gradient of the sum gives each side the gradient of its own loss (simultaneous updates).
A fixed GAN weight either oscillated (0.1) or did nothing (<= 0.01) on the tiny model (experiments/dcae/README.md);
`adaptive_gan_weight=True` scales the adversarial term as VQGAN does (Esser et al., 2021): by the ratio of the
gradient norms of the reconstruction loss and of the adversarial term at the decoder's output layer, so the
adversarial gradient reaching the decoder stays `gan_weight` times the reconstruction's whatever the
discriminator's scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.core.errors import ConfigError
from jaxgen.core.optim import group_labels
from jaxgen.core.task import EvalContext
from jaxgen.data import sources
from jaxgen.diffusion.task import class_grid, save_png, to_uint8
from jaxgen.metrics import image as image_metrics
from jaxgen.metrics import lpips as lpips_lib
from jaxgen.projects.dcae import model as model_lib


@dataclasses.dataclass(frozen=True)
class Phase:
    """What one training phase optimises: `trainable(model)` lists regexes over "/"-joined parameter paths;
    `gan_weight > 0` adds the PatchGAN loss."""

    trainable: Callable[[model_lib.DCAE], tuple[str, ...]]
    gan_weight: float = 0.0
    description: str = ""


def _last_stage(prefix: str, stage: int) -> str:
    return f"^autoencoder/{prefix}_{stage}_\\d+/"


def _full(m: model_lib.DCAE) -> tuple[str, ...]:
    return ("^autoencoder/",)


def _latent_adaptation(m: model_lib.DCAE) -> tuple[str, ...]:
    encoder_last = len(m.encoder_block_out_channels) - 1
    decoder_last = len(m.decoder_block_out_channels) - 1
    return (_last_stage("encoder/down_blocks", encoder_last), "^autoencoder/encoder/conv_out/",
            "^autoencoder/decoder/conv_in/", _last_stage("decoder/up_blocks", decoder_last))


def _refinement(m: model_lib.DCAE) -> tuple[str, ...]:
    head = next(i for i, depth in enumerate(m.decoder_layers_per_block) if depth > 0)
    return (_last_stage("decoder/up_blocks", head), "^autoencoder/decoder/norm_out/",
            "^autoencoder/decoder/conv_out/", "^discriminator/")


PHASES: dict[str, Phase] = {
    "full": Phase(_full, description="low resolution, the whole autoencoder, L1 + perceptual"),
    "latent_adaptation": Phase(_latent_adaptation, description="high resolution, encoder head + decoder input"),
    "refinement": Phase(_refinement, gan_weight=0.1, description="low resolution, decoder head + PatchGAN"),
}


def phase(name: str) -> Phase:
    return model_lib.lookup(PHASES, "DC-AE training phase", name)


def phase_frozen(phase_name: str, model: model_lib.DCAE) -> tuple[str, ...]:
    """Regexes (for `OptimizerConfig.frozen`) matching every parameter that `phase_name` does not train: one
    negative lookahead over the phase's trainable patterns."""
    trainable = phase(phase_name).trainable(model)
    return (f"^(?!(?:{'|'.join(p.removeprefix('^') for p in trainable)}))",)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al., 2017): strided 4x4 convs with LeakyReLU, one logit per overlapping patch.
    GroupNorm rather than BatchNorm: no running statistics to carry through the shared trainer."""

    width: int = 32
    layers: int = 3

    @nn.compact
    def __call__(self, x):
        for i in range(self.layers):
            x = nn.Conv(self.width * 2 ** i, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"conv_{i}")(x)
            if i > 0:
                x = nn.GroupNorm(num_groups=min(8, self.width * 2 ** i), name=f"norm_{i}")(x)
            x = nn.leaky_relu(x, 0.2)
        return nn.Conv(1, (3, 3), padding=((1, 1), (1, 1)), name="logits")(x)


def _ssim_term(task: AutoencoderTask, recon: jax.Array, x: jax.Array) -> tuple[jax.Array, dict]:
    """1 - SSIM of the reconstruction (clipped to the image range) on [0, 1]; SSIM itself is logged anyway."""
    return 1.0 - jnp.mean(image_metrics.ssim(_unit(recon), _unit(x))), {}


def _lpips_term(task: AutoencoderTask, recon: jax.Array, x: jax.Array) -> tuple[jax.Array, dict]:
    """LPIPS of the raw reconstruction (not clipped: out-of-range pixels keep their gradient), the paper's term."""
    distance = jnp.mean(task.lpips(recon, x))
    return distance, {"lpips": distance}


# name -> (task, reconstruction, target) -> (the perceptual loss term, metrics to log)
PERCEPTUAL: dict[str, Callable[..., tuple[jax.Array, dict]]] = {"ssim": _ssim_term, "lpips": _lpips_term}


def preprocess(image: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return image.astype(jnp.float32) / 127.5 - 1.0


def _unit(x: jax.Array) -> jax.Array:
    return (jnp.clip(x, -1.0, 1.0) + 1.0) / 2.0


class AutoencoderTask:
    """Reconstruction training of a `DCAE` in one of `PHASES`; batches hold `image` uint8 `[b, h, w, 3]`.

    Loss: `l1 + perceptual_weight * perceptual`, the perceptual term from `PERCEPTUAL`: "ssim" (1 - SSIM, the
    default) or "lpips" (the paper's; needs `lpips_weights`), plus in the refinement phase `gan_weight *
    adversarial` for the decoder and the discriminator's hinge loss, with `adaptive_gan_weight` times
    `adaptive_weight` (VQGAN's: `|grad L_rec| / (|grad L_adv| + 1e-4)` over the decoder's output layer `conv_out`,
    clipped to [0, 1e4], a constant of the step). `lpips_weights`: (torchvision's backbone file,
    the lpips package's v0.1 lin file) of the `lpips_net` network (`jaxgen.metrics.lpips`), read when the task is
    built, so a missing file stops the run before it starts; the LPIPS network is a constant of the loss, never
    trained or checkpointed. Evaluators: `reconstruction` (PSNR / SSIM, and LPIPS when `lpips_weights` is set, on the
    eval split, at most `max_eval_batches` batches, and `reconstructions.png`: originals over reconstructions) and,
    with `holdout` (a dataset name such as "skimage_photos/256", never trained on), `holdout` with the same numbers
    and picture on those images, cropped to `holdout_size` around the centre.
    """

    partition_rules = ()

    def __init__(self, model: model_lib.DCAE, phase_name: str = "full", *, perceptual: str = "ssim",
                 perceptual_weight: float = 1.0, lpips_weights: tuple[str, str] | None = None,
                 lpips_net: str = "vgg", gan_weight: float | None = None, adaptive_gan_weight: bool = False,
                 discriminator: PatchDiscriminator = PatchDiscriminator(), max_eval_batches: int = 4,
                 grid_images: int = 8, holdout: str | None = None, holdout_size: int | None = None,
                 data_dir: str | None = None):
        self.model = model
        self.phase_name = phase_name
        self.phase = phase(phase_name)
        self.perceptual = model_lib.lookup(PERCEPTUAL, "DC-AE perceptual loss", perceptual)
        if perceptual == "lpips" and lpips_weights is None:
            spec = lpips_lib.backbone(lpips_net)
            raise ConfigError(f"perceptual='lpips' needs lpips_weights=(backbone file, lin file): torchvision's "
                              f"{spec.backbone_file} and the lpips package's weights/v0.1/{spec.lin_file} "
                              "(jaxgen.metrics.lpips says where they come from)")
        try:
            self.lpips = None if lpips_weights is None else lpips_lib.load_lpips(*lpips_weights, net=lpips_net)
        except FileNotFoundError as error:  # a setting of the run: the CLI reports it in one line
            raise ConfigError(f"{error} (AutoencoderTask.lpips_weights)") from error
        self.perceptual_weight = perceptual_weight
        self.gan_weight = self.phase.gan_weight if gan_weight is None else gan_weight
        self.adaptive_gan_weight = adaptive_gan_weight
        self.discriminator = discriminator
        self.max_eval_batches = max_eval_batches
        self.grid_images = grid_images
        self.holdout = holdout
        self.holdout_size = holdout_size
        self.data_dir = data_dir
        self._reconstruct_jit = jax.jit(self._reconstruct)

    def frozen_patterns(self) -> tuple[str, ...]:
        return phase_frozen(self.phase_name, self.model)

    def init(self, rng, batch):
        ae_rng, disc_rng = jax.random.split(model_lib.rbg_key(rng))  # RBG: see model_lib.rbg_key
        x = preprocess(batch["image"])
        ae = self.model.init(ae_rng, x)
        disc = self.discriminator.init(disc_rng, x)
        variables = {"params": {"autoencoder": ae["params"], "discriminator": disc["params"]}}
        for collection in set(ae) - {"params"}:
            variables[collection] = {"autoencoder": ae[collection]}
        return variables

    @staticmethod
    def _autoencoder(variables) -> dict:
        return {collection: tree["autoencoder"] for collection, tree in variables.items()}

    def _reconstruction_loss(self, recon: jax.Array, x: jax.Array) -> tuple[jax.Array, dict]:
        """`l1 + perceptual_weight * perceptual` and the metrics to log."""
        l1 = jnp.mean(jnp.abs(recon - x))
        perceptual, perceptual_metrics = self.perceptual(self, recon, x)
        return l1 + self.perceptual_weight * perceptual, {"l1": l1, **perceptual_metrics}

    def _apply_autoencoder(self, ae, x, updates_stats: bool):
        """(reconstruction, new batch statistics or None, the decoder's output layer as an unbound module and its
        input): the last two, captured on the way through, let `adaptive_weight` differentiate that layer alone."""
        head = {}

        def capture_head(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and context.module.path == ("decoder", "conv_out"):
                head["module"], head["input"] = context.module.clone(parent=None), args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(capture_head):
            if updates_stats:
                recon, new_stats = self.model.apply(ae, x, train=True, mutable=["batch_stats"])
            else:
                recon, new_stats = self.model.apply(ae, x), None
        return recon, new_stats, head.get("module"), head.get("input")

    def adaptive_weight(self, head: nn.Module, head_params, head_input: jax.Array, x: jax.Array,
                        adversarial_of: Callable[[jax.Array], jax.Array]) -> jax.Array:
        """VQGAN's adaptive weight: `|d L_rec / d W| / (|d L_adv / d W| + 1e-4)` over the parameters W of the
        decoder's output layer, clipped to [0, 1e4] and held constant (`stop_gradient`). Only that layer is rerun
        (on its captured, gradient-stopped input), so the two extra gradients cost a layer and the losses, not the
        autoencoder."""
        if head is None:
            raise ValueError(f"adaptive_gan_weight needs the decoder's output layer at decoder/conv_out; "
                             f"{type(self.model).__name__} has none")
        head_input = jax.lax.stop_gradient(head_input)
        reconstruct = lambda params: head.apply({"params": params}, head_input)  # noqa: E731
        rec_grad = jax.grad(lambda params: self._reconstruction_loss(reconstruct(params), x)[0])(head_params)
        adv_grad = jax.grad(lambda params: adversarial_of(reconstruct(params)))(head_params)
        ratio = optax.tree.norm(rec_grad) / (optax.tree.norm(adv_grad) + 1e-4)
        return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, 1e4))

    def loss(self, variables, batch, rng):
        x = preprocess(batch["image"])
        ae = self._autoencoder(variables)
        # BatchNorm statistics (official-layout decoders) are updated in the full phase only; the later phases run
        # their frozen layers as inference does.
        updates_stats = "batch_stats" in ae and self.phase_name == "full"
        recon, new_stats, head, head_input = self._apply_autoencoder(ae, x, updates_stats)
        loss, metrics = self._reconstruction_loss(recon, x)
        metrics = {**metrics, "ssim": jnp.mean(image_metrics.ssim(_unit(recon), _unit(x))),
                   "psnr": jnp.mean(image_metrics.psnr(_unit(recon), _unit(x)))}
        if self.gan_weight > 0:
            disc_params = variables["params"]["discriminator"]
            disc = lambda params, images: self.discriminator.apply({"params": params}, images)  # noqa: E731
            adversarial_of = lambda images: -jnp.mean(disc(jax.lax.stop_gradient(disc_params), images))  # noqa: E731
            adversarial = adversarial_of(recon)
            real, fake = disc(disc_params, x), disc(disc_params, jax.lax.stop_gradient(recon))
            disc_loss = jnp.mean(nn.relu(1.0 - real)) + jnp.mean(nn.relu(1.0 + fake))
            weight = self.gan_weight
            if self.adaptive_gan_weight:
                adaptive = self.adaptive_weight(head, ae["params"]["decoder"]["conv_out"], head_input, x,
                                                adversarial_of)
                weight, metrics = weight * adaptive, {**metrics, "adaptive_weight": adaptive}
            loss = loss + weight * adversarial + disc_loss
            metrics = {**metrics, "adversarial": adversarial, "discriminator_loss": disc_loss,
                       "discriminator_accuracy": 0.5 * (jnp.mean(real > 0) + jnp.mean(fake < 0))}
        if updates_stats:
            return loss, metrics, {"batch_stats": {"autoencoder": new_stats["batch_stats"]}}
        return loss, metrics

    # ---------------------------------------------------------------------------------------------------- evaluation
    def evaluators(self):
        evaluators = {"reconstruction": self.evaluate_reconstruction}
        if self.holdout:
            evaluators["holdout"] = self.evaluate_holdout
        return evaluators

    def _reconstruct(self, variables, images):
        """(reconstructions in [-1, 1], {metric: per-image value}) of uint8 images: PSNR, SSIM and, with LPIPS
        weights, LPIPS (of the reconstruction clipped to [-1, 1], the picture the grid shows)."""
        x = preprocess(images)
        recon = self.model.apply(self._autoencoder(variables), x)
        unit_recon, unit_x = _unit(recon), _unit(x)
        metrics = {"psnr": image_metrics.psnr(unit_recon, unit_x), "ssim": image_metrics.ssim(unit_recon, unit_x)}
        if self.lpips is not None:
            metrics["lpips"] = self.lpips(jnp.clip(recon, -1.0, 1.0), x)
        return recon, metrics

    def _evaluate(self, variables, batches, outdir, is_main) -> Mapping[str, Any]:
        sums, shown, count = {}, None, 0
        for images, valid in batches:
            recon, per_image = self._reconstruct_jit(variables, images)
            valid = np.asarray(jax.device_get(valid), np.float64)
            for name, values in per_image.items():
                sums[name] = sums.get(name, 0.0) + float(np.asarray(values, np.float64) @ valid)
            count += int(valid.sum())
            if shown is None:
                n = min(self.grid_images, images.shape[0])
                shown = np.stack([np.asarray(jax.device_get(images[:n])), to_uint8(recon[:n])])
        if not count:
            raise ValueError("The DC-AE evaluator read no valid example: is the split empty?")
        if is_main:
            save_png(outdir / "reconstructions.png", class_grid(shown, ["original", "DC-AE"], scale=1))
        return {**{name: total / count for name, total in sums.items()}, "num_images": count}

    def evaluate_reconstruction(self, variables, context: EvalContext) -> Mapping[str, Any]:
        def batches():
            for index, batch in enumerate(context.batches()):
                if index == self.max_eval_batches:
                    return
                yield batch["image"], batch["valid"]

        return self._evaluate(variables, batches(), context.outdir, context.is_main_process)

    def holdout_images(self) -> np.ndarray:
        """The held-out images, uint8 `[n, s, s, 3]`, centre-cropped to `holdout_size` (a multiple of the
        compression) when set."""
        source = sources.source(self.holdout, "test", self.data_dir)
        images = sources.read_batch(source, np.arange(len(source)))["image"]
        size = self.holdout_size or images.shape[1]
        f = self.model.spatial_compression
        if size % f or size > min(images.shape[1:3]):
            raise ValueError(f"holdout_size {size} must be a multiple of the compression {f} and fit the "
                             f"{images.shape[1]} x {images.shape[2]} images of {self.holdout!r}")
        top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
        return images[:, top:top + size, left:left + size]

    def evaluate_holdout(self, variables, context: EvalContext) -> Mapping[str, Any]:
        images = self.holdout_images()
        batch = min(len(images), 4)
        padded = np.concatenate([images, np.zeros((-len(images) % batch, *images.shape[1:]), images.dtype)])
        valid = np.arange(len(padded)) < len(images)  # one batch shape: one compilation
        chunks = ((padded[i:i + batch], valid[i:i + batch]) for i in range(0, len(padded), batch))
        outdir = context.outdir / "holdout"
        if context.is_main_process:
            outdir.mkdir(parents=True, exist_ok=True)
        return self._evaluate(variables, chunks, outdir, context.is_main_process)


def trainable_mask(params, patterns: Sequence[str]):
    """True for the parameters a phase trains (the complement of `phase_frozen`), for tests and inspection."""
    return jax.tree.map(lambda label: label == "train",
                        group_labels(params, {"frozen": patterns}, default="train"))
