"""`jaxgen run` for a real video model: load a diffusers transformer, sample dense and SVG from the same noise and
prompt embeddings, and report what SVG changed and what it cost.

Inference only, so it forks the trainer's entry (`config.trainer.run = @generate.run` in the recipe) rather than
being a Task. Inputs: a diffusers transformer folder (`model_dir`, any port in `ports.PORTS`) and an `.npz` of
precomputed embeddings, `prompt_embeds` `[batch, text_len, text_dim]` and, for guidance, `negative_prompt_embeds`
(the text encoder stays outside; see `sampling.py`); HunyuanVideo also reads `pooled_prompt_embeds` `[batch, 768]`
(CLIP) and `prompt_attention_mask` `[batch, text_len]` (its padded text; SVG needs the same padding in every row) and
embeds `embedded_guidance_scale`. Outputs in the workdir: `latents_dense.npy`,
`latents_svg_d<density>.npy` (decode them with the model's VAE) and `metrics.json`: per density, the relative L2
distance of SVG's latents to the dense ones, the density computed and the attention recall on the sparse calls (per
layer), the share of heads classified temporal, and the wall time of each whole sampling loop (compiled ahead,
so compilation is not in it).

On several GPUs (`mesh`, `sequence_axis`): the weights load straight into their shards by the logical-axis rules
(FSDP over `fsdp`: Wan-14B's 28.6 GB become 3.6 GB a GPU on 8), and self-attention of both runs goes through the
"ulysses" backend (`jaxgen.nn.sequence_parallel`) around the dense backend and SVG, splitting the video sequence over
`sequence_axis`; the recipes `configs/svg/*_sp.gin` bind both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core import mesh as mesh_lib
from jaxgen.projects.svg import ports
from jaxgen.projects.svg.sampling import FlowSchedule, VPredictionDdim, sample


@dataclasses.dataclass
class GenerateResult:
    """What `jaxgen run` prints: no training, one "generate" entry of results."""

    workdir: Path
    eval_results: dict[str, dict]
    step: int = 0
    last_train_record: dict | None = None


def _summary(aux: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Diagnostics stacked `[steps, layers, ...]` -> the numbers a reader compares across densities."""
    density = np.asarray(aux["density"], np.float64)
    sparse_calls = density < 1.0
    recall = np.asarray(aux["recall"], np.float64).mean(axis=(2, 3))
    by_layer = [float(recall[sparse_calls[:, i], i].mean()) if sparse_calls[:, i].any() else 1.0
                for i in range(recall.shape[1])]
    return {"computed_density_sparse_calls": float(density[sparse_calls].mean()) if sparse_calls.any() else 1.0,
            "sparse_call_fraction": float(sparse_calls.mean()), "recall": float(np.mean(by_layer)),
            "recall_by_layer": by_layer,
            "temporal_fraction": float(np.asarray(aux["head_is_temporal"], np.float64)[sparse_calls].mean())
            if sparse_calls.any() else 0.0}


def model_inputs(data: Mapping[str, np.ndarray], batch: int, dtype: Any,
                 embedded_guidance_scale: float | None) -> tuple[dict[str, jax.Array], dict[str, int]]:
    """(array keywords, static keywords) of the model beyond the prompt: HunyuanVideo's pooled projections, text mask
    with its padding count (static, for SVG's layout), and embedded guidance (the scale times 1000, as its pipeline)."""
    arrays: dict[str, jax.Array] = {}
    static: dict[str, int] = {}
    if "pooled_prompt_embeds" in data:
        arrays["pooled_projections"] = jnp.asarray(data["pooled_prompt_embeds"], dtype)
    if "prompt_attention_mask" in data:
        mask = np.asarray(data["prompt_attention_mask"]).astype(bool)
        padding = mask.shape[1] - mask.sum(axis=1)
        if len(set(padding.tolist())) != 1 or not mask[:, :mask.shape[1] - padding[0]].all():
            raise ValueError(f"prompt_attention_mask must be right-padded by the same count in every row (SVG's "
                             f"layout is static); got padding {padding.tolist()}")
        arrays["encoder_attention_mask"] = jnp.asarray(mask)
        static["text_padding"] = int(padding[0])
    if embedded_guidance_scale is not None:
        arrays["guidance"] = jnp.full((batch,), 1000.0 * embedded_guidance_scale, jnp.float32)
    return arrays, static


def run(*, workdir: str | Path, model_dir: str, embeddings: str, latent_shape: Sequence[int],
        schedule: FlowSchedule | VPredictionDdim = FlowSchedule(), densities: Sequence[float] = (0.25,),
        svg_options: Mapping[str, Any] | None = None, dense_backend: str = "cudnn", dtype: str = "bfloat16",
        embedded_guidance_scale: float | None = None, seed: int = 0, mesh: mesh_lib.MeshConfig | None = None,
        sequence_axis: str | None = None, restore_step: int | None = None, progress: bool = True,
        mode: str = "train") -> GenerateResult:
    """Samples `latent_shape` (frames, height, width) latents dense and with SVG at each density; see the module
    docstring. `svg_options` are the "svg" backend's options except `density`; `embedded_guidance_scale`: for
    guidance-distilled models (HunyuanVideo); `mesh` places the weights and runs the sampling on a device mesh,
    `sequence_axis` (one of its axes) splits the sequence in self-attention; `restore_step`, `progress` and `mode` are
    the trainer's keywords, accepted and unused (nothing is trained or restored)."""
    del restore_step, progress, mode
    if sequence_axis is not None and mesh is None:
        raise ValueError(f"sequence_axis={sequence_axis!r} splits the sequence over a mesh axis; set `mesh` too")
    device_mesh = None if mesh is None else mesh_lib.make_mesh(mesh)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with np.load(embeddings) as data:
        if "prompt_embeds" not in data:
            raise ValueError(f"{embeddings} holds {sorted(data)}; expected 'prompt_embeds' (and "
                             f"'negative_prompt_embeds' for guidance)")
        text = jnp.asarray(data["prompt_embeds"], dtype)
        negative = jnp.asarray(data["negative_prompt_embeds"], dtype) if "negative_prompt_embeds" in data else None
        extras, static_extras = model_inputs(data, text.shape[0], dtype, embedded_guidance_scale)
    module, params = ports.from_diffusers(model_dir, dtype=jnp.dtype(dtype), mesh=device_mesh)
    if hasattr(module, "cross_attention_backend"):  # Wan's text cross-attention: never sparse, dense_backend always
        module = module.clone(cross_attention_backend=dense_backend)
    noise = jax.random.normal(jax.random.key(seed), (text.shape[0], *latent_shape, module.in_channels))
    attention_rng = jax.random.key(seed + 1)

    def with_attention(backend: str, options: Mapping[str, Any] | None = None):
        """`module` with self-attention by `backend`, wrapped in "ulysses" when the sequence is split."""
        if sequence_axis is None:
            return module.clone(attention_backend=backend, attention_options=options)
        return module.clone(attention_backend="ulysses",
                            attention_options={"axis": sequence_axis, "inner": backend, **dict(options or {})})

    def timed(model):
        """Inputs are arguments, not closed-over constants (XLA would fold a 40 MB noise tensor into the program)."""
        run_model = jax.jit(lambda p, x, c, u, key, extras: sample(model, p, x, c, u, schedule=schedule, rng=key,
                                                                    model_kwargs={**extras, **static_extras}))
        inputs = (params, noise, text, negative, attention_rng, extras)
        with jax.set_mesh(device_mesh) if device_mesh is not None else contextlib.nullcontext():
            compiled = run_model.lower(*inputs).compile()
            start = time.perf_counter()
            latents, aux = jax.block_until_ready(compiled(*inputs))
        return np.asarray(latents), jax.device_get(aux), time.perf_counter() - start

    dense, _, dense_seconds = timed(with_attention(dense_backend))
    np.save(workdir / "latents_dense.npy", dense)
    results: dict[str, Any] = {"device": jax.devices()[0].device_kind, "dense_seconds": dense_seconds,
                               "mesh": None if device_mesh is None else mesh_lib.describe(device_mesh),
                               "sequence_axis": sequence_axis,
                               "latent_shape": list(latent_shape), "schedule": dataclasses.asdict(schedule)}
    for density in densities:
        options = {**dict(svg_options or {}), "density": float(density)}
        latents, aux, seconds = timed(with_attention("svg", options))
        key = f"d{density:g}"
        np.save(workdir / f"latents_svg_{key}.npy", latents)
        results[key] = {"seconds": seconds, "speedup": dense_seconds / seconds,
                        "relative_l2_to_dense": float(np.linalg.norm(latents - dense) / np.linalg.norm(dense)),
                        **_summary(aux)}
    (workdir / "metrics.json").write_text(json.dumps(results, indent=1))
    flat = {k: v for k, v in results.items() if isinstance(v, (int, float, str))}
    for density in densities:
        key = f"d{density:g}"
        flat.update({f"{name}_{key}": results[key][name] for name in ("speedup", "relative_l2_to_dense", "recall")})
    return GenerateResult(workdir=workdir, eval_results={"generate": flat})
