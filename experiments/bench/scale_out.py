"""Scale-out on the GPUs of one host (or a pod): sequence-parallel video denoising steps and FSDP DiT training, each
against one GPU in the same run.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/scale_out.py [--devices 1 4 8] [--parts video dit]
            [--models wan-14B hunyuan-13B] [--resolution 720p|480p (Wan)] [--density 0.25]
            [--weights fsdp|replicated] [--per-device-batch 32] [--out DIR]
            multi-host pod, one process per host (SLURM, TPU-style launchers: jax.distributed auto-detection):
            PYTHONPATH=. python3 experiments/bench/scale_out.py --multihost --devices 1 8 16 32
            CPU run (4 forced host devices, tiny Wan, HunyuanVideo and DiT, Pallas interpret):
            PYTHONPATH=. python3 experiments/bench/scale_out.py --quick --out /tmp/scale_out
  hardware  one host with 4 or 8 NVIDIA H100 80GB (NVLink); --quick: CPU
  wall time not measured (no multi-GPU machine lent yet); estimated 5-8 min per video model at 720p with 1, 4 and 8
            GPUs, most of it the one-GPU baseline (a dense step of either model is ~20 s there) and compilation;
            Wan at --resolution 480p is ~3x quicker
  expected  not measured. Issue 28's goals: video step >= 3.5x on 4 GPUs and >= 6.5x on 8 over one GPU (dense and
            SVG at density 0.25); DiT-XL/2 training images/s >= 0.9 x N times one GPU's.

What runs, for each device count N (the first N devices; N = 1 first, the baseline):
  video   each model with random bf16 weights (the Flax ports of `jaxgen.projects.svg`) called once at timestep 500,
          shapes from svg_real.py's settings of the same name:
            wan-14B      guided batch 2 at 720p x 81 frames: latents [2, 21, 90, 160, 16], 75,600 tokens, no text in
                         self-attention (captions [2, 512, 4096] by cross-attention), 40 heads;
            hunyuan-13B  batch 1 (embedded guidance) at 720p x 129 frames: latents [1, 33, 90, 160, 16], 118,800 video
                         + 256 text tokens last = 119,056, 24 heads.
          Dense (cuDNN) and SVG at --density (64 profiled rows, the official settings per model, no dense warm-up: a
          sparse step). N = 1 runs the backends as one GPU does; N > 1 wraps the same backend in "ulysses"
          (`jaxgen.nn.sequence_parallel`: all-to-all over heads on mesh axis "fsdp", SVG's profiling and layout
          unchanged inside, HunyuanVideo's text kept whole), and Wan's caption cross-attention runs with its queries
          split (no exchange). Weights: --weights fsdp (default) splits them over the same axis by the logical-axis
          rules (Wan-14B: 28.6 GB -> 3.6 GB a GPU on 8), gathered layer by layer; "replicated" keeps a whole copy on
          every GPU. Reported: ms per step (median of --reps after a warm-up call), speed-up over N = 1, the relative
          L2 distance of the N-GPU output to the one-GPU output (bf16: about 1e-2 is agreement; a wrong exchange
          gives ~1), and what the compiled program exchanges (`collectives`: per kind, count, largest result and
          whether a whole-sequence activation is exchanged inside the blocks: under sequence parallelism none should
          be, all-gathers there carrying weights only).
  dit     DiT-XL/2 training (experiments/bench/dit_train.py's model, loss and AdamW: 256 tokens, 675 M parameters,
          float32 state, bf16 compute, cuDNN attention) with --per-device-batch images per GPU (weak scaling: global
          batch N x that), parameters, gradients and AdamW moments split over "fsdp" by the logical-axis rules.
          Reported: step time (median of windows of back-to-back steps after a warm-up), images/s, and scaling
          efficiency = images/s(N) / (N x images/s(1)).
Multi-host: with --multihost each process calls `jax.distributed.initialize()` first; device counts then range over
the pod (`jax.devices()` lists every process's, host by host), each process takes part in the meshes that hold one of
its devices, and process 0 writes the JSON. Relative errors need the whole output on one process and are left out
(null) for meshes that span processes.
Results: <out>/scale_out.json (<out>/scale_out_quick.json for --quick; --out defaults to $OUT, else this folder), a
table on stdout. Imports jax, flax, optax, numpy, jaxgen and this folder's dit_train.py and svg_real.py (no gin, no
tfds, no diffusers).
"""

from __future__ import annotations

import os
import sys

if "--quick" in sys.argv:  # must precede the first jax import: XLA fixes the host device count when it starts
    # (and XLA:CPU's code optimisation down: the tiny programs run for milliseconds but compile for seconds)
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
        " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
        " --xla_llvm_disable_expensive_passes=true")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dit_train  # noqa: E402
import svg_real  # noqa: E402

from jaxgen.core import mesh as mesh_lib  # noqa: E402
from jaxgen.core import sharding as sharding_lib  # noqa: E402
from jaxgen.diffusion import ddpm  # noqa: E402
from jaxgen.nn import attention as nn_attention  # noqa: E402
from jaxgen.nn import dit  # noqa: E402
from jaxgen.nn.sequence_parallel import ulysses_backend  # noqa: E402
from jaxgen.projects.svg import hunyuan, wan  # noqa: E402
from jaxgen.projects.svg.attention import MaskOptions  # noqa: E402

AXIS = "fsdp"  # the mesh axis that splits the sequence (video) and the parameters (both parts)
CAPTIONS_BACKEND = "ulysses_captions"  # cross-attention with split queries: registered in main() around dense/cuDNN


# The video models: their Flax ports; shapes, batch, layout, extra inputs and SVG settings come from svg_real.py's
# Setting of the same name (one place for a model's real shapes).
VIDEO_PORTS = {"wan-14B": wan, "hunyuan-13B": hunyuan}


def build_video_model(name: str, quick: bool) -> nn.Module:
    if quick:  # the tiny config with 4 heads, one per forced host device
        port = VIDEO_PORTS[name]
        return port.from_config({**port.CONFIGS["tiny"], "num_attention_heads": 4}, dtype=jnp.bfloat16)
    setting = svg_real.MODELS[name]
    return setting.build(setting.config, dtype=jnp.bfloat16)


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def sub_mesh(n: int):
    """The first n devices as a (data=1, fsdp=n, tensor=1) mesh, or None when this process holds none of them."""
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, fsdp=n, tensor=1, num_devices=n))
    mine = any(device.process_index == jax.process_index() for device in mesh.devices.flat)
    return mesh if mine else None


def on_device(make: Callable[[], Any], shardings) -> Any:
    """`make()` run as one jitted program straight into `shardings` (inputs and weights never sit whole on a host)."""
    return jax.jit(make, out_shardings=shardings)()


def random_weights(module: nn.Module, inputs: tuple, extras: dict, mesh, weights: str):
    """N(0, 1/fan_in) bf16 weights, the same values on every mesh (threefry draws do not depend on the sharding)."""
    boxed = jax.eval_shape(lambda key: module.init(key, *inputs, **extras), jax.random.key(0))
    if weights == "fsdp":
        shardings = sharding_lib.variable_shardings(boxed, mesh)
    else:
        shardings = jax.tree.map(lambda _: sharding_lib.replicated(mesh), nn.unbox(boxed))
    leaves, tree = jax.tree.flatten(nn.unbox(boxed))

    def make():
        key = jax.random.key(1)
        return tree.unflatten([
            jax.random.normal(jax.random.fold_in(key, i), leaf.shape, jnp.bfloat16)
            * jnp.bfloat16(1 / np.sqrt(leaf.shape[-2] if leaf.ndim >= 2 else leaf.shape[-1]))
            for i, leaf in enumerate(leaves)])

    return on_device(make, shardings)


COLLECTIVE = re.compile(r"= (.+?) (all-to-all|all-gather|all-reduce|reduce-scatter|collective-permute)(?:-start)?\(")
ARRAY_TYPE = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")  # "bf16[2,32,40,128]"


def _itemsize(hlo_dtype: str) -> int:
    """Bytes of an HLO element type: "bf16" -> 2, "f32" -> 4, "pred" -> 1."""
    return 1 if hlo_dtype == "pred" else max(1, int(re.search(r"\d+$", hlo_dtype).group()) // 8)


def collectives(compiled, sequence_lengths: tuple[int, ...]) -> dict[str, Any]:
    """What the compiled program exchanges, from its HLO: per kind the count of ops (a scan's body counts once), the
    largest result in bytes and whether a result inside the blocks (the scanned layers: HLO ops under a while body) has
    a whole sequence (one of `sequence_lengths`) as a dimension. Sequence parallelism is working when the all-to-alls
    carry q, k, v and the output and no collective in the blocks holds a whole-sequence activation (FSDP's weight
    gathers are expected, and so is one gather of the final output where the split does not fall on frame
    boundaries: it is `out_channels x patch` wide, a few per cent of an activation)."""
    summary: dict[str, Any] = {}
    for line in compiled.as_text().splitlines():
        match = COLLECTIVE.search(line)
        if not match:
            continue
        arrays = [(dtype, [int(d) for d in dims.split(",") if d]) for dtype, dims in ARRAY_TYPE.findall(match.group(1))]
        entry = summary.setdefault(match.group(2), {"count": 0, "largest_bytes": 0, "whole_sequence_in_blocks": False})
        entry["count"] += 1
        entry["largest_bytes"] = max(entry["largest_bytes"],
                                     sum(_itemsize(dtype) * int(np.prod(dims)) for dtype, dims in arrays))
        entry["whole_sequence_in_blocks"] |= "/while/body/" in line and any(
            length in dims for _, dims in arrays for length in sequence_lengths)
    return summary


def host_copy(x) -> np.ndarray | None:
    return np.asarray(x, np.float32) if x.is_fully_addressable else None


def video_part(args, name: str, counts: list[int], dense_backend: str) -> dict:
    setting = svg_real.MODELS[name]
    base = build_video_model(name, args.quick)
    resolution = next(iter(setting.latents)) if args.resolution not in setting.latents else args.resolution
    grid = setting.quick_latents if args.quick else setting.latents[resolution]
    text_len = 8 if args.quick else setting.text_len
    block = 16 if args.quick else 128
    svg_options = dict(density=args.density, num_sampled_rows=64, block_q=block, block_kv=block,
                       implementation="interpret" if args.quick else None,
                       mask_options=MaskOptions(sink_first_frame=setting.sink_first_frame))
    batch = setting.batch
    shapes = ((batch, *grid, base.in_channels), (batch, text_len, base.text_dim))
    layout = setting.layout(base, shapes[0], text_len)
    log(f"\n{name}: latents {shapes[0]}, {layout.seq_len} tokens ({layout.video_tokens} video), {base.num_layers} "
        f"layers x {base.num_heads} heads, weights {args.weights}")
    result = {"resolution": "quick" if args.quick else resolution, "latents": list(shapes[0]),
              "tokens": layout.seq_len, "video_tokens": layout.video_tokens, "width": base.width, "batch": batch,
              "text_len": text_len, "weights": args.weights, "density": args.density, "rows": []}
    reference = {}
    for n in counts:
        mesh = sub_mesh(n)
        if mesh is None:
            continue
        if base.num_heads % n or layout.video_tokens % n:
            result["rows"].append({"devices": n, "skipped": f"{base.num_heads} heads or {layout.video_tokens} video "
                                                            f"tokens do not split over {n} devices"})
            continue
        with jax.set_mesh(mesh):
            keys = jax.random.split(jax.random.key(0), 4)
            replicated = sharding_lib.replicated(mesh)
            latents = on_device(lambda: jax.random.normal(keys[0], shapes[0], jnp.bfloat16), replicated)
            text = on_device(lambda: jax.random.normal(keys[1], shapes[1], jnp.bfloat16), replicated)
            timestep = on_device(lambda: jnp.full((batch,), 500.0), replicated)
            extras = on_device(lambda: setting.extras(base, batch, keys[3]), replicated)
            params = random_weights(base, (latents, timestep, text), extras, mesh, args.weights)
            step_ms = {}
            for variant, inner, options in (("dense", dense_backend, {}), ("svg", "svg", svg_options)):
                if n == 1:
                    module = base.clone(attention_backend=inner, attention_options=options or None)
                    captions = dense_backend
                else:
                    module = base.clone(attention_backend="ulysses",
                                        attention_options={"axis": AXIS, "inner": inner, **options})
                    captions = CAPTIONS_BACKEND
                if hasattr(module, "cross_attention_backend"):  # Wan's caption cross-attention: never sparse
                    module = module.clone(cross_attention_backend=captions)

                def step(params, latents, timestep, text, extras, rng, module=module):
                    out, _ = module.apply(params, latents, timestep, text, rng=rng, mutable=["intermediates"],
                                          **extras)
                    return out

                inputs = (params, latents, timestep, text, extras, keys[2])
                compile_start = time.perf_counter()
                compiled = jax.jit(step).lower(*inputs).compile()
                compile_s = time.perf_counter() - compile_start
                ms, first_s, out = svg_real.median_ms(compiled, *inputs, reps=args.reps)
                row = {"devices": n, "variant": variant, "ms": ms, "compile_s": compile_s, "first_call_s": first_s,
                       "collectives": collectives(compiled, (layout.seq_len, layout.video_tokens))}
                output = host_copy(out)
                if n == 1:
                    reference[variant] = (ms, output)
                elif variant in reference:
                    base_ms, base_out = reference[variant]
                    row["speedup_vs_1"] = base_ms / ms
                    row["relative_l2_vs_1"] = (None if output is None or base_out is None
                                               else svg_real.rel_err(output, base_out))
                step_ms[variant] = ms
                if variant == "svg":
                    row["svg_speedup_vs_dense"] = step_ms["dense"] / ms
                result["rows"].append(row)
                gathered = row["collectives"].get("all-gather", {}).get("largest_bytes", 0)
                whole = [kind for kind, entry in row["collectives"].items() if entry["whole_sequence_in_blocks"]]
                warning = f", whole-sequence activations in the blocks: {whole}" if whole else ""
                log(f"  {n} device(s) {variant:5s}: {ms:10.1f} ms/step  (compile {compile_s:.1f} s, largest all-gather "
                    f"{gathered / 2**20:.1f} MiB{warning})"
                    + (f"  {row['speedup_vs_1']:.2f}x over 1, rel. L2 vs 1: {row['relative_l2_vs_1']}"
                       if "speedup_vs_1" in row else ""))
                del compiled, out
            del params, latents, text, extras
            gc.collect()
    return result


def dit_part(args, counts: list[int]) -> dict:
    config = dit_train.DIT_TINY if args.quick else dit_train.DIT_XL2
    on_gpu = jax.default_backend() == "gpu"
    model = dit.module_from_config(config, dtype=jnp.bfloat16, attention_backend="cudnn" if on_gpu else "dense")
    schedule = ddpm.linear_schedule(dit_train.NUM_TRAIN_TIMESTEPS, dit_train.BETA_START, dit_train.BETA_END)
    optimizer = optax.adamw(**dit_train.ADAMW)
    size, channels, classes = config["sample_size"], config["in_channels"], config["num_embeds_ada_norm"]
    per_device = args.per_device_batch
    flops = dit_train.forward_flops_per_image(config)
    log(f"\nDiT{' (tiny)' if args.quick else '-XL/2'} training: {per_device} images per device, FSDP over '{AXIS}'")
    result = {"config": "tiny" if args.quick else "DiT-XL/2", "per_device_batch": per_device, "rows": []}

    def init_state():
        example = (jnp.zeros((1, size, size, channels)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
        params = nn.unbox(model.init(jax.random.key(0), *example))["params"]
        return params, optimizer.init(params), jnp.zeros((), jnp.int32)

    def train_step(state, latents, labels):
        params, opt_state, step = state
        rng = jax.random.fold_in(jax.random.key(1), step)

        def loss_fn(params):
            def predict_noise(x_t, t, y):
                return model.apply({"params": params}, x_t, t, y)[..., :channels]
            return ddpm.loss(predict_noise, schedule, rng, latents, labels, prediction="epsilon")

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, step + 1), loss

    example = (jnp.zeros((1, size, size, channels)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    boxed = jax.eval_shape(model.init, jax.random.key(0), *example)
    baseline = None
    for n in counts:
        mesh = sub_mesh(n)
        if mesh is None:
            continue
        with jax.set_mesh(mesh):
            params_sharding = sharding_lib.variable_shardings(boxed, mesh)["params"]
            abstract = jax.eval_shape(init_state)
            replicated = sharding_lib.replicated(mesh)
            state_sharding = (params_sharding,
                              optax.tree_map_params(optimizer, lambda _, s: s, abstract[1], params_sharding,
                                                    transform_non_params=lambda _: replicated),
                              replicated)
            state = jax.jit(init_state, out_shardings=state_sharding)()
            batch = per_device * n
            batch_sharding = sharding_lib.batch_sharding(mesh)
            latents = on_device(lambda: jax.random.normal(jax.random.key(2), (batch, size, size, channels)),
                                batch_sharding)
            labels = on_device(lambda: jax.random.randint(jax.random.key(3), (batch,), 0, classes), batch_sharding)
            step_fn = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding, batch_sharding),
                              out_shardings=(state_sharding, replicated), donate_argnums=0)
            compile_start = time.perf_counter()
            compiled = step_fn.lower(state, latents, labels).compile()
            compile_s = time.perf_counter() - compile_start

            def step():
                nonlocal state
                state, loss = compiled(state, latents, labels)
                return loss

            timing = dit_train.measure(step, lambda loss: jax.block_until_ready((state, loss)), warmup=args.warmup,
                                       windows=args.windows, steps=args.steps)
            images_per_s = batch / timing["step_s"]
            row = {"devices": n, "global_batch": batch, "step_ms": 1e3 * timing["step_s"],
                   "images_per_s": images_per_s, "model_tflops_per_device": 3 * flops * images_per_s / n / 1e12,
                   "compile_s": compile_s, "loss": float(timing["last"])}
            if baseline is None:
                baseline = images_per_s
            row["scaling_efficiency"] = images_per_s / (n * baseline)
            result["rows"].append(row)
            log(f"  {n} device(s): {row['step_ms']:8.1f} ms/step, {images_per_s:8.1f} img/s, scaling efficiency "
                f"{row['scaling_efficiency']:.3f} (compile {compile_s:.1f} s)")
            del state, compiled
            gc.collect()
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", help="device counts (default: 1, 4, 8 and all, as present)")
    parser.add_argument("--parts", nargs="+", default=["video", "dit"], choices=["video", "dit"])
    parser.add_argument("--models", nargs="+", default=sorted(VIDEO_PORTS), choices=sorted(VIDEO_PORTS))
    parser.add_argument("--resolution", default="720p", help="Wan: 480p or 720p; HunyuanVideo runs 720p")
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--weights", default="fsdp", choices=["fsdp", "replicated"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--per-device-batch", type=int, default=None,
                        help="DiT images per device (default 32; 4 with --quick)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="CPU: 4 forced host devices, tiny models")
    parser.add_argument("--multihost", action="store_true", help="jax.distributed.initialize() first (one process "
                                                                  "per host)")
    parser.add_argument("--out", default=os.environ.get("OUT", os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.windows, args.steps = 1, 1, 1, 2
    if args.per_device_batch is None:
        args.per_device_batch = 4 if args.quick else 32
    if not 0.0 < args.density <= 1.0:
        parser.error(f"--density must be in (0, 1]; got {args.density}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.multihost:
        jax.distributed.initialize()
    total = jax.device_count()
    counts = sorted(set(args.devices or [n for n in (1, 4, 8, total) if n <= total]))
    if counts[0] != 1 or counts[-1] > total:
        sys.exit(f"--devices must start with the 1-device baseline and stay within the {total} devices present; "
                 f"got {counts}")
    device = jax.devices()[0]
    log(f"devices: {total} x {device.device_kind} ({device.platform}) over {jax.process_count()} process(es); "
        f"jax {jax.__version__}; counts {counts}")
    if not args.quick and device.platform != "gpu":
        sys.exit("the full-size run needs GPUs (cuDNN attention); use --quick for a CPU run")
    dense_backend = "dense" if args.quick else "cudnn"
    nn_attention.register_backend(CAPTIONS_BACKEND, functools.partial(ulysses_backend, axis=AXIS,
                                                                      inner=dense_backend))
    result = {"device": device.device_kind, "platform": device.platform, "devices": total,
              "processes": jax.process_count(), "device_counts": counts, "jax": jax.__version__,
              "date": time.strftime("%Y-%m-%d"), "quick": args.quick, "dense_backend": dense_backend,
              "resolution": "quick" if args.quick else args.resolution}
    path = os.path.join(args.out, f"scale_out{'_quick' if args.quick else ''}.json")

    def save():
        if jax.process_index() == 0:
            os.makedirs(args.out, exist_ok=True)
            with open(path, "w") as f:
                json.dump(result, f, indent=1)

    if "video" in args.parts:
        result["video"] = {}
        for name in args.models:
            result["video"][name] = video_part(args, name, counts, dense_backend)
            save()
    if "dit" in args.parts:
        result["dit"] = dit_part(args, counts)
        save()
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
