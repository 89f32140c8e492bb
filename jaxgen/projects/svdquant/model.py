"""Whole-model SVDQuant for any Linen module: calibrate, quantize by rules, run with the quantized layers.

Nothing is forked or rewritten: `flax.linen.intercept_methods` sees every `nn.Dense` / `nn.DenseGeneral` call.
- `collect_inputs` runs the model over calibration batches (spread over diffusion timesteps by the caller) and keeps,
  per layer path (e.g. `blocks/attn/qkv`), a strided sample of input tokens and the per-channel absolute maxima over
  all tokens. The interceptor `sow`s them into "intermediates", so layers inside `nn.scan` (the DiT's stacked blocks)
  come back stacked over layers, like their parameters.
- `quantize_model` quantizes each layer a rule selects (`quantize_linear`, one call per stacked layer) and puts the
  `QuantizedLinear` into the parameter tree in place of the layer's kernel and bias, as the single variable
  `params/<layer>/svdquant`. Inside a scan it is sliced per layer like any parameter.
- `QuantizedModel.apply` runs the original module with an interceptor that answers each quantized layer's call with
  its `QuantizedLinear` (the int4 kernels of `pallas_kernels.int4_matmul`); other layers run as before.

Rules are an ordered list of `(regex, scheme)`; the first regex that fully matches a layer's path decides, a layer no
rule matches stays 16-bit, and a rule that matches no layer is an error. Schemes (`SCHEMES`): "svdquant",
"smoothquant", "w4a4" (round to nearest, no smoothing or low rank), each with a "_gelu" twin for post-GELU inputs
(shifted by 0.171875 and quantized unsigned), "w4a16", and "float" (kept 16-bit). `dit_rules` writes deepcompressor's
FLUX/PixArt choices for `jaxgen.nn.dit.DiT`: embeddings (patch, timestep, caption) and the final projection stay
16-bit (`skips: embed, transformer_proj_in, transformer_proj_out`); the adaLN linears keep 16-bit activations with
4-bit weights, no smoothing or low rank (`transformer_norm` is in the smoothing, low-rank and input-quantization skip
lists but not the weight one), i.e. W4A16; the second MLP linear reads GELU outputs. `flux_rules` does the same for
`jaxgen.nn.flux.FluxTransformer` (deepcompressor's and nunchaku's FLUX.1 choices).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.projects.svdquant import linear as linear_lib

VARIABLE = "svdquant"  # the parameter holding a layer's QuantizedLinear
_SAMPLES, _ABSMAX = "svdquant_samples", "svdquant_absmax"


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How a layer is quantized: `method` a `linear.METHODS` name, None for 16-bit; `shift` for unsigned inputs."""

    method: str | None
    shift: float | None = None


SCHEMES: dict[str, Scheme] = {"float": Scheme(None), "w4a16": Scheme("w4a16")}
for _name in ("svdquant", "smoothquant", "w4a4"):
    _method = "naive" if _name == "w4a4" else _name
    SCHEMES[_name] = Scheme(_method)
    SCHEMES[_name + "_gelu"] = Scheme(_method, linear_lib.GELU_SHIFT)


def dit_rules(scheme: str = "svdquant") -> tuple[tuple[str, str], ...]:
    """Rules for `jaxgen.nn.dit.DiT` (and its caption MLP) quantizing the transformer linears with `scheme`."""
    after_gelu = scheme + "_gelu" if scheme + "_gelu" in SCHEMES else scheme
    return (
        (r"patch_embed|t_embed/.*|caption_projection/.*|unpatchify", "float"),
        (r"blocks/adaln|final_adaln", "w4a16"),
        (r"blocks/Dense_1", after_gelu),
        (r"blocks/.*", scheme),
    )


def flux_rules(scheme: str = "svdquant") -> tuple[tuple[str, str], ...]:
    """Rules for `jaxgen.nn.flux.FluxTransformer` quantizing its block linears with `scheme`, after deepcompressor's
    FLUX.1 recipe (`examples/diffusion/configs/model/flux.1-dev.yaml`, keys from `app/diffusion/nn/struct.py`):
    - 16-bit: the "embed" skip, which for FLUX covers `x_embedder` (input_embed), `context_embedder` (text_embed),
      `time_text_embed` (time_embed) and `norm_out` + `proj_out` (output_embed);
    - W4A16: the blocks' adaLN linears (`img_mod`, `txt_mod`, the single block's `mod`: transformer_norm and
      transformer_add_norm, skipped for inputs, smoothing and low rank but not weights; nunchaku runs them as AWQ
      W4A16);
    - `scheme` with the GELU shift (`pipeline.shift_activations`, unsigned inputs): every MLP's `fc2` (down_proj,
      in the single block the GELU half of diffusers' `proj_out`);
    - `scheme`: every other block linear, i.e. q/k/v (fused), the attention outputs and `fc1`."""
    after_gelu = scheme + "_gelu" if scheme + "_gelu" in SCHEMES else scheme
    return (
        (r"x_embedder|context_embedder|time_text_embed/.*|norm_out|proj_out", "float"),
        (r"transformer_blocks/(img|txt)_mod|single_transformer_blocks/mod", "w4a16"),
        (r"(transformer_blocks/(img|txt)_mlp|single_transformer_blocks/mlp)/fc2", after_gelu),
        (r"(single_)?transformer_blocks/.*", scheme),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Layers as seen by the interceptor
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A Dense/DenseGeneral layer as a `[K, N]` matrix: its contracted input shape and its feature shape."""

    path: str
    in_shape: tuple[int, ...]
    features: tuple[int, ...]
    use_bias: bool

    @property
    def k(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n(self) -> int:
        return int(np.prod(self.features))


def _layer_info(module: nn.Module, x: jax.Array, path: str) -> LayerInfo | None:
    """The layer's matrix view, or None for modules that are not plain Dense / trailing-axes DenseGeneral."""
    if type(module) is nn.Dense:
        return LayerInfo(path, (x.shape[-1],), (module.features,), module.use_bias)
    if type(module) is nn.DenseGeneral:
        axes = module.axis if isinstance(module.axis, Sequence) else (module.axis,)
        axes = sorted(a % x.ndim for a in axes)
        features = module.features if isinstance(module.features, Sequence) else (module.features,)
        if module.batch_dims or axes != list(range(x.ndim - len(axes), x.ndim)):
            raise ValueError(f"svdquant: DenseGeneral {path} contracts axes {module.axis} with batch_dims "
                             f"{module.batch_dims} of x {x.shape}; only trailing axes without batch dims are supported")
        return LayerInfo(path, tuple(x.shape[x.ndim - len(axes):]), tuple(features), module.use_bias)
    return None


def _called_layer(context) -> tuple[nn.Module, str] | None:
    """The Dense/DenseGeneral layer being called and its path (from the root module), or None."""
    module = context.module
    if context.method_name != "__call__" or type(module) not in (nn.Dense, nn.DenseGeneral):
        return None
    return module, "/".join(module.path)


class _Recorder:
    """Interceptor: sows a strided sample of each layer's input tokens and their per-channel absolute maxima."""

    def __init__(self, tokens_per_call: int):
        self.tokens_per_call = tokens_per_call
        self.layers: dict[str, LayerInfo] = {}

    def __call__(self, next_fun, args, kwargs, context):
        called = _called_layer(context)
        if called is None:
            return next_fun(*args, **kwargs)
        module, path = called
        x = args[0]
        info = _layer_info(module, x, path)
        self.layers[path] = info
        flat = x.reshape(-1, info.k).astype(jnp.float32)
        rows = np.linspace(0, flat.shape[0] - 1, min(self.tokens_per_call, flat.shape[0])).round().astype(int)
        module.sow("intermediates", _SAMPLES, flat[rows])
        module.sow("intermediates", _ABSMAX, jnp.max(jnp.abs(flat), axis=0))
        return next_fun(*args, **kwargs)


@dataclasses.dataclass
class LayerInputs:
    """Calibration data of one layer: `samples [*stack, tokens, K]` and `absmax [*stack, K]` (`stack`: the scan's
    layer axes, () for an unscanned layer)."""

    info: LayerInfo
    samples: np.ndarray
    absmax: np.ndarray


def _subtree(tree: Mapping, path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def collect_inputs(module: nn.Module, variables: Mapping, calib_batches: Iterable[tuple[tuple, dict]], *,
                   tokens_per_call: int = 256) -> dict[str, LayerInputs]:
    """Runs `module.apply(variables, *args, **kwargs)` for each `(args, kwargs)` of `calib_batches` and returns every
    Dense/DenseGeneral layer's inputs: up to `tokens_per_call` evenly strided tokens per call and batch, and the
    absolute maxima per input channel over all tokens."""
    recorder = _Recorder(tokens_per_call)

    @jax.jit
    def run(variables, args, kwargs):
        with nn.intercept_methods(recorder):
            _, state = module.apply(variables, *args, mutable=["intermediates"], **kwargs)
        return state["intermediates"]

    samples: dict[str, list[np.ndarray]] = {}
    absmax: dict[str, np.ndarray] = {}
    count = 0
    for args, kwargs in calib_batches:
        count += 1
        sown = run(variables, tuple(args), dict(kwargs))
        for path in recorder.layers:
            node = _subtree(sown, path)
            # One entry per call (a layer called twice appends); scanned layers carry the layer axis first.
            samples.setdefault(path, []).extend(np.asarray(s) for s in node[_SAMPLES])
            peak = np.max(np.stack([np.asarray(a) for a in node[_ABSMAX]]), axis=0)
            absmax[path] = peak if path not in absmax else np.maximum(absmax[path], peak)
    if not count:
        raise ValueError("collect_inputs: calib_batches yielded no batch")
    return {path: LayerInputs(recorder.layers[path], np.concatenate(samples[path], axis=-2), absmax[path])
            for path in recorder.layers}


# ---------------------------------------------------------------------------------------------------------------------
# Rules and quantization
# ---------------------------------------------------------------------------------------------------------------------


def resolve_rules(rules: Sequence[tuple[str, str | Scheme]]) -> list[tuple[re.Pattern, Scheme, str]]:
    """`(compiled regex, Scheme, the rule as written)`; unknown schemes and invalid regexes raise `ValueError`."""
    if isinstance(rules, str) or not all(isinstance(r, (tuple, list)) and len(r) == 2 for r in rules):
        raise ValueError(f"rules must be a sequence of (regex, scheme) pairs, e.g. (('blocks/.*', 'svdquant'),); "
                         f"got {rules!r}")
    resolved = []
    for pattern, scheme in rules:
        if isinstance(scheme, str):
            if scheme not in SCHEMES:
                raise ValueError(f"rule {pattern!r}: unknown scheme {scheme!r}; choose one of {sorted(SCHEMES)} or "
                                 f"pass a Scheme")
            scheme = SCHEMES[scheme]
        elif not isinstance(scheme, Scheme):
            raise ValueError(f"rule {pattern!r}: scheme must be a name or a Scheme, got {scheme!r}")
        try:
            resolved.append((re.compile(pattern), scheme, f"{pattern!r} -> {scheme}"))
        except re.error as err:
            raise ValueError(f"rule {pattern!r} is not a valid regular expression: {err}") from None
    return resolved


def assign_schemes(paths: Iterable[str], rules: Sequence[tuple[str, str | Scheme]]) -> dict[str, Scheme]:
    """Each layer path's scheme by the first fully matching rule (16-bit where none matches); every rule must match
    at least one layer."""
    resolved = resolve_rules(rules)
    paths = sorted(paths)
    assigned, used = {}, set()
    for path in paths:
        for i, (regex, scheme, _) in enumerate(resolved):
            if regex.fullmatch(path):
                assigned[path] = scheme
                used.add(i)
                break
        else:
            assigned[path] = SCHEMES["float"]
    unused = [written for i, (_, _, written) in enumerate(resolved) if i not in used]
    if unused:
        raise ValueError(f"rule(s) {unused} match no layer (rules fully match layer paths, before earlier rules); the "
                         f"model's Dense/DenseGeneral layers are {paths}")
    return assigned


def _quantize_layer(kernel, bias, inputs: LayerInputs, scheme: Scheme, options: Mapping) -> linear_lib.QuantizedLinear:
    """The layer as a `[K, N]` matrix (stacked over a scan's leading axes, calibrated in one call), quantized."""
    info = inputs.info
    stack = kernel.shape[:kernel.ndim - len(info.in_shape) - len(info.features)]
    if inputs.samples.shape[:-2] != stack:
        raise ValueError(f"svdquant: layer {info.path} has kernels stacked {stack} but calibration inputs "
                         f"{inputs.samples.shape[:-2]}")
    layers = int(np.prod(stack))
    shapes = ((layers, info.k, info.n), (layers, info.n), (layers, -1, info.k), (layers, info.k))
    if not stack:
        shapes = tuple(shape[1:] for shape in shapes)
    try:
        layer = linear_lib.quantize_linear(
            np.reshape(kernel, shapes[0]), inputs.samples.reshape(shapes[2]), method=scheme.method,
            shift=scheme.shift, x_span=inputs.absmax.reshape(shapes[3]),
            bias=None if bias is None else np.reshape(bias, shapes[1]), **options)
    except ValueError as err:
        raise ValueError(f"svdquant: layer {info.path} ([K, N] = [{info.k}, {info.n}]) under {scheme}: {err}") \
            from None
    if len(stack) > 1:
        layer = jax.device_put(jax.tree.map(lambda a: np.reshape(a, (*stack, *a.shape[1:])), jax.device_get(layer)))
    return layer


@dataclasses.dataclass(frozen=True)
class QuantizedModel:
    """A module with quantized parameters: `params` is the variable tree with `params/<layer>/svdquant` in place of
    each quantized layer's kernel and bias; `schemes` the scheme of every Dense/DenseGeneral layer path.
    `apply(params, *args, **kwargs)` (a pure function, jit it) or `model(*args, **kwargs)` run it."""

    module: nn.Module
    params: Mapping
    schemes: Mapping[str, Scheme]

    def apply(self, params: Mapping, *args, **kwargs):
        return apply_quantized(self.module, params, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.apply(self.params, *args, **kwargs)


class _Runner:
    """Interceptor: a layer holding a `svdquant` parameter is answered by its QuantizedLinear."""

    def __call__(self, next_fun, args, kwargs, context):
        called = _called_layer(context)
        if called is None or not called[0].has_variable("params", VARIABLE):
            return next_fun(*args, **kwargs)
        module, path = called
        layer: linear_lib.QuantizedLinear = module.get_variable("params", VARIABLE)
        x = args[0]
        info = _layer_info(module, x, path)
        dtype = module.dtype or x.dtype
        flat = x.reshape(*x.shape[:x.ndim - len(info.in_shape)], info.k).astype(dtype)
        return layer(flat).reshape(*flat.shape[:-1], *info.features)


def apply_quantized(module: nn.Module, params: Mapping, *args, **kwargs):
    """`module.apply(params, *args, **kwargs)` with every quantized layer running its int4 kernels."""
    with nn.intercept_methods(_Runner()):
        return module.apply(params, *args, **kwargs)


def quantize_model(module: nn.Module, variables: Mapping, calib_batches: Iterable[tuple[tuple, dict]],
                   rules: Sequence[tuple[str, str | Scheme]], *, rank: int = 32, group_size: int = 64,
                   svd: str = "exact", tokens_per_call: int = 256, inputs: Mapping[str, LayerInputs] | None = None,
                   progress: Callable[[str], None] | None = None, **options) -> QuantizedModel:
    """Calibrates `module` (variables `{"params": ...}`) on `calib_batches` (`(args, kwargs)` pairs for
    `module.apply`) and quantizes each layer by `rules`; see the module docstring. `inputs`: calibration data from an
    earlier `collect_inputs` (several methods quantize from the same calibration). `options` go to
    `linear.quantize_linear` (num_grids, lowrank_iters, candidate_batch, implementation)."""
    inputs = collect_inputs(module, variables, calib_batches, tokens_per_call=tokens_per_call) if inputs is None \
        else inputs
    schemes = assign_schemes(inputs, rules)
    params = jax.tree.map(lambda a: a, nn.unbox(dict(variables["params"])))
    for path, scheme in schemes.items():
        if scheme.method is None:
            continue
        if progress is not None:
            progress(f"{path}: {scheme}")
        *parents, name = path.split("/")
        parent = _subtree(params, "/".join(parents)) if parents else params
        layer_params = parent[name]
        quantized = _quantize_layer(layer_params["kernel"], layer_params.get("bias"), inputs[path], scheme,
                                      dict(options, rank=rank, group_size=group_size, svd=svd))
        parent[name] = {VARIABLE: quantized}
    return QuantizedModel(module, {**variables, "params": params}, schemes)


# ---------------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------------


def model_bytes(params: Mapping, float_bytes: int = 2) -> int:
    """Bytes of a (quantized or not) parameter tree with every floating-point tensor stored in `float_bytes` per
    element (16-bit: 2; the low-rank branch, scales and 16-bit layers of a deployed SVDQuant model are bf16) and
    integer tensors (packed 4-bit codes) as they are."""
    total = 0
    for leaf in jax.tree.leaves(nn.unbox(params)):
        size, dtype = np.size(leaf), np.dtype(getattr(leaf, "dtype", None) or np.result_type(leaf))
        total += size * float_bytes if jnp.issubdtype(dtype, jnp.floating) else size * dtype.itemsize
    return int(total)
