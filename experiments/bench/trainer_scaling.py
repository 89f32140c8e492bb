"""Trainer benchmark: data-parallel scaling of a DiT-B/2-sized model on 1 vs 2 GPUs, and the shared trainer's
overhead against a bare jitted loop on the same model, batch and optimizer — all in one process, on one machine.

    PYTHONPATH=. python3 experiments/bench/trainer_scaling.py [--steps 60] [--per-device-batch 64] [--out FILE]

Weak scaling: the per-device batch is fixed, so 2 GPUs process twice the images per step; the scaling figure is
images/s on N devices over images/s on 1. Overhead: the trainer (host data loading through `Loader`, prefetch,
per-step metric fetch and NaN check, progress bookkeeping) against a loop over one pre-loaded device batch.
Needs no gin, TFDS or jraph, so it runs on the lent GPU machines as they are.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import train
from jaxgen.core import mesh as mesh_lib
from jaxgen.core import metrics as metrics_lib
from jaxgen.core import sharding as sharding_lib
from jaxgen.core.optim import OptimizerConfig, TrainState
from jaxgen.data import ArraySource, Loader
from jaxgen.nn.dit import DiT


def dit_b2() -> DiT:
    """DiT-B/2 on 32x32x4 latents: 256 tokens, width 768, depth 12, 12 heads (~130 M parameters), bf16 compute,
    cuDNN attention on GPU. `jaxgen.nn.dit.DiT` builds its blocks as one `nn.scan`: unrolled, the sharded init alone
    took over 3.5 minutes to compile on an H100 with jax 0.11.2 (2026-11-26), which ran the first attempt out of time.
    """
    return DiT(num_classes=1000, width=768, depth=12, num_heads=12, patch_size=2, in_channels=4, dtype=jnp.bfloat16,
               attention_backend="cudnn" if jax.default_backend() == "gpu" else "dense")


class FlowMatchingTask:
    """Rectified-flow loss: predict the velocity (noise - x0) at a uniform time t."""

    partition_rules = ()

    def __init__(self):
        self.model = dit_b2()

    def init(self, rng, batch):
        return self.model.init(rng, batch["latents"], jnp.zeros(batch["latents"].shape[0]), batch["label"])

    def loss(self, variables, batch, rng):
        x0 = batch["latents"]
        t_rng, noise_rng = jax.random.split(rng)
        t = jax.random.uniform(t_rng, (x0.shape[0],))
        noise = jax.random.normal(noise_rng, x0.shape)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        prediction = self.model.apply(variables, xt, 1000 * t, batch["label"])  # DiT counts timesteps as DDPM does
        return jnp.mean((prediction.astype(jnp.float32) - (noise - x0)) ** 2), {}

    def evaluators(self):
        return {}


def latent_source(n: int) -> ArraySource:
    rng = np.random.default_rng(0)
    return ArraySource({"latents": rng.normal(size=(n, 32, 32, 4)).astype(np.float32),
                        "label": rng.integers(0, 1000, n).astype(np.int32)})


OPTIMIZER = OptimizerConfig(name="adamw", learning_rate=1e-4, schedule="constant", clip_grad_norm=1.0)


def bare_loop(task, devices: int, batch_size: int, steps: int) -> float:
    """Steps/s of a plain jitted, donated update over one pre-loaded global batch (no data, no bookkeeping)."""
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=-1, num_devices=devices))
    batch = sharding_lib.to_global(Loader(latent_source(batch_size), batch_size).batch(0), mesh, batch_size)
    tx = OPTIMIZER.build(steps)
    replicated = sharding_lib.replicated(mesh)
    state = jax.jit(lambda: TrainState.create(nn.unbox(task.init(jax.random.key(0), batch)), tx),
                    out_shardings=replicated)()

    def update(state, batch):
        rng = jax.random.fold_in(jax.random.key(1), state.step)
        (loss, _), grads = jax.value_and_grad(
            lambda p: task.loss({"params": p}, batch, rng), has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss

    step = jax.jit(update, donate_argnums=0)
    for _ in range(3):
        state, loss = step(state, batch)
    loss.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        state, loss = step(state, batch)
    loss.block_until_ready()
    return steps / (time.perf_counter() - start)


def trainer_loop(task, devices: int, batch_size: int, steps: int, workdir: Path) -> float:
    """Steady-state steps/s of `jaxgen.train.run` (mean over logged intervals after the first, which compiles)."""
    log_every = 10
    train.run(task=task, workdir=workdir, train_data=Loader(latent_source(4 * batch_size), batch_size),
              train_steps=steps + log_every, optimizer=OPTIMIZER, log_every=log_every,
              checkpoint_every=10 * steps, eval_every=0, progress=False,
              mesh=mesh_lib.MeshConfig(data=-1, num_devices=devices))
    rates = [r["steps_per_sec"] for r in metrics_lib.read_records(workdir) if "steps_per_sec" in r][1:]
    rates = rates[:-1] if len(rates) > 2 else rates  # the last interval includes the final checkpoint's start
    return len(rates) / sum(1 / r for r in rates)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--per-device-batch", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()

    device_kind = jax.devices()[0].device_kind
    print(f"device: {jax.device_count()} x {device_kind}, jax {jax.__version__}")
    task = FlowMatchingTask()
    results = {"device": device_kind, "device_count": jax.device_count(), "jax": jax.__version__,
               "date": datetime.date.today().isoformat(),
               "model": "DiT-B/2 (latent 32x32x4, 256 tokens), jaxgen.nn.dit, bf16 compute",
               "per_device_batch": args.per_device_batch, "steps": args.steps, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for devices in sorted({1, jax.device_count()}):
            batch = args.per_device_batch * devices
            bare = bare_loop(task, devices, batch, args.steps)
            trainer = trainer_loop(task, devices, batch, args.steps, Path(tmp) / f"run{devices}")
            row = {"devices": devices, "global_batch": batch, "bare_steps_per_sec": bare,
                   "trainer_steps_per_sec": trainer, "bare_images_per_sec": bare * batch,
                   "trainer_images_per_sec": trainer * batch, "trainer_overhead": bare / trainer - 1}
            results["runs"].append(row)
            print(json.dumps(row))
    one, many = results["runs"][0], results["runs"][-1]
    results["scaling_trainer"] = many["trainer_images_per_sec"] / one["trainer_images_per_sec"]
    results["scaling_bare"] = many["bare_images_per_sec"] / one["bare_images_per_sec"]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("\n| devices | global batch | bare loop img/s | trainer img/s | trainer overhead |")
    print("| --- | --- | --- | --- | --- |")
    for r in results["runs"]:
        print(f"| {r['devices']} | {r['global_batch']} | {r['bare_images_per_sec']:.0f} | "
              f"{r['trainer_images_per_sec']:.0f} | {100 * r['trainer_overhead']:+.1f} % |")
    print(f"scaling {many['devices']} vs 1 device: trainer {results['scaling_trainer']:.2f}x, "
          f"bare {results['scaling_bare']:.2f}x")


if __name__ == "__main__":
    main()
