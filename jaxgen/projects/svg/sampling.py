"""Sampling a ported video transformer from precomputed text embeddings, with dense or SVG attention.

Scope: the transformer's denoising loop only. The text encoder (umT5 for Wan, T5 for CogVideoX) and the VAE stay
outside: a user passes the prompt embeddings (and the negative prompt's, for classifier-free guidance) as arrays, and
decodes the returned latents with their own VAE. Latents are `[batch, frames, height, width, channels]` in the VAE's
latent units (16 channels; frames `1 + (video_frames - 1) / 4`; height and width / 8).

Each model family brings its schedule (a small dataclass with `run(model_fn, noise)`), so `sample` has no branch:
  - `FlowSchedule` (Wan): the rectified-flow Euler sampler of `jaxgen.diffusion` (t from 1 down to 0, shifted by
    `shift t / (1 + (shift - 1) t)`), the model called at `1000 t`, the timestep units of diffusers' flow-matching
    schedulers. Wan's diffusers pipeline defaults: 50 steps, guidance 5.0, shift 3.0 at 480p and 5.0 at 720p
    (`WAN_480P`, `WAN_720P`). Its checkpoints ship the UniPC multistep solver rather than Euler; both integrate the
    same ODE, UniPC with fewer function evaluations for the same error, so a 50-step Euler run here is a little less
    exact than the pipeline's, not a different model.
  - `VPredictionDdim` (CogVideoX): deterministic DDIM on v-predictions over CogVideoX's discrete schedule
    (scaled-linear betas 0.00085-0.012, the SD3-style SNR shift, rescaled to zero terminal SNR), "trailing" timesteps,
    as diffusers' `CogVideoXDDIMScheduler`; the pipeline's defaults are 50 steps and guidance 6.
  - HunyuanVideo: `FlowSchedule` with shift 7 and `guidance_scale` 1 (`HUNYUAN_720P`): the 13B model is
    guidance-distilled, the scale (6 in the official scripts) goes in as the `guidance` input (times 1000), one call a
    step; diffusers' HunyuanVideo pipeline runs the same Euler steps.
SVG's per-step cost is what this path measures either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import diffusion

TIMESTEP_SCALE = 1000.0  # flow time t in [0, 1] -> the model's timestep, as diffusers' flow schedulers pass it


@dataclasses.dataclass(frozen=True)
class FlowSchedule:
    """Steps, resolution shift and classifier-free guidance scale (1.0: no guidance, one model call a step)."""

    num_steps: int = 50
    shift: float = 5.0
    guidance_scale: float = 5.0

    def __post_init__(self):
        if self.num_steps < 1 or self.shift <= 0 or self.guidance_scale < 1.0:
            raise ValueError(f"FlowSchedule needs num_steps >= 1, shift > 0, guidance_scale >= 1; got {self}")

    def run(self, model_fn, noise):
        """`model_fn(x, timestep, step) -> (velocity, aux)` with timesteps in the model's units (1000 t)."""
        def velocity(x, t, step):
            return model_fn(x, t * TIMESTEP_SCALE, step)
        return diffusion.euler_sample(velocity, noise, diffusion.euler_timesteps(self.num_steps, self.shift))


@dataclasses.dataclass(frozen=True)
class VPredictionDdim:
    """CogVideoX's sampler: DDIM (eta 0) on v-predictions; `snr_shift_scale` as in its scheduler config."""

    num_steps: int = 50
    guidance_scale: float = 6.0
    snr_shift_scale: float = 1.0
    num_train_timesteps: int = 1000

    def __post_init__(self):
        if (not 1 <= self.num_steps <= self.num_train_timesteps or self.guidance_scale < 1.0
                or self.snr_shift_scale <= 0):
            raise ValueError(f"VPredictionDdim needs 1 <= num_steps <= num_train_timesteps, guidance_scale >= 1, "
                             f"snr_shift_scale > 0; got {self}")

    def noise_schedule(self) -> diffusion.NoiseSchedule:
        """Scaled-linear alphas_cumprod, SNR-shifted, then rescaled so the last timestep has zero SNR (Lin et al.
        2024: the sampler starts from pure noise, which is what it is given)."""
        betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, self.num_train_timesteps, dtype=np.float64) ** 2
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod = alphas_cumprod / (self.snr_shift_scale + (1 - self.snr_shift_scale) * alphas_cumprod)
        root = np.sqrt(alphas_cumprod)
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])
        alphas_cumprod = root ** 2
        betas = 1.0 - alphas_cumprod / np.concatenate([[1.0], alphas_cumprod[:-1]])
        return diffusion.NoiseSchedule(betas=jnp.asarray(betas, jnp.float32),
                                       alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32))

    def timesteps(self) -> jax.Array:
        return diffusion.spaced_timesteps(self.num_train_timesteps, self.num_steps, "trailing")

    def run(self, model_fn, noise):
        """`model_fn(x, timestep, step) -> (v, aux)` with integer timesteps in [0, num_train_timesteps)."""
        return diffusion.ddim_sample(model_fn, self.noise_schedule(), noise, self.timesteps(),
                                     prediction="v_prediction")


WAN_480P = FlowSchedule(num_steps=50, shift=3.0, guidance_scale=5.0)
WAN_720P = FlowSchedule(num_steps=50, shift=5.0, guidance_scale=5.0)
COGVIDEOX = VPredictionDdim(num_steps=50, guidance_scale=6.0)
HUNYUAN_720P = FlowSchedule(num_steps=50, shift=7.0, guidance_scale=1.0)


def sown(intermediates: Any) -> dict[str, jax.Array]:
    """The attention diagnostics a model sowed (SVG's head_is_temporal, density, recall), stacked over layers by
    its scans: `{name: [layers, ...]}`, wherever in the module tree they were sown. A model with several scans
    (HunyuanVideo's dual- then single-stream blocks) gets them concatenated in the order its modules ran."""
    found: dict[str, list[jax.Array]] = {}

    def walk(tree):
        for name, value in tree.items():
            if isinstance(value, tuple):
                found.setdefault(name, []).append(value[0])
            elif isinstance(value, dict):
                walk(value)

    if isinstance(intermediates, dict):
        walk(intermediates)
    return {name: values[0] if len(values) == 1 else jnp.concatenate(values) for name, values in found.items()}


def sample(module: nn.Module, params, noise: jax.Array, text: jax.Array, negative_text: jax.Array | None = None, *,
           schedule: FlowSchedule | VPredictionDdim, rng: jax.Array,
           model_kwargs: Mapping[str, Any] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Latents denoised from `noise` `[batch, frames, height, width, channels]` for prompt embeddings `text`
    `[batch, text_len, text_dim]`; `negative_text` (same shape) is the unconditional input of guidance.
    `model_kwargs`: the model's extra keywords on every call (HunyuanVideo's pooled projections, text mask and padding,
    embedded guidance); HunyuanVideo is guidance-distilled, one call a step, so they come with `guidance_scale` 1.

    The module's own attention backend runs ("svg" with its options for sparse sampling, "cudnn"/"dense" for the
    reference). `rng` feeds SVG's profiling, a fresh key per step. Returns `(latents float32, aux)` with aux the
    attention diagnostics stacked `[steps, layers, ...]` (rows of a guided call: prompt first, then negative).
    """
    if schedule.guidance_scale > 1.0 and (negative_text is None or negative_text.shape != text.shape):
        raise ValueError(f"guidance_scale {schedule.guidance_scale} needs negative_text shaped like text "
                         f"{text.shape}; got {None if negative_text is None else negative_text.shape}")
    if schedule.guidance_scale > 1.0 and model_kwargs:
        raise ValueError(f"model_kwargs {sorted(model_kwargs)} are per prompt; with guidance_scale "
                         f"{schedule.guidance_scale} the batch would double (use guidance_scale 1 with them)")

    def model_fn(x, timestep, step, condition):
        out, state = module.apply(params, x, timestep, condition, step=step, num_steps=schedule.num_steps,
                                  rng=jax.random.fold_in(rng, step), mutable=["intermediates"],
                                  **dict(model_kwargs or {}))
        return out, sown(state.get("intermediates", {}))

    if schedule.guidance_scale > 1.0:
        prediction = diffusion.guided(model_fn, text, negative_text, schedule.guidance_scale)
    else:
        def prediction(x, timestep, step):
            return model_fn(x, timestep, step, text)
    return schedule.run(prediction, noise)
