"""DiT-XL/2 training throughput and MFU on one GPU: jaxgen's DiT against diffusers' `DiTTransformer2DModel` in
PyTorch, the same model, loss and optimizer, in the same run on the same card.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/dit_train.py [--batch-sizes 32 64 128] [--profile DIR]
            (the PyTorch half needs diffusers: see experiments/bench/README.md for the wheels the GPU machine lacks)
            CPU smoke run of both halves (tiny model, float32, PyTorch eager):
            PYTHONPATH=. python3 experiments/bench/dit_train.py --tiny --out /tmp/dit_train.json
  hardware  one NVIDIA H100 80GB (any CUDA GPU runs; MFU needs its peak in PEAK_BF16_FLOPS); --tiny runs on CPU
  wall time aimed at under 6 min on an H100, compilation included (not yet measured); --tiny 30 s on 2 CPU cores
  expected  issue 19's goals: JAX >= 1.1x PyTorch's images/s and >= 45 % MFU (results: experiments/bench/README.md)

The model is DiT-XL/2 on 256 px images seen as 32x32x4 latents (256 tokens, width 1152, 28 blocks, 16 heads of 72,
1000 classes, learned sigma: 8 output channels), built from one diffusers-style config (`DIT_XL2`) on both sides:
`jaxgen.nn.dit.module_from_config` and `diffusers.DiTTransformer2DModel(**config)`. diffusers gives every block its
own copy of the timestep/class embedding, which the released checkpoints tie; the PyTorch model here ties them (one
module shared by all blocks), so both sides train the same 675 M parameters. Both keep float32 parameters and
optimizer state and compute in bf16 (JAX: `dtype=bfloat16` on the modules; PyTorch: autocast).

One training step on each side: draw t uniform in [0, 1000) and Gaussian noise, noise the latents with DDPM's linear
schedule, predict with the model, mean squared error of the first 4 output channels (the epsilon half) against the
noise in float32 (DiT's learned-sigma VLB term is left out: it is a few elementwise ops), gradients, AdamW (lr 1e-4,
betas 0.9/0.999, eps 1e-8, no weight decay, as DiT trains) and the parameter update.
  JAX:     `jaxgen.diffusion.ddpm.loss` + `optax.adamw` in one `jax.jit` with the state donated; cuDNN attention
           (`jaxgen.nn.attention` backend "cudnn"); the whole step compiled ahead of time. `--scan-unroll` and
           `--norm-implementation` (fused LayerNorm-modulate kernels) are recorded in the JSON.
  PyTorch: the loss (noising included) under `torch.compile` with static shapes (whole model by default, in
           torch's default mode; `--torch-compile blocks` compiles each transformer block instead, which compiles
           faster, and `--torch-compile-mode` picks another mode), `loss.backward()`, fused `torch.optim.AdamW`;
           attention is SDPA restricted to one kernel (`--torch-sdpa flash` by default; PyTorch also has `cudnn`).
Each framework runs in its own process, one after the other, so each has the whole GPU (JAX may take 92 % of it,
PyTorch's caching allocator the rest as it needs): the parent process imports neither.

Timing: per batch size, the first steps (compilation, autotuning, optimizer-state creation) are the warm-up; then
`--windows` windows of `--steps` back-to-back steps, synchronized only at each window's end so host dispatch overlaps
device work as in training. Step time = the median over windows of window time / steps; images/s = batch / step time.
Batch sizes run in increasing order; the first that does not fit in memory ends the list, noted in the results.

MFU = model FLOPs per second / the card's dense bf16 peak (989 TFLOP/s on H100 SXM and H200). Model FLOPs are
counted analytically, two per multiply-add, for the matrix products only (norms, activations and the optimizer are
not counted), with training = 3 x forward (the backward pass does two products for each forward one). Per image,
with N tokens, width D, depth L, MLP width 4D, patch p, C_in/C_out channels and a 256-wide timestep sinusoid:
    forward = L * (N * (24 D^2 + 4 N D) + 12 D^2) + 2 N p^2 (C_in + C_out) D + 2 (256 D + D^2) + 4 D^2
  24 D^2 per token and block: qkv 6 D^2, attention output 2 D^2, MLP 16 D^2; 4 N D: q k^T and attention x v;
  12 D^2 per image and block: the adaLN modulation; then patch embedding and output projection per token, the
  timestep MLP and the final adaLN per image. DiT-XL/2: 237.2 GFLOP forward, 711.7 GFLOP per trained image.
  Rematerialization (`--remat`) adds work but no model FLOPs: MFU stays comparable.

`--profile DIR` traces `--profile-steps` steps at the largest batch size that runs and writes, flat in DIR (so the
files come back from the device machine's $OUT): jax_b{B}.xplane.pb (open in TensorBoard/XProf), jax_b{B}_kernels.txt
and torch_b{B}_kernels.txt (GPU time per step by kernel: matmul, attention, the rest), torch_b{B}.trace.json.gz.

Results: JSON at --out (default $OUT/dit_train.json when OUT is set, else dit_train.json beside this script; --tiny
writes only with --out), a markdown table on stdout. The JAX half imports jax, flax, optax and jaxgen.nn /
jaxgen.diffusion (no gin, no TFDS); the PyTorch half torch and diffusers.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# DiT-XL/2 at 256 px as diffusers configures it (facebook/DiT-XL-2-256's config.json, which jaxgen reads too).
DIT_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
               sample_size=32, patch_size=2, num_embeds_ada_norm=1000, activation_fn="gelu-approximate",
               norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-5, attention_bias=True)
# The CPU smoke model: every code path of the real one, at a size 2 cores run in seconds.
DIT_TINY = {**DIT_XL2, "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "sample_size": 8,
            "num_embeds_ada_norm": 10}

TIMESTEP_FREQUENCIES = 256  # width of the timestep sinusoid fed to the timestep MLP (diffusers' and ours)
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02  # DDPM's linear schedule, as DiT trains
ADAMW = dict(learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)

# Dense bf16 tensor-core peak by device name (first match wins, so the PCIe and NVL parts come before plain "H100").
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12))

GOAL_SPEEDUP, GOAL_MFU = 1.1, 0.45


def forward_flops_per_image(config: dict[str, Any]) -> float:
    """Matrix-product FLOPs of one forward pass over one image (the formula in the module docstring)."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = (config["sample_size"] // config["patch_size"]) ** 2
    per_token_per_block = 24 * width**2 + 4 * tokens * width
    per_image_per_block = 12 * width**2
    patches = 2 * tokens * config["patch_size"] ** 2 * (config["in_channels"] + config["out_channels"]) * width
    conditioning = 2 * (TIMESTEP_FREQUENCIES * width + width**2) + 4 * width**2
    return config["num_layers"] * (tokens * per_token_per_block + per_image_per_block) + patches + conditioning


def peak_flops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def measure(step: Callable[[], Any], wait: Callable[[Any], None], *, warmup: int, windows: int,
            steps: int) -> dict[str, Any]:
    """Warm-up steps, then `windows` windows of `steps` back-to-back steps each, waited on at the window's end.

    `step()` launches one training step and returns something `wait` blocks on until the device is done."""
    start = time.perf_counter()
    for _ in range(warmup):
        out = step()
    wait(out)
    warmup_s = time.perf_counter() - start
    per_step = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            out = step()
        wait(out)
        per_step.append((time.perf_counter() - start) / steps)
    return {"warmup_s": warmup_s, "step_s": statistics.median(per_step), "step_s_windows": per_step, "last": out}


def throughput_row(batch: int, timing: dict[str, Any], flops_per_image: float, peak: float | None) -> dict:
    images_per_s = batch / timing["step_s"]
    model_flops = 3 * flops_per_image * images_per_s
    return {"batch": batch, "warmup_s": timing["warmup_s"], "step_ms": 1e3 * timing["step_s"],
            "step_ms_windows": [1e3 * s for s in timing["step_s_windows"]], "images_per_s": images_per_s,
            "model_tflops": model_flops / 1e12, "mfu": model_flops / peak if peak else None}


# One clock for the parent and its child processes, so the log reads as one timeline of the whole run.
STARTED = float(os.environ.get("DIT_TRAIN_STARTED", time.time()))


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:7.1f} s] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Profiles: GPU time per step by kernel, grouped into what the MFU depends on
# ---------------------------------------------------------------------------------------------------------------------

# Kernel name patterns, first match wins: Inductor names its elementwise and reduction kernels after the operators
# they fuse ("triton_poi_fused_..._flash_attention_backward_0" is a copy, not attention), and cuDNN's attention
# kernels carry GEMM-like words, so those two are told apart before matmuls.
KERNEL_KINDS = (("other", re.compile(r"^triton_(poi|red|per)_")),
                ("attention", re.compile(r"fmha|flash|sdpa|attention|attn", re.I)),
                ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|matmul|cublas", re.I)))


def kernel_summary(kernels: Sequence[tuple[str, float, int]], steps: int, step_ms: float) -> str:
    """A table of `(name, total µs, calls)` over `steps` profiled steps: per step, by kind and by kernel."""
    if not kernels:
        return "no kernels recorded\n"
    total_ms = sum(us for _, us, _ in kernels) / 1e3 / steps
    by_kind = collections.Counter()
    for name, us, _ in kernels:
        kind = next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "other")
        by_kind[kind] += us / 1e3 / steps
    lines = [f"kernel time per step {total_ms:.2f} ms; measured step {step_ms:.2f} ms "
             f"({100 * total_ms / step_ms:.1f} % of it busy)", "", "kind       ms/step   % of kernel time"]
    lines += [f"{kind:<10} {ms:8.2f}   {100 * ms / total_ms:5.1f}" for kind, ms in by_kind.most_common()]
    lines += ["", "ms/step  % kernel  calls/step  kernel"]
    for name, us, calls in sorted(kernels, key=lambda row: -row[1])[:40]:
        ms = us / 1e3 / steps
        lines.append(f"{ms:7.3f}  {100 * ms / total_ms:7.2f}  {calls / steps:10.1f}  {name[:160]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# JAX: jaxgen.nn.dit.DiT, jaxgen.diffusion.ddpm.loss, optax.adamw
# ---------------------------------------------------------------------------------------------------------------------

def jax_benchmark(args, config: dict[str, Any], save: Callable[[dict], None]) -> None:
    # JAX claims 75 % of the GPU at its first use by default; alone in its process it may take nearly all of it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jaxgen.diffusion import ddpm
    from jaxgen.nn import dit

    device = jax.devices()[0]
    on_gpu = jax.default_backend() == "gpu"
    log(f"JAX {jax.__version__} on {device.device_kind} ({jax.default_backend()})")
    model = dit.module_from_config(config, dtype=jnp.dtype(args.compute_dtype), remat=args.remat,
                                   scan_unroll=args.scan_unroll, norm_implementation=args.norm_implementation,
                                   attention_backend=args.jax_attention or ("cudnn" if on_gpu else "dense"))
    schedule = ddpm.linear_schedule(NUM_TRAIN_TIMESTEPS, BETA_START, BETA_END)
    optimizer = optax.adamw(**ADAMW)
    size, channels = config["sample_size"], config["in_channels"]

    @jax.jit
    def init_state(key):
        example = (jnp.zeros((1, size, size, channels)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
        params = nn.unbox(model.init(key, *example))["params"]
        return params, optimizer.init(params), jnp.zeros((), jnp.int32)

    def train_step(state, latents, labels):
        params, opt_state, step = state
        rng = jax.random.fold_in(jax.random.key(1), step)

        def loss_fn(params):
            def predict_noise(x_t, t, y):  # the epsilon half of the learned-sigma output
                return model.apply({"params": params}, x_t, t, y)[..., :channels]
            return ddpm.loss(predict_noise, schedule, rng, latents, labels, prediction="epsilon")

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, step + 1), loss

    train_step = jax.jit(train_step, donate_argnums=0)
    state = init_state(jax.random.key(0))
    num_params = sum(leaf.size for leaf in jax.tree.leaves(state[0]))
    log(f"JAX model: {num_params / 1e6:.1f} M parameters, attention backend {model.attention_backend!r}, scan "
        f"unroll {model.scan_unroll}, norm-modulate {model.norm_implementation!r}")
    flops, peak = forward_flops_per_image(config), peak_flops(device.device_kind)
    result = {"framework": "jax", "device": device.device_kind, "versions": {"jax": jax.__version__, "flax":
              flax.__version__, "optax": optax.__version__}, "parameters": num_params,
              "attention": model.attention_backend, "scan_unroll": model.scan_unroll,
              "norm_implementation": model.norm_implementation, "rows": []}

    def runner(compiled, latents, labels):
        """`(step, wait)` for `measure`: the compiled step over this batch, advancing the one training state."""
        def step():
            nonlocal state
            state, loss = compiled(state, latents, labels)
            return loss

        def wait(loss):
            jax.block_until_ready((state, loss))
        return step, wait

    largest_run = None
    for batch in args.batch_sizes:
        data_key = jax.random.key(batch)
        latents = jax.random.normal(data_key, (batch, size, size, channels))
        labels = jax.random.randint(jax.random.fold_in(data_key, 1), (batch,), 0, config["num_embeds_ada_norm"])
        try:
            compile_start = time.perf_counter()
            compiled = train_step.lower(state, latents, labels).compile()
            compile_s = time.perf_counter() - compile_start
            shortfall = _jax_memory_shortfall(compiled, device)
            if not shortfall:
                step, wait = runner(compiled, latents, labels)
                timing = measure(step, wait, warmup=args.warmup, windows=args.windows, steps=args.steps)
        except jax.errors.JaxRuntimeError as error:
            if "RESOURCE_EXHAUSTED" not in str(error):
                raise
            shortfall = f"out of memory: {str(error)[:300]}"
            if any(leaf.is_deleted() for leaf in jax.tree.leaves(state)):  # donated to the step that failed
                state = init_state(jax.random.key(0))
        if shortfall:
            result["rows"].append({"batch": batch, "skipped": shortfall})
            save(result)
            log(f"JAX batch {batch}: skipped, {shortfall}; larger batches are skipped too")
            break
        row = {**throughput_row(batch, timing, flops, peak), "compile_s": compile_s,
               "loss": float(timing["last"]), "peak_memory_gib": _jax_peak_memory_gib(device)}
        result["rows"].append(row)
        save(result)
        largest_run = (step, wait, batch, row["step_ms"])
        log(f"JAX batch {batch}: compile {compile_s:.1f} s, warm-up {row['warmup_s']:.1f} s, "
            f"{row['step_ms']:.1f} ms/step, {row['images_per_s']:.1f} img/s, MFU {_percent(row['mfu'])}, "
            f"loss {row['loss']:.4f}")
    if args.profile and largest_run:
        _jax_profile(*largest_run, args)
        log(f"JAX batch {largest_run[2]}: profile written to {args.profile}")


def _jax_memory_shortfall(compiled, device) -> str | None:
    """Why the compiled step will not fit beside the live state, or None (also where the backend cannot say)."""
    analysis, stats = compiled.memory_analysis(), device.memory_stats()
    if analysis is None or not stats or "bytes_limit" not in stats:
        return None
    needed = analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return f"needs {needed / 2**30:.1f} GiB beyond its inputs, {free / 2**30:.1f} GiB free" if needed > free else None


def _jax_peak_memory_gib(device) -> float | None:
    stats = device.memory_stats()
    return stats["peak_bytes_in_use"] / 2**30 if stats and "peak_bytes_in_use" in stats else None


def _jax_profile(step, wait, batch: int, step_ms: float, args) -> None:
    """Traces `--profile-steps` steps; keeps the .xplane.pb flat in the profile folder and sums its GPU kernels."""
    import jax

    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.profile_steps):
                out = step()
            wait(out)
        xplane = next(Path(trace_dir).rglob("*.xplane.pb"))
        shutil.copyfile(xplane, out_dir / f"jax_b{batch}.xplane.pb")
        data = jax.profiler.ProfileData.from_file(str(xplane))
    # GPU planes hold one line per CUDA stream ("Stream #..."), beside lines of XLA modules and ops that span the
    # same time; summing only the stream lines counts every kernel once.
    totals, calls, line_names = collections.Counter(), collections.Counter(), []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            line_names.append(f"{plane.name} / {line.name}")
            if line.name.startswith("Stream"):
                for event in line.events:
                    totals[event.name] += event.duration_ns / 1e3
                    calls[event.name] += 1
    if totals:
        text = kernel_summary([(name, us, calls[name]) for name, us in totals.items()], args.profile_steps, step_ms)
    else:
        text = "no GPU stream lines in the trace; lines seen:\n" + "\n".join(line_names or ["(none)"]) + "\n"
    (out_dir / f"jax_b{batch}_kernels.txt").write_text(text)


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch: diffusers DiTTransformer2DModel, torch.compile, fused AdamW
# ---------------------------------------------------------------------------------------------------------------------

def torch_benchmark(args, config: dict[str, Any], save: Callable[[dict], None]) -> None:
    import diffusers
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa_backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                     "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    device_name = torch.cuda.get_device_name() if on_gpu else "cpu"
    log(f"PyTorch {torch.__version__}, diffusers {diffusers.__version__} on {device_name}")
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(**config).to(device).train()
    shared_embedding = model.transformer_blocks[0].norm1.emb  # tie the per-block copies (module docstring)
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = shared_embedding
    if args.remat:
        model.enable_gradient_checkpointing()
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=ADAMW["learning_rate"], betas=(ADAMW["b1"], ADAMW["b2"]),
                                  eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"], fused=on_gpu)
    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
    alphas_cumprod = torch.cumprod(1 - betas, 0).to(device)
    compute_dtype = getattr(torch, args.compute_dtype)
    channels, size = config["in_channels"], config["sample_size"]

    def ddpm_loss(latents, labels):
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (latents.shape[0],), device=device)
        noise = torch.randn_like(latents)
        alpha_bar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        with torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
            prediction = model(x_t, timestep=t, class_labels=labels, return_dict=False)[0]
        return F.mse_loss(prediction[:, :channels].float(), noise)

    loss_fn = ddpm_loss
    if args.torch_compile == "model":
        loss_fn = torch.compile(ddpm_loss, dynamic=False, mode=args.torch_compile_mode)
    elif args.torch_compile == "blocks":
        for block in model.transformer_blocks:
            block.compile(dynamic=False, mode=args.torch_compile_mode)
    log(f"PyTorch model: {num_params / 1e6:.1f} M parameters, torch.compile {args.torch_compile} "
        f"(mode {args.torch_compile_mode or 'default'}), SDPA {args.torch_sdpa}")
    flops, peak = forward_flops_per_image(config), peak_flops(device_name)
    result = {"framework": "torch", "device": device_name, "versions": {"torch": torch.__version__,
              "diffusers": diffusers.__version__}, "parameters": num_params, "attention": f"sdpa {args.torch_sdpa}",
              "torch_compile": args.torch_compile, "torch_compile_mode": args.torch_compile_mode, "rows": []}

    def runner(latents, labels):
        """`(step, wait)` for `measure`: forward, backward and optimizer step over this batch."""
        def step():
            with sdpa_kernel(sdpa_backends[args.torch_sdpa]):
                loss = loss_fn(latents, labels)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        def wait(loss):
            if on_gpu:
                torch.cuda.synchronize()
        return step, wait

    largest_run = None
    for batch in args.batch_sizes:
        generator = torch.Generator(device).manual_seed(batch)
        latents = torch.randn(batch, channels, size, size, device=device, generator=generator)
        labels = torch.randint(0, config["num_embeds_ada_norm"], (batch,), device=device, generator=generator)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        step, wait = runner(latents, labels)
        try:
            timing = measure(step, wait, warmup=args.warmup, windows=args.windows, steps=args.steps)
            out_of_memory = None
        except torch.OutOfMemoryError as error:
            out_of_memory = f"out of memory: {str(error)[:300]}"
        if out_of_memory:  # outside the except block, whose traceback still holds the failed step's tensors
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            result["rows"].append({"batch": batch, "skipped": out_of_memory})
            save(result)
            log(f"PyTorch batch {batch}: skipped, {out_of_memory}; larger batches are skipped too")
            break
        row = {**throughput_row(batch, timing, flops, peak), "loss": timing["last"].item(),
               "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None}
        result["rows"].append(row)
        save(result)
        largest_run = (step, wait, batch, row["step_ms"])
        log(f"PyTorch batch {batch}: warm-up (compile included) {row['warmup_s']:.1f} s, {row['step_ms']:.1f} "
            f"ms/step, {row['images_per_s']:.1f} img/s, MFU {_percent(row['mfu'])}, loss {row['loss']:.4f}")
    if args.profile and largest_run:
        _torch_profile(*largest_run, args, on_gpu)
        log(f"PyTorch batch {largest_run[2]}: profile written to {args.profile}")


def _torch_profile(step, wait, batch: int, step_ms: float, args, on_gpu: bool) -> None:
    """Profiles `--profile-steps` steps: kernel summary plus PyTorch's own table, and the Chrome trace."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as profiler:
        for _ in range(args.profile_steps):
            out = step()
        wait(out)
    events = profiler.key_averages()
    if on_gpu:
        kernels = [(e.key, e.self_device_time_total, e.count) for e in events
                   if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    else:  # no kernels on CPU: its operators' own times stand in, so the smoke run covers this code
        kernels = [(e.key, e.self_cpu_time_total, e.count) for e in events if e.self_cpu_time_total > 0]
    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    text = kernel_summary(kernels, args.profile_steps, step_ms) + "\n" + events.table(sort_by=sort_by, row_limit=40)
    (out_dir / f"torch_b{batch}_kernels.txt").write_text(text)
    profiler.export_chrome_trace(str(out_dir / f"torch_b{batch}.trace.json.gz"))


# ---------------------------------------------------------------------------------------------------------------------
# The run: one process per framework, then the comparison
# ---------------------------------------------------------------------------------------------------------------------

BENCHMARKS = {"jax": jax_benchmark, "torch": torch_benchmark}


def compare(results: dict[str, dict]) -> dict[str, Any]:
    """JAX against PyTorch at each batch size both ran, best against best, and issue 19's goals."""
    rows = {name: {r["batch"]: r for r in result["rows"] if "skipped" not in r} for name, result in results.items()}
    comparison: dict[str, Any] = {}
    if rows.get("jax") and rows.get("torch"):
        common = sorted(set(rows["jax"]) & set(rows["torch"]))
        comparison["speedup_at_batch"] = {b: rows["jax"][b]["images_per_s"] / rows["torch"][b]["images_per_s"]
                                          for b in common}
        best = {name: max(r.values(), key=lambda row: row["images_per_s"]) for name, r in rows.items()}
        speedup = best["jax"]["images_per_s"] / best["torch"]["images_per_s"]
        comparison["best"] = {name: {"batch": row["batch"], "images_per_s": row["images_per_s"], "mfu": row["mfu"]}
                              for name, row in best.items()}
        comparison["goals"] = {"speedup": {"value": speedup, "goal": GOAL_SPEEDUP, "met": speedup >= GOAL_SPEEDUP}}
    jax_mfus = [row["mfu"] for row in rows.get("jax", {}).values() if row["mfu"] is not None]
    if jax_mfus:  # none where the device has no known peak (CPU)
        comparison.setdefault("goals", {})["mfu"] = {"value": max(jax_mfus), "goal": GOAL_MFU,
                                                     "met": max(jax_mfus) >= GOAL_MFU}
    return comparison


def print_table(results: dict[str, dict], comparison: dict[str, Any]) -> None:
    names = {"jax": "JAX", "torch": "PyTorch"}
    batches = sorted({r["batch"] for result in results.values() for r in result["rows"]})
    header = ["batch"] + [f"{names[n]} {col}" for n in results for col in ("ms/step", "img/s", "MFU")]
    print("\n| " + " | ".join(header + ["JAX / PyTorch"]) + " |")
    print("|" + " --- |" * (len(header) + 1))
    for batch in batches:
        cells = [str(batch)]
        for result in results.values():
            row = next((r for r in result["rows"] if r["batch"] == batch), None)
            if row is None or "skipped" in row:
                cells += ["skipped" if row else "-", "", ""]
            else:
                cells += [f"{row['step_ms']:.1f}", f"{row['images_per_s']:.1f}", _percent(row["mfu"])]
        speedup = comparison.get("speedup_at_batch", {}).get(batch)
        print("| " + " | ".join(cells + [f"{speedup:.2f}x" if speedup else "-"]) + " |")
    for name, goal in comparison.get("goals", {}).items():
        value = f"{goal['value']:.2f}x" if name == "speedup" else _percent(goal["value"])
        print(f"goal {name}: {value} (goal >= {goal['goal']}): {'met' if goal['met'] else 'MISSED'}")


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f} %"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=["both", *BENCHMARKS], default="both",
                        help="both: each framework in its own process, then the comparison")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="per step; default 32 64 128 (--tiny: 2 4)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing (the first compiles)")
    parser.add_argument("--windows", type=int, default=5, help="timed windows; the step time is their median")
    parser.add_argument("--steps", type=int, default=5, help="back-to-back steps per timed window")
    parser.add_argument("--compute-dtype", choices=["bfloat16", "float32"],
                        help="default bfloat16 (--tiny: float32)")
    parser.add_argument("--remat", action="store_true", help="rematerialize each block in the backward pass")
    parser.add_argument("--scan-unroll", type=int, default=1,
                        help="JAX: DiT blocks per iteration of the block scan (28 for DiT-XL/2: no loop, so no "
                             "stacking copies of saved activations and gradients; longer compile)")
    parser.add_argument("--norm-implementation", default="xla",
                        help="JAX: how the adaLN LayerNorm + modulation runs (jaxgen.nn.transformer.NORM_MODULATE): "
                             "xla (flax LayerNorm, XLA fusions) or pallas_gpu (pallas_kernels.norm_modulate's fused "
                             "kernels); pallas_gpu_interpret for a CPU check")
    parser.add_argument("--jax-attention", help="jaxgen.nn.attention backend (default: cudnn on GPU, else dense)")
    parser.add_argument("--torch-compile", choices=["model", "blocks", "off"],
                        help="what torch.compile compiles; default model (--tiny: off)")
    parser.add_argument("--torch-compile-mode", help="torch.compile's mode, e.g. max-autotune-no-cudagraphs "
                        "(default: torch's default mode)")
    parser.add_argument("--torch-sdpa", choices=["flash", "cudnn", "efficient", "math"], default="flash",
                        help="the one SDPA kernel PyTorch may use (on CPU only flash and math exist)")
    parser.add_argument("--profile", help="folder for traces and kernel summaries of the largest batch size")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU: the smoke run of both halves")
    parser.add_argument("--out", help="results JSON (see the module docstring for the default)")
    args = parser.parse_args(argv)
    args.batch_sizes = sorted(args.batch_sizes or ([2, 4] if args.tiny else [32, 64, 128]))
    args.compute_dtype = args.compute_dtype or ("float32" if args.tiny else "bfloat16")
    args.torch_compile = args.torch_compile or ("off" if args.tiny else "model")
    if args.out is None and not args.tiny:
        out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent
        args.out = str(out_dir / "dit_train.json")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    config = DIT_TINY if args.tiny else DIT_XL2

    if args.framework != "both":  # one framework (the parent's child process): its JSON to --out after every row
        def save(result: dict) -> None:
            if args.out:
                Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        BENCHMARKS[args.framework](args, config, save)
        return

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in BENCHMARKS:
            child_out = Path(tmp) / f"{name}.json"
            log(f"--- {name}, in its own process ---")
            # The last occurrence of an option wins in argparse, so the child keeps every other option as given.
            done = subprocess.run([sys.executable, __file__, *argv, "--framework", name, "--out", str(child_out)],
                                  env={**os.environ, "DIT_TRAIN_STARTED": str(STARTED)})
            results[name] = (json.loads(child_out.read_text()) if child_out.exists()
                             else {"framework": name, "rows": []})
            if done.returncode != 0:
                results[name]["error"] = f"exit code {done.returncode}"
                log(f"{name} failed (exit code {done.returncode}); the rows it finished are kept")
            report = {"date": datetime.date.today().isoformat(), "model": "DiT tiny" if args.tiny else "DiT-XL/2",
                      "config": config, "forward_gflops_per_image": forward_flops_per_image(config) / 1e9,
                      "train_gflops_per_image": 3 * forward_flops_per_image(config) / 1e9,
                      "compute_dtype": args.compute_dtype, "remat": args.remat,
                      "scan_unroll": args.scan_unroll, "norm_implementation": args.norm_implementation,
                      "timing": {"warmup_steps": args.warmup, "windows": args.windows, "steps_per_window": args.steps},
                      "wall_s": time.time() - STARTED, **results, **compare(results)}
            if args.out:  # after each framework, so a run cut short keeps what it measured
                Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, compare(results))
    log(f"done; results in {args.out or '(not written: --tiny without --out)'}")
    if any("error" in result for result in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
