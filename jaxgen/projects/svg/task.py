"""VideoFlowTask: train the video DiT with flow matching on captioned videos, then sample dense vs SVG and compare.

Training predicts the straight-path velocity (`jaxgen.diffusion`) with dense attention; the caption is replaced by
all-padding with probability `caption_dropout`, which teaches the unconditional model that classifier-free guidance
needs. The "sample" evaluator reruns the same Euler sampler (same noise, same captions) with the "svg" backend at
each configured density and reports what SVG is judged by: PSNR / SSIM of the sparse video against the dense one,
the density actually computed, the attention recall per layer (softmax mass the computed masks keep on the profiled
rows, over the sparse calls) and the fraction of heads classified temporal per layer (plus a `note` when the two
videos are the same, as after a few training steps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import diffusion
from jaxgen.core.task import EvalContext
from jaxgen.metrics import image as image_metrics
from jaxgen.projects.svg import media
from jaxgen.projects.svg.model import VideoDiT

# Above this PSNR, SVG's video and the dense one differ by less than a quarter of an 8-bit grey level on average:
# the same video. Seen in short runs (the smoke test: ~131 dB at a computed density of 0.28), where the zero-initialised
# adaLN gates have barely opened, so attention, sparse or dense, hardly changes the output. The evaluator says so.
SAME_VIDEO_PSNR_DB = 60.0


class VideoFlowTask:
    """Batches hold `video` uint8 `[batch, frames, height, width, 3]` and `caption` int `[batch, tokens]` (0 = pad).

    `svg_options` are the "svg" backend's options except `density` (e.g. block sizes, `num_sampled_rows`, a
    `DenseGate`); `densities` lists the densities the evaluator samples at. `decode_caption` turns caption ids into
    text for picture titles.
    """

    partition_rules = ()

    def __init__(self, model: VideoDiT, *, caption_dropout: float = 0.1, time_shift: float = 1.0,
                 num_sample_steps: int = 20, guidance_scale: float = 4.0, densities: Sequence[float] = (0.25, 0.15),
                 svg_options: Mapping[str, Any] | None = None, num_videos: int = 4,
                 decode_caption: Callable[[np.ndarray], str] | None = None):
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1); got {caption_dropout}")
        self.model = model
        self.caption_dropout = caption_dropout
        self.time_shift = time_shift
        self.num_sample_steps = num_sample_steps
        self.guidance_scale = guidance_scale
        self.densities = tuple(densities)
        self.svg_options = dict(svg_options or {})
        self.num_videos = num_videos
        self.decode_caption = decode_caption or (lambda ids: " ".join(str(int(i)) for i in ids if i))
        self._sample_jit = jax.jit(self._sample, static_argnames=("backend", "options", "video_shape"))

    @staticmethod
    def preprocess(video: jax.Array) -> jax.Array:
        return video.astype(jnp.float32) / 127.5 - 1.0

    def init(self, rng, batch):
        video = self.preprocess(batch["video"])
        return self.model.init({"params": rng}, video, jnp.zeros(video.shape[0]), batch["caption"])

    def loss(self, variables, batch, rng):
        x0 = self.preprocess(batch["video"])
        t_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
        t = diffusion.sample_times(t_rng, x0.shape[0], self.time_shift)
        noise = jax.random.normal(noise_rng, x0.shape)
        drop = jax.random.bernoulli(drop_rng, self.caption_dropout, (x0.shape[0], 1))
        caption = jnp.where(drop, 0, batch["caption"])
        prediction = self.model.apply(variables, diffusion.interpolate(x0, noise, t), t, caption)
        loss = jnp.mean((prediction - diffusion.velocity_target(x0, noise)) ** 2)
        return loss, {"velocity_mse": loss}

    # ------------------------------------------------------------------------------------------------------ sampling
    def _sample(self, variables, caption, rng, *, backend: str, options: tuple, video_shape: tuple[int, int, int]):
        """(video float [-1, 1], attention aux stacked [steps, layers, 2 * batch, ...]) for one backend setting."""
        model = self.model.clone(attention_backend=backend, attention_options=dict(options))
        noise_rng, attention_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, (caption.shape[0], *video_shape, self.model.in_channels))

        def model_fn(x, t, step, caption):
            out, state = model.apply(variables, x, t, caption, step=step, num_steps=self.num_sample_steps,
                                     rng=jax.random.fold_in(attention_rng, step), mutable=["intermediates"])
            sown = state.get("intermediates", {}).get("blocks", {}).get("attn", {})
            return out, {name: value[0] for name, value in sown.items()}

        velocity = diffusion.guided(model_fn, caption, jnp.zeros_like(caption), self.guidance_scale)
        return diffusion.euler_sample(velocity, noise, diffusion.euler_timesteps(self.num_sample_steps,
                                                                                  self.time_shift))

    def sample(self, variables, caption, rng, *, video_shape: tuple[int, int, int], density: float | None = None):
        """Videos (float, [-1, 1]) for `caption` `[batch, tokens]`: with the model's own attention backend (the
        dense reference: "dense" on CPU, "cudnn" on a GPU) when `density` is None, else SVG.

        The same `rng` gives the same noise for every density, so the videos differ only by attention.
        """
        video_shape = tuple(int(n) for n in video_shape)
        if density is None:
            return self._sample_jit(variables, caption, rng, backend=self.model.attention_backend,
                                    options=tuple(sorted((self.model.attention_options or {}).items())),
                                    video_shape=video_shape)
        options = tuple(sorted({**self.svg_options, "density": float(density)}.items()))
        return self._sample_jit(variables, caption, rng, backend="svg", options=options, video_shape=video_shape)

    # ---------------------------------------------------------------------------------------------------- evaluation
    def evaluators(self):
        return {"sample": self.evaluate}

    def evaluate(self, variables, context: EvalContext) -> Mapping[str, Any]:
        batch = next(context.batches())
        data = np.asarray(jax.device_get(batch["video"]))[:self.num_videos]
        caption = jnp.asarray(jax.device_get(batch["caption"])[:self.num_videos])
        shape = data.shape[1:4]
        dense, _ = self.sample(variables, caption, context.rng, video_shape=shape)
        dense01 = jnp.clip((dense + 1) / 2, 0, 1)
        videos = {"dense": media.to_uint8(dense)}
        results: dict[str, Any] = {}
        head_maps = {}
        for density in self.densities:
            sparse, aux = self.sample(variables, caption, context.rng, video_shape=shape, density=density)
            key = f"d{density:g}"
            videos[f"svg {key}"] = media.to_uint8(sparse)
            sparse01 = jnp.clip((sparse + 1) / 2, 0, 1)
            results[f"psnr_{key}"] = float(jnp.mean(image_metrics.psnr(sparse01, dense01)))
            frames = [v.reshape(-1, *v.shape[2:]) for v in (sparse01, dense01)]  # SSIM per frame
            results[f"ssim_{key}"] = float(jnp.mean(image_metrics.ssim(*frames)))
            temporal = np.asarray(aux["head_is_temporal"], np.float32).mean(axis=(0, 2))  # [layers, heads]
            head_maps[key] = temporal
            results[f"computed_density_{key}"] = float(np.mean(aux["density"]))
            results[f"temporal_fraction_{key}"] = float(temporal.mean())
            results[f"temporal_fraction_by_layer_{key}"] = [float(x) for x in temporal.mean(1)]
            # Attention recall on the sparse calls only (dense-gated calls keep everything): [steps, layers] -> layers
            sparse_calls = np.asarray(aux["density"]) < 1.0
            recall = np.asarray(aux["recall"], np.float64).mean(axis=(2, 3))
            by_layer = [float(recall[sparse_calls[:, i], i].mean()) if sparse_calls[:, i].any() else 1.0
                        for i in range(recall.shape[1])]
            results[f"recall_by_layer_{key}"] = by_layer
            results[f"recall_{key}"] = float(np.mean(by_layer))
        same = [f"d{d:g}" for d in self.densities if results[f"psnr_d{d:g}"] >= SAME_VIDEO_PSNR_DB]
        if same:
            results["note"] = (
                f"PSNR >= {SAME_VIDEO_PSNR_DB:g} dB at {', '.join(same)}: SVG's videos equal the dense ones to float "
                f"rounding, because this model's attention hardly changes its output yet (its adaLN-Zero gates start "
                f"at 0 and open with training), not because the mask is dense (see computed_density_*). This says "
                f"nothing about SVG's quality; a trained model does (experiments/svg/README.md).")
        if context.is_main_process:
            self._draw(context.outdir, data, caption, videos, head_maps)
        return results

    def _draw(self, outdir, data, caption, videos, head_maps) -> None:
        rows = []
        for i in range(data.shape[0]):
            text = self.decode_caption(np.asarray(caption[i]))
            rows.append((f"data\n{text}", data[i]))
            for name, video in videos.items():
                rows.append((name, video[i]))
                media.save_gif(outdir / f"{name.replace(' ', '_')}_{i}.gif", video[i])
        media.save_frame_strip(outdir / "frames.png", rows, title="dataset clip with the caption, then samples "
                                                                   "from the same noise (dense, SVG per density)")
        for key, temporal in head_maps.items():
            media.save_head_map(outdir / f"head_map_{key}.png", temporal,
                                title=f"SVG {key}: fraction of calls classified temporal")
