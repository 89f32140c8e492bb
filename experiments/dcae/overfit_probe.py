"""Can a DC-AE configuration fit one fixed batch, and how fast, with and without the residual shortcuts?

A diagnostic for the CPU-sized f32c32 runs that stay on the mean-image plateau (experiments/dcae/README.md): if the
model cannot fit eight images, the model or its loss is broken; if it can, the plateau is about generalisation and
training length. The same eight `dcae_textures/64` training images every step, the phase-1 loss (L1 + 1 - SSIM),
AdamW at a constant learning rate; prints the batch PSNR at a few steps and writes them as JSON.

    PYTHONPATH=. python3 experiments/dcae/overfit_probe.py --seeds 0 1 2 --out experiments/dcae/overfit_f32c32_cpu.json

Imports jax, optax and jaxgen only; needs the prepared dcae_textures/64 (`jaxgen data prepare dcae_textures/64`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.data import sources
from jaxgen.projects.dcae import model, task

REPORTED_STEPS = (1, 50, 100, 200, 300, 400, 600)


def fit_one_batch(config: str, shortcuts: bool, seed: int, *, dataset: str, batch_size: int, learning_rate: float,
                  steps: int, data_dir: str | None) -> dict[int, float]:
    """{step: batch PSNR} of `steps` AdamW steps on the first `batch_size` training images of `dataset`."""
    source = sources.source(dataset, "train", data_dir)
    batch = {"image": jnp.asarray(sources.read_batch(source, np.arange(batch_size))["image"])}
    autoencoder = task.AutoencoderTask(model.dcae(config, residual_shortcuts=shortcuts), "full")
    params = autoencoder.init(jax.random.key(seed), batch)["params"]
    optimizer = optax.adamw(learning_rate)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        loss_and_metrics = lambda p: autoencoder.loss({"params": p}, batch, None)[:2]  # noqa: E731
        (_, metrics), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, metrics["psnr"]

    psnr = {}
    for i in range(1, steps + 1):
        params, state, value = step(params, state)
        if i in REPORTED_STEPS or i == steps:
            psnr[i] = round(float(value), 3)
    return psnr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="f32c32_cpu")
    parser.add_argument("--dataset", default="dcae_textures/64")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        for shortcuts in (True, False):
            started = time.time()
            psnr = fit_one_batch(args.config, shortcuts, seed, dataset=args.dataset, batch_size=args.batch_size,
                                 learning_rate=args.learning_rate, steps=args.steps, data_dir=args.data_dir)
            runs.append(dict(seed=seed, residual_shortcuts=shortcuts, psnr_by_step=psnr,
                             seconds=round(time.time() - started, 1)))
            print(f"seed {seed} shortcuts {shortcuts}: " + ", ".join(f"{k}: {v:.2f}" for k, v in psnr.items()),
                  flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(dict(vars(args), runs=runs), indent=1) + "\n")


if __name__ == "__main__":
    main()
