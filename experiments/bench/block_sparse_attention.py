"""Block-sparse attention vs cuDNN dense attention on one GPU, at video-diffusion sizes.

Recipe:
  command   PYTHONPATH=. python3 experiments/bench/block_sparse_attention.py [--quick] [--out DIR]
  hardware  one NVIDIA H100 80GB (JAX 0.11.2, CUDA 13); any GPU runs it, Mosaic GPU needs Hopper
  wall time about 5 min for the full run (--quick: about 2 min)
  expected  at density 1.0 the sparse kernel within 5 % of cuDNN; efficiency = density * T_cudnn / T_sparse near 0.9

What it does, in order: prints the device; checks the kernels against the jnp reference on a small shape (forward
and gradients, relative error); then per shape times cuDNN dense (forward, forward+backward) and the block-sparse op
at each density, with SVG-shaped masks (a band per head in frame-major or token-major order, plus the text rows and
columns, a different pattern per head) and band-only masks. Warm-up first, then the median of several reps, each
ended by block_until_ready. Results go to <out>/block_sparse_attention.json after every shape.

Imports only jax, numpy and pallas_kernels (no jaxgen, no gin). Peers: when `tokamax` imports, its Mosaic GPU
attention runs in the same process, dense and banded (`local_window_size=(w, w)`, w chosen so the band covers the
density's share of the map); on a machine without tokamax's dependency xprof, a stub module `xprof.cli.tools`
(defining `get_kernel_stats_tool`) suffices.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sparse_attention import block_sparse_attention
from pallas_kernels.block_sparse_attention import block_sparse_attention_reference
from pallas_kernels.block_sparse_attention import make_mask_info

BLOCK = 128

# name: (batch, seq, heads, head_dim, tokens per latent frame, text tokens, text first?)
SHAPES = {
    "HunyuanVideo": (1, 119_056, 24, 128, 3600, 256, False),
    "CogVideoX-1.5": (2, 45_106, 48, 64, 4080, 226, True),
    "Wan2.1": (1, 75_600, 40, 128, 3600, 0, False),
}
DENSITIES = (1.0, 0.5, 0.25, 0.15, 0.10)
BACKWARD_DENSITIES = (1.0, 0.25, 0.10)


# ---- masks -----------------------------------------------------------------------------------------------------------

def _text_blocks(num_blocks, seq, text_tokens, text_first):
  """Bool [num_blocks]: blocks holding any text token."""
  starts = np.arange(num_blocks) * BLOCK
  if text_first:
    return starts < text_tokens
  return starts + BLOCK > seq - text_tokens


def _band(num_blocks, width):
  i = np.arange(num_blocks)
  return np.abs(i[:, None] - i[None, :]) <= width


def _temporal_stripes(num_blocks, frame_tokens, width_tokens):
  """Token-major band seen in frame-major order: same spatial position in other frames (block centres)."""
  centre = (np.arange(num_blocks) * BLOCK + BLOCK // 2) % frame_tokens
  gap = np.abs(centre[:, None] - centre[None, :])
  gap = np.minimum(gap, frame_tokens - gap)
  return gap <= width_tokens


def _calibrated(make, target, low, high):
  """Binary search the width of `make(width)` whose density is closest to target."""
  best = make(high)
  for _ in range(30):
    if high - low <= 1:
      break
    mid = (low + high) // 2
    mask = make(mid)
    if mask.mean() < target:
      low = mid
    else:
      high, best = mid, mask
  alternative = make(low)
  return alternative if abs(alternative.mean() - target) < abs(best.mean() - target) else best


def svg_mask(num_blocks, seq, heads, frame_tokens, text_tokens, text_first, density, seed):
  """[1, heads, n, n]: each head a spatial band or a temporal stripe set, plus text rows/columns, at `density`."""
  if density >= 1.0:
    return np.ones((1, heads, num_blocks, num_blocks), bool)
  rng = np.random.default_rng(seed)
  text = _text_blocks(num_blocks, seq, text_tokens, text_first)
  text_cross = text[:, None] | text[None, :]
  masks = []
  for _ in range(heads):
    if rng.random() < 0.5:
      make = lambda w: _band(num_blocks, w) | text_cross
      mask = _calibrated(make, density, 0, num_blocks)
    else:
      make = lambda w: _temporal_stripes(num_blocks, frame_tokens, w) | _band(num_blocks, 1) | text_cross
      mask = _calibrated(make, density, 0, frame_tokens // 2 + 1)
    masks.append(mask)
  return np.stack(masks)[None]


def band_mask(num_blocks, heads, density):
  if density >= 1.0:
    return np.ones((1, heads, num_blocks, num_blocks), bool)
  mask = _calibrated(lambda w: _band(num_blocks, w), density, 0, num_blocks)
  return np.broadcast_to(mask, (1, heads, num_blocks, num_blocks)).copy()


# ---- timing ----------------------------------------------------------------------------------------------------------

def median_ms(fn, *args, reps):
  jax.block_until_ready(fn(*args))  # warm-up (and compile)
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def cudnn_forward(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def loss_and_grads(attention):
  def loss(q, k, v, do):
    return jnp.sum(attention(q, k, v).astype(jnp.float32) * do.astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


# ---- correctness -----------------------------------------------------------------------------------------------------

def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def check_correctness(implementations):
  """Relative error vs the f32 reference of forward and gradients on small shapes, odd lengths included."""
  results = []
  for seq, head_dim, impl in [(2504, 64, i) for i in implementations] + [(3001, 128, i) for i in implementations]:
    keys = jax.random.split(jax.random.key(seq + head_dim), 5)
    shape = (2, seq, 4, head_dim)
    q, k, v, do = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys[:4])
    n = math.ceil(seq / BLOCK)
    mask = jax.random.bernoulli(keys[4], 0.3, (2, 4, n, n)).at[:, 0, 3].set(False)  # one empty row
    out = block_sparse_attention(q, k, v, mask, implementation=impl)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref = block_sparse_attention_reference(*f32, mask)
    grads = loss_and_grads(lambda a, b, c: block_sparse_attention(a, b, c, mask, implementation=impl))(q, k, v, do)
    ref_grads = loss_and_grads(lambda a, b, c: block_sparse_attention_reference(a, b, c, mask))(*f32, do)
    row = dict(implementation=impl, seq=seq, head_dim=head_dim, out=rel_err(out, ref),
               empty_row_max_abs=float(jnp.max(jnp.abs(out[:, 3 * BLOCK:4 * BLOCK, 0].astype(jnp.float32)))),
               **{f"d{name}": rel_err(g, r) for name, g, r in zip("qkv", grads, ref_grads)})
    row["ok"] = bool(max(row["out"], row["dq"], row["dk"], row["dv"]) < 2e-2 and row["empty_row_max_abs"] == 0.0)
    print("check", row, flush=True)
    results.append(row)
  return results


# ---- peers ------------------------------------------------------------------------------------------------------------

def tokamax_window(seq, density):
  """Window w (tokens each side) whose band |i - j| <= w covers `density` of the seq x seq map (token level)."""
  return max(1, round(seq * (1.0 - math.sqrt(1.0 - density))))


def bench_tokamax(name, densities, reps, cudnn_fwd):
  """tokamax's Mosaic GPU attention in the same run: dense, and banded (`local_window_size=(w, w)`, all it can
  express: no text columns, no per-head lists). Density is the band's token-level share of the map."""
  import tokamax

  batch, seq, heads, head_dim, *_ = SHAPES[name]
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (batch, seq, heads, head_dim), jnp.bfloat16) for key in keys)
  rows = []
  for density in densities:
    window = None if density >= 1.0 else tokamax_window(seq, density)
    fn = jax.jit(lambda q, k, v, window=window: tokamax.dot_product_attention(
        q, k, v, local_window_size=None if window is None else (window, window), implementation="mosaic"))
    try:
      ms = median_ms(fn, q, k, v, reps=reps)
    except Exception as e:  # a peer that fails is reported, not fatal
      print(f"{name} tokamax d={density}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
      rows.append(dict(shape=name, density=density, window=window, error=f"{type(e).__name__}: {str(e)[:300]}"))
      continue
    rows.append(dict(shape=name, density=density, window=window, tokamax_fwd_ms=ms, cudnn_fwd_ms=cudnn_fwd,
                     fwd_efficiency=density * cudnn_fwd / ms))
    print(f"{name} tokamax d={density} (window {window}): fwd {ms:.1f} ms eff {rows[-1]['fwd_efficiency']:.3f}",
          flush=True)
  return rows


# ---- benchmark -------------------------------------------------------------------------------------------------------

def bench_shape(name, densities, backward_densities, reps, implementation):
  batch, seq, heads, head_dim, frame_tokens, text_tokens, text_first = SHAPES[name]
  n = math.ceil(seq / BLOCK)
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (batch, seq, heads, head_dim)
  q, k, v, do = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
  dense_flops = 4.0 * batch * heads * seq * seq * head_dim
  rows = []

  cudnn_fwd = median_ms(jax.jit(cudnn_forward), q, k, v, reps=reps)
  cudnn_fwd_bwd = median_ms(loss_and_grads(cudnn_forward), q, k, v, do, reps=reps)
  cudnn_bwd = cudnn_fwd_bwd - cudnn_fwd
  print(f"{name}: cudnn fwd {cudnn_fwd:.1f} ms ({dense_flops / cudnn_fwd / 1e9:.0f} TFLOP/s), "
        f"bwd {cudnn_bwd:.1f} ms", flush=True)

  sparse_fwd = jax.jit(lambda q, k, v, m: block_sparse_attention(q, k, v, m, implementation=implementation))
  sparse_grads = jax.jit(jax.grad(
      lambda q, k, v, m, do: jnp.sum(block_sparse_attention(q, k, v, m, implementation=implementation)
                                     .astype(jnp.float32) * do.astype(jnp.float32)), argnums=(0, 1, 2)))
  mask_info_ms = None
  for kind in ("svg", "band"):
    for density in densities:
      if kind == "band" and density >= 1.0:
        continue
      if kind == "svg":
        mask_np = svg_mask(n, seq, heads, frame_tokens, text_tokens, text_first, density, seed=1)
      else:
        mask_np = band_mask(n, heads, density)
      actual = float(mask_np.mean())
      mask = jnp.asarray(mask_np)
      if mask_info_ms is None:
        mask_info_ms = median_ms(jax.jit(make_mask_info), mask, reps=reps)
      flops = dense_flops * actual
      fwd = median_ms(sparse_fwd, q, k, v, mask, reps=reps)
      row = dict(shape=name, mask=kind, density_target=density, density=actual, cudnn_fwd_ms=cudnn_fwd,
                 sparse_fwd_ms=fwd, fwd_tflops=flops / fwd / 1e9, fwd_efficiency=actual * cudnn_fwd / fwd)
      if kind == "svg" and density in backward_densities:
        fwd_bwd = median_ms(sparse_grads, q, k, v, mask, do, reps=reps)
        bwd = fwd_bwd - fwd
        row.update(cudnn_bwd_ms=cudnn_bwd, sparse_bwd_ms=bwd, bwd_tflops=2.5 * flops / bwd / 1e9,
                   bwd_efficiency=actual * cudnn_bwd / bwd)
      print(f"{name} {kind} d={actual:.3f}: fwd {fwd:.1f} ms eff {row['fwd_efficiency']:.3f} "
            f"({row['fwd_tflops']:.0f} TFLOP/s)"
            + (f"; bwd {row['sparse_bwd_ms']:.1f} ms eff {row['bwd_efficiency']:.3f}" if "sparse_bwd_ms" in row
               else ""), flush=True)
      rows.append(row)
  peers = None
  if tokamax_available():
    peers = bench_tokamax(name, list(densities), reps, cudnn_fwd)
  return dict(shape=name, batch=batch, seq=seq, heads=heads, head_dim=head_dim, cudnn_fwd_ms=cudnn_fwd,
              cudnn_bwd_ms=cudnn_bwd, cudnn_fwd_tflops=dense_flops / cudnn_fwd / 1e9, mask_info_ms=mask_info_ms,
              rows=rows, tokamax=peers)


def tokamax_available():
  try:
    import tokamax  # noqa: F401
  except ImportError as e:
    print(f"tokamax peers skipped: {e}", flush=True)
    return False
  return True


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true", help="one shape, two densities: a first look")
  parser.add_argument("--out", default=os.environ.get("OUT", os.path.dirname(os.path.abspath(__file__))))
  parser.add_argument("--shapes", default=",".join(SHAPES))
  parser.add_argument("--implementation", default=None)
  args = parser.parse_args()

  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
  result = dict(device=device.device_kind, jax=jax.__version__, date=time.strftime("%Y-%m-%d"), block=BLOCK)
  if tokamax_available():
    import tokamax
    result["tokamax"] = getattr(tokamax, "__version__", "unknown")
  implementations = ["mosaic_gpu", "triton"] if args.implementation is None else [args.implementation]
  result["correctness"] = check_correctness(implementations)
  main_impl = implementations[0]
  if not all(r["ok"] for r in result["correctness"] if r["implementation"] == main_impl):
    print("correctness check failed: not timing", flush=True)
    json.dump(result, open(os.path.join(args.out, "block_sparse_attention.json"), "w"), indent=1)
    sys.exit(1)
  result["implementation"] = main_impl
  densities = (1.0, 0.25) if args.quick else DENSITIES
  backward = (1.0, 0.25) if args.quick else BACKWARD_DENSITIES
  result["shapes"] = []
  for name in args.shapes.split(","):
    reps = 3 if SHAPES[name][1] > 100_000 else 5
    result["shapes"].append(bench_shape(name, densities, backward, reps, main_impl))
    json.dump(result, open(os.path.join(args.out, "block_sparse_attention.json"), "w"), indent=1)

  print("\nshape | mask | density | cuDNN fwd ms | sparse fwd ms | TFLOP/s | eff fwd | sparse bwd ms | eff bwd")
  for shape in result["shapes"]:
    for r in shape["rows"]:
      print(f"{r['shape']} | {r['mask']} | {r['density']:.3f} | {r['cudnn_fwd_ms']:.1f} | {r['sparse_fwd_ms']:.1f} | "
            f"{r['fwd_tflops']:.0f} | {r['fwd_efficiency']:.3f} | {r.get('sparse_bwd_ms', float('nan')):.1f} | "
            f"{r.get('bwd_efficiency', float('nan')):.3f}")
    for r in shape.get("tokamax") or []:
      print(f"{r['shape']} | tokamax band | {r['density']:.3f} | {r['cudnn_fwd_ms']:.1f} | "
            f"{r.get('tokamax_fwd_ms', float('nan')):.1f} | - | {r.get('fwd_efficiency', float('nan')):.3f} | - | -")


if __name__ == "__main__":
  main()
