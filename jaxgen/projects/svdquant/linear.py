"""SVDQuant's quantized linear layer (Li et al., "SVDQuant: Absorbing Outliers by Low-Rank Components for 4-Bit
Diffusion Models"), calibrated from a weight `w [K, N]` and calibration inputs `x [tokens, K]`.

    y = x W  =  (x / s)(s W)  ~=  Q(x / s) Q(s W - L) + (x / s) L,      L = L_1 L_2 of rank r, kept in 16 bit

1. Smoothing (SmoothQuant) migrates activation outliers into the weight: per input channel
   `s = span_x^alpha / span_w^beta` (spans: absolute maxima over tokens and over output channels). deepcompressor's
   FLUX recipe (`examples/diffusion/configs/svdquant/__default__.yaml`: alpha 0.5, beta -2, 20 grids, output-error
   objective, low rank allowed during the search) tries 39 candidates: (0, 0), then alpha = i / 20 for i = 1..19
   with beta = 0 and with beta = 1 - alpha. Each is scored by the layer's output MSE with both operands fake-quantized
   (and, for SVDQuant, the candidate's own rank-r branch), all candidates at once under one `jit` (`lax.map` in
   chunks of `candidate_batch`, bounding memory on large layers). (0, 0) is "no smoothing", so the chosen smoothing
   is never worse than none on the scoring tokens.
2. Low rank (SVDQuant): the smoothed weight's rank-r SVD absorbs the outliers smoothing moved into the weight; the
   4-bit residual has a far smaller range. deepcompressor then refines the branch, `L <- SVD_r(sW - Q(sW - L))`, up
   to 100 iterations, keeping the best by output error and stopping at the first iteration that does not improve it
   (`early_stop: true`); the same loop here runs as one `lax.while_loop`. `svd="randomized"` replaces the exact SVD
   by Halko et al.'s randomized range finder (2 power iterations, 8 oversamples) for large layers.
3. Storage and execution go through `pallas_kernels.int4_matmul`: signed 4-bit codes per group of `group_size` along
   K, packed two per byte; `ops.w4a4_matmul` quantizes activations on the fly (per token and group) and adds
   `(x L_1 / s) L_2`; the down-projection is stored already divided by `s`, so it reads raw activations, which is
   also why a LoRA merges into it unchanged (`jaxgen.projects.svdquant.lora`).

Inputs with a known lower bound (after GELU: -0.171875, deepcompressor's `infer_lowerbound`) can be `shift`ed to be
non-negative and quantized as unsigned 4-bit codes (16 levels on [0, max] instead of 8 on [0, max]): the layer
computes `(x + shift) W + (b - shift * 1^T W)`, deepcompressor's `ShiftedLinear` with `unsigned = True`.

`method="w4a16"` is weight-only round-to-nearest 4-bit (`ops.w4a16_matmul`), no smoothing or low rank.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.int4_matmul import ops as int4_ops
from pallas_kernels.int4_matmul import reference as int4_ref

GELU_SHIFT = 0.171875  # -(GELU's lower bound), deepcompressor's `infer_lowerbound("gelu")`
NUM_GRIDS = 20  # alpha = i / NUM_GRIDS, i = 1..NUM_GRIDS-1
LOWRANK_ITERS = 100
_OVERSAMPLES, _POWER_ITERS = 8, 2  # randomized SVD
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Method:
    """What a quantization method does: 4-bit activations, smoothing search, low-rank branch."""

    quantize_activations: bool
    smooth: bool
    lowrank: bool


METHODS = {
    "naive": Method(quantize_activations=True, smooth=False, lowrank=False),
    "smoothquant": Method(quantize_activations=True, smooth=True, lowrank=False),
    "svdquant": Method(quantize_activations=True, smooth=True, lowrank=True),
    "w4a16": Method(quantize_activations=False, smooth=False, lowrank=False),
}

SVDS = ("exact", "randomized")


@flax.struct.dataclass
class QuantizedLinear:
    """A quantized `[K, N]` linear layer: a frozen pytree (arrays are leaves; the rest is static), called as `q(x)` on
    `x [..., K]`. `lowrank_down [K, r]` reads raw (shifted) inputs: it is the branch's down-projection divided by the
    smoothing factor. `smooth` None: no smoothing; `lowrank_*` None: no branch. `activations`: "int4", "uint4"
    (unsigned, after adding `shift`) or "float" (W4A16). Every array is float32 or uint8; parameters stacked over
    layers (a scanned block) carry leading axes, and the call then needs them sliced first."""

    w_packed: jax.Array
    w_scales: jax.Array
    bias: jax.Array | None = None
    smooth: jax.Array | None = None
    lowrank_down: jax.Array | None = None
    lowrank_up: jax.Array | None = None
    activations: str = flax.struct.field(pytree_node=False, default="int4")
    shift: float = flax.struct.field(pytree_node=False, default=0.0)
    group_size: int = flax.struct.field(pytree_node=False, default=int4_ref.DEFAULT_GROUP_SIZE)
    method: str = flax.struct.field(pytree_node=False, default="svdquant")
    implementation: str | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def in_features(self) -> int:
        return self.w_packed.shape[-2] * 2

    @property
    def out_features(self) -> int:
        return self.w_packed.shape[-1]

    @property
    def rank(self) -> int:
        return 0 if self.lowrank_down is None else self.lowrank_down.shape[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.w_packed.ndim != 2:
            raise ValueError(f"QuantizedLinear with stacked parameters {self.w_packed.shape}: slice one layer first")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear [{self.in_features}, {self.out_features}] got x {x.shape}")
        dtype = x.dtype if x.dtype in (jnp.bfloat16, jnp.float16, jnp.float32) else jnp.float32
        flat = x.reshape(-1, self.in_features).astype(dtype)
        if self.shift:
            flat = flat + jnp.asarray(self.shift, dtype)
        if self.activations == "float":
            y = int4_ops.w4a16_matmul(flat, self.w_packed, self.w_scales, bias=self.bias, group_size=self.group_size,
                                      implementation=self.implementation)
        else:
            y = int4_ops.w4a4_matmul(flat, self.w_packed, self.w_scales, lowrank_down=self.lowrank_down,
                                     lowrank_up=self.lowrank_up, smooth=self.smooth, bias=self.bias,
                                     group_size=self.group_size, activations_signed=self.activations == "int4",
                                     implementation=self.implementation)
        return y.reshape(*x.shape[:-1], self.out_features)


# ---------------------------------------------------------------------------------------------------------------------
# Fake quantization (the spec of `pallas_kernels.int4_matmul.reference`, in float) and the pieces of the search
# ---------------------------------------------------------------------------------------------------------------------


def fake_quantize_weight(w: jax.Array, group_size: int) -> jax.Array:
    """Q(w) dequantized: signed 4-bit per group of `group_size` along K of a `[K, N]` weight."""
    codes, scales = int4_ref.quantize_codes(w, group_size, axis=0)
    return codes.astype(jnp.float32) * jnp.repeat(scales, group_size, axis=0)


def fake_quantize_activations(x: jax.Array, group_size: int, signed: bool) -> jax.Array:
    """Q(x) dequantized: 4-bit per token and group of `group_size` along K of `[tokens, K]` inputs."""
    codes, scales = int4_ref.quantize_codes(x, group_size, axis=-1, signed=signed)
    return codes.astype(jnp.float32) * jnp.repeat(scales, group_size, axis=-1)


def smooth_scale(span_x: jax.Array, span_w: jax.Array, alpha, beta) -> jax.Array:
    """`span_x^alpha / span_w^beta` per input channel; zero scales become 1 and a non-finite result is all ones
    (deepcompressor's `get_smooth_scale`). alpha = beta = 0 is no smoothing."""
    s = jnp.power(span_x, alpha) / jnp.power(span_w, beta)
    s = jnp.where(s == 0, 1.0, s)
    return jnp.where(jnp.all(jnp.isfinite(s)), s, jnp.ones_like(s))


def smoothing_candidates(num_grids: int = NUM_GRIDS) -> np.ndarray:
    """The official (alpha, beta) grid, `[2 * num_grids - 1, 2]`: (0, 0), (a, 0) and (a, 1 - a), a = i / num_grids."""
    alphas = np.arange(1, num_grids) / num_grids
    return np.concatenate([[[0.0, 0.0]], np.stack([alphas, 0 * alphas], 1), np.stack([alphas, 1 - alphas], 1)])


def lowrank(w: jax.Array, rank: int, svd: str = "exact", key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Rank-`rank` factors `(L_1 [K, r], L_2 [r, N])` of `w`'s truncated SVD, singular values split evenly between
    them (balanced ranges for 16-bit storage). `svd="randomized"`: Halko et al.'s range finder."""
    if svd == "randomized":
        key = jax.random.key(0) if key is None else key
        omega = jax.random.normal(key, (w.shape[1], min(rank + _OVERSAMPLES, min(w.shape))), w.dtype)
        basis, _ = jnp.linalg.qr(jnp.dot(w, omega, precision=_HIGHEST))
        for _ in range(_POWER_ITERS):  # power iterations sharpen the spectrum; re-orthonormalise each time
            basis, _ = jnp.linalg.qr(jnp.dot(w.T, basis, precision=_HIGHEST))
            basis, _ = jnp.linalg.qr(jnp.dot(w, basis, precision=_HIGHEST))
        u_small, sigma, vt = jnp.linalg.svd(jnp.dot(basis.T, w, precision=_HIGHEST), full_matrices=False)
        u = jnp.dot(basis, u_small, precision=_HIGHEST)
    else:
        u, sigma, vt = jnp.linalg.svd(w, full_matrices=False)
    root = jnp.sqrt(sigma[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def _output_mse(x_hat, w_hat, x_smooth, low, reference):
    """Mean squared error of `x_hat w_hat (+ x_smooth L)` against the 16-bit output."""
    y = jnp.dot(x_hat, w_hat, precision=_HIGHEST)
    if low is not None:
        y = y + jnp.dot(jnp.dot(x_smooth, low[0], precision=_HIGHEST), low[1], precision=_HIGHEST)
    return jnp.mean((y - reference) ** 2)


def _candidate_error(w, x, reference, span_x, span_w, alpha_beta, *, method, rank, group_size, signed, svd):
    """Output MSE of one smoothing candidate (with its own one-shot rank-r branch for SVDQuant)."""
    s = smooth_scale(span_x, span_w, alpha_beta[0], alpha_beta[1])
    w_s, x_s = w * s[:, None], x / s
    low = lowrank(w_s, rank, svd) if method.lowrank else None
    residual = w_s if low is None else w_s - jnp.dot(low[0], low[1], precision=_HIGHEST)
    x_hat = fake_quantize_activations(x_s, group_size, signed)
    return _output_mse(x_hat, fake_quantize_weight(residual, group_size), x_s, low, reference)


def _refine_lowrank(w_s, x_s, reference, rank, group_size, signed, svd, max_iters):
    """deepcompressor's low-rank loop: `L_{i+1} = SVD_r(w_s - Q(w_s - L_i))` from `L_0 = SVD_r(w_s)`, keeping the best
    branch by output error and stopping at the first non-improving iterate. Returns `(L_1, L_2, errors)`: `errors
    [max_iters + 1]` the error of each iterate evaluated (NaN after the stop)."""
    x_hat = fake_quantize_activations(x_s, group_size, signed)

    def error(low):
        residual = w_s - jnp.dot(low[0], low[1], precision=_HIGHEST)
        return _output_mse(x_hat, fake_quantize_weight(residual, group_size), x_s, low, reference)

    first = lowrank(w_s, rank, svd)
    errors = jnp.full((max_iters + 1,), jnp.nan, jnp.float32).at[0].set(error(first))

    def cond(state):
        i, _, _, improved, _ = state
        return (i < max_iters) & improved

    def body(state):
        i, best, best_error, _, errors = state
        quantized = fake_quantize_weight(w_s - jnp.dot(best[0], best[1], precision=_HIGHEST), group_size)
        candidate = lowrank(w_s - quantized, rank, svd)
        candidate_error = error(candidate)
        improved = candidate_error < best_error
        best = jax.tree.map(lambda c, b: jnp.where(improved, c, b), candidate, best)
        return i + 1, best, jnp.minimum(candidate_error, best_error), improved, errors.at[i + 1].set(candidate_error)

    _, best, _, _, errors = jax.lax.while_loop(cond, body, (0, first, errors[0], jnp.bool_(True), errors))
    return best[0], best[1], errors


def _calibrate(w, x, span_x, bias, *, method_name, rank, group_size, shift, svd, num_grids, candidate_batch,
               max_iters):
    """One layer's calibration, all of it traced: `(QuantizedLinear arrays, candidate errors, low-rank errors)`."""
    method = METHODS[method_name]
    signed = not shift
    if shift:
        x, span_x = x + shift, span_x + shift
        bias = (jnp.zeros((w.shape[1],), jnp.float32) if bias is None else bias) - shift * jnp.sum(w, axis=0)
    reference = jnp.dot(x, w, precision=_HIGHEST)
    span_w = jnp.max(jnp.abs(w), axis=1)
    errors = jnp.zeros((0,), jnp.float32)
    s = jnp.ones_like(span_x)
    if method.smooth:
        candidates = smoothing_candidates(num_grids)
        count = len(candidates)
        # Padded with copies of (0, 0) to whole chunks: lax.map then compiles one chunk body, not a remainder too;
        # argmin returns the first minimum, so a copy never wins over the original.
        chunk = min(candidate_batch, count)
        padded = np.concatenate([candidates, np.zeros((-count % chunk, 2))]).astype(np.float32)
        errors = jax.lax.map(lambda ab: _candidate_error(w, x, reference, span_x, span_w, ab, method=method, rank=rank,
                                                         group_size=group_size, signed=signed, svd=svd),
                             jnp.asarray(padded), batch_size=chunk)[:count]
        best = jnp.asarray(candidates, jnp.float32)[jnp.argmin(errors)]
        s = smooth_scale(span_x, span_w, best[0], best[1])
    w_s = w * s[:, None]
    down = up = None
    lowrank_errors = jnp.zeros((0,), jnp.float32)
    if method.lowrank:
        down, up, lowrank_errors = _refine_lowrank(w_s, x / s, reference, rank, group_size, signed, svd, max_iters)
        w_s = w_s - jnp.dot(down, up, precision=_HIGHEST)
        down = down / s[:, None]
    w_packed, w_scales = int4_ref.quantize_int4(w_s, group_size, axis=0)
    arrays = dict(w_packed=w_packed, w_scales=w_scales, bias=bias, smooth=s if method.smooth else None,
                  lowrank_down=down, lowrank_up=up)
    return arrays, errors, lowrank_errors


_STATIC = ("method_name", "rank", "group_size", "shift", "svd", "num_grids", "candidate_batch", "max_iters")
_calibrate_jit = jax.jit(_calibrate, static_argnames=_STATIC)


def _calibrate_stacked(w, x, span_x, bias, **static):
    """Layers stacked on a leading axis (a scanned block), each on its own inputs, through one compiled function.
    A loop, not `vmap`: the batched SVD and while-loop of a vmapped calibration ran ~3x slower on CPU."""
    results = [jax.device_get(_calibrate_jit(w[i], x[i], span_x[i], None if bias is None else bias[i], **static))
               for i in range(w.shape[0])]
    return jax.device_put(jax.tree.map(lambda *leaves: np.stack(leaves), *results))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What the search found, for inspection and tests: the smoothing `(alpha, beta)` chosen, the output MSE of every
    smoothing candidate (empty without smoothing) and of every low-rank iterate (NaN after the early stop)."""

    alpha_beta: tuple[float, float] | None
    candidate_errors: np.ndarray
    lowrank_errors: np.ndarray


def _check(w, x_calib, method, rank, group_size, svd, shift, bias):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if svd not in SVDS:
        raise ValueError(f"unknown svd {svd!r}; choose one of {SVDS}")
    if w.ndim != 2:
        raise ValueError(f"w must be a [K, N] matrix, got shape {w.shape}")
    k, n = w.shape
    if x_calib.ndim != 2 or x_calib.shape[1] != k or x_calib.shape[0] < 1:
        raise ValueError(f"x_calib must be [tokens, K={k}] for w {w.shape}, got shape {x_calib.shape}")
    if group_size < 64 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 64 (the int4 kernels' groups), got {group_size}")
    if k % group_size or k % 64 or n % 64:
        raise ValueError(f"the int4 kernels need K a multiple of group_size={group_size} and of 64 and N of 64; "
                         f"w is {w.shape} (keep such a layer in 16 bit)")
    if METHODS[method].lowrank and not 1 <= rank <= min(k, n):
        raise ValueError(f"rank must be in [1, min(K, N) = {min(k, n)}] for w {w.shape}, got {rank}")
    if shift and shift < 0:
        raise ValueError(f"shift must be >= 0 (added to inputs to make them non-negative), got {shift}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [N={n}] for w {w.shape}, got {bias.shape}")


def quantize_linear(w: jax.Array, x_calib: jax.Array, *, method: str = "svdquant", rank: int = 32,
                    group_size: int = int4_ref.DEFAULT_GROUP_SIZE, bias: jax.Array | None = None,
                    shift: float | None = None, x_span: jax.Array | None = None, svd: str = "exact",
                    num_grids: int = NUM_GRIDS, lowrank_iters: int = LOWRANK_ITERS, candidate_batch: int = 8,
                    implementation: str | None = None, return_calibration: bool = False) -> Any:
    """A `QuantizedLinear` for `y = x w + bias` (`w [K, N]`), calibrated on `x_calib [tokens, K]`.

    Layers stacked on a leading axis (`w [layers, K, N]`, `x_calib [layers, tokens, K]`, the blocks of an `nn.scan`)
    calibrate one by one into one QuantizedLinear with stacked arrays.

    method: "svdquant" (smoothing + low rank + W4A4), "smoothquant" (smoothing + W4A4), "naive" (W4A4 round to
        nearest), "w4a16" (weights only).
    shift: add it to inputs and quantize them unsigned (post-GELU inputs: `GELU_SHIFT`); the bias compensates.
    x_span: per-channel absolute maxima of the inputs (before any shift) over more tokens than `x_calib` holds
        (calibration statistics of a whole model); default: those of `x_calib`.
    svd: "exact" or "randomized" (large layers). num_grids, lowrank_iters: the search sizes (official: 20, 100).
    candidate_batch: smoothing candidates evaluated at once (memory: about `candidate_batch` copies of w and x).
    implementation: the `pallas_kernels.int4_matmul.ops` backend the layer runs on (None: the platform default).
    return_calibration: also return a `Calibration` with the search's errors.
    """
    # Host-side preparation in numpy: each eager jnp op would compile once per shape.
    w, x_calib = np.asarray(w, np.float32), np.asarray(x_calib, np.float32)
    bias = None if bias is None else np.asarray(bias, np.float32)
    x_span = np.abs(x_calib).max(axis=-2) if x_span is None else np.asarray(x_span, np.float32)
    stacked = w.ndim == 3
    if stacked:  # layers of a scan: check one, calibrate all
        if x_calib.ndim != 3 or x_calib.shape[0] != w.shape[0] or x_span.shape != (w.shape[0], w.shape[1]):
            raise ValueError(f"stacked w {w.shape} needs x_calib [{w.shape[0]}, tokens, {w.shape[1]}] and x_span "
                             f"[{w.shape[0]}, {w.shape[1]}]; got {x_calib.shape} and {x_span.shape}")
        _check(w[0], x_calib[0], method, rank, group_size, svd, shift, None if bias is None else bias[0])
    else:
        _check(w, x_calib, method, rank, group_size, svd, shift, bias)
        if x_span.shape != (w.shape[0],):
            raise ValueError(f"x_span must be [K={w.shape[0]}], got {x_span.shape}")
    spec = METHODS[method]
    shift = float(shift or 0.0)
    # Products that matter are spelled HIGHEST; a global "highest" default (the test suite's) made the SVD and QR
    # internals several times slower on CPU, so they get the platform default here.
    with jax.default_matmul_precision("default"):
        arrays, candidate_errors, lowrank_errors = (_calibrate_stacked if stacked else _calibrate_jit)(
            w, x_calib, x_span, bias, method_name=method, rank=rank if spec.lowrank else 0, group_size=group_size,
            shift=shift, svd=svd, num_grids=num_grids, candidate_batch=candidate_batch, max_iters=lowrank_iters)
    layer = QuantizedLinear(**arrays, activations=("uint4" if shift else "int4") if spec.quantize_activations
                            else "float", shift=shift, group_size=group_size, method=method,
                            implementation=implementation)
    if not return_calibration:
        return layer
    candidate_errors = np.asarray(candidate_errors)
    alpha_beta = (tuple(float(v) for v in smoothing_candidates(num_grids)[int(np.argmin(candidate_errors))])
                  if spec.smooth and not stacked else None)
    return layer, Calibration(alpha_beta, candidate_errors, np.asarray(lowrank_errors))


def dequantized_weight(layer: QuantizedLinear) -> jax.Array:
    """The float `[K, N]` weight the layer applies to (unshifted) inputs, activation quantization aside:
    `dequant(W_q) / s + L_1 L_2 / s`."""
    w = int4_ref.dequantize_int4(layer.w_packed, layer.w_scales, layer.group_size, axis=0)
    if layer.smooth is not None:
        w = w / layer.smooth[:, None]
    if layer.lowrank_down is not None:
        w = w + jnp.dot(layer.lowrank_down, layer.lowrank_up, precision=_HIGHEST)
    return w
