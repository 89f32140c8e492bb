"""`jaxgen.nn.flux.from_diffusers` against diffusers' own `FluxTransformer2DModel` on random weights (float32, CPU),
and FLUX's sigma schedule against diffusers' `FlowMatchEulerDiscreteScheduler`."""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.numerics import rel_err
from tests.support.parity import require

torch = require("torch")
diffusers = require("diffusers")

from jaxgen.core import mesh as mesh_lib  # noqa: E402
from jaxgen.diffusion.flow_matching import resolution_shift  # noqa: E402
from jaxgen.nn import flux  # noqa: E402

CONFIG = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24, axes_dims_rope=[4, 6, 6])


def reference_model(guidance_embeds: bool, seed: int = 0):
    """A random diffusers FLUX transformer; RMSNorm weights are randomised too (they start at one), so a q/k norm
    loaded into the wrong stream or block would show."""
    torch.manual_seed(seed)
    model = diffusers.FluxTransformer2DModel(**CONFIG, guidance_embeds=guidance_embeds).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.RMSNorm):
                module.weight.copy_(1 + 0.5 * torch.randn_like(module.weight))
    return model


def inputs(guidance_embeds: bool, batch: int = 2, text_tokens: int = 5):
    """Packed latents of a 6×8 latent image (12 tokens), text, and ids with every RoPE axis in use (image axis 0 set
    to 1 as FLUX Kontext marks reference images; text tokens at random positions)."""
    rng = np.random.default_rng(0)
    img_ids = np.asarray(flux.image_ids(6, 8)) + np.array([1.0, 0.0, 0.0], np.float32)
    return dict(hidden_states=rng.normal(size=(batch, 12, CONFIG["in_channels"])).astype(np.float32),
                encoder_hidden_states=rng.normal(size=(batch, text_tokens, 32)).astype(np.float32),
                pooled_projections=rng.normal(size=(batch, 24)).astype(np.float32),
                timestep=np.array([1.0, 0.37], np.float32)[:batch],
                img_ids=img_ids, txt_ids=rng.integers(0, 7, size=(text_tokens, 3)).astype(np.float32),
                guidance=np.array([3.5, 1.0], np.float32)[:batch] if guidance_embeds else None)


@pytest.mark.parametrize("guidance_embeds,shard", [(True, True), (False, False)], ids=["dev_sharded", "schnell"])
def test_matches_diffusers(tmp_path, guidance_embeds, shard):
    model = reference_model(guidance_embeds)
    model.save_pretrained(tmp_path, **({"max_shard_size": "40KB"} if shard else {}))
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file() == shard
    module, params = flux.from_diffusers(tmp_path)
    assert module.guidance_embeds == guidance_embeds and module.width == 32

    args = inputs(guidance_embeds)
    with torch.no_grad():
        expected = model(**{k: None if v is None else torch.from_numpy(v) for k, v in args.items()}).sample.numpy()
    out, input_minima = jax.jit(apply_seeing_dense_inputs, static_argnums=0)(
        module, params, {k: None if v is None else jnp.asarray(v) for k, v in args.items()})
    assert out.shape == expected.shape == (2, 12, CONFIG["in_channels"])
    # bar 1e-4; measured 9.5e-7 (dev) and 3.4e-7 (schnell) here. A transposed qkv or swapped stream is O(1).
    assert rel_err(out, expected) <= 1e-5, rel_err(out, expected)

    # As SVDQuant's calibration will see the model: every weight belongs to a plain Dense whose inputs an
    # interceptor sees under its parameter path, and every mlp/fc2 reads a GELU output (tanh GELU >= -0.1700).
    kernels = {path[:-len("/kernel")] for path in _paths(params["params"]) if path.endswith("/kernel")}
    assert set(input_minima) == kernels
    post_gelu = {path for path in kernels if path.endswith("mlp/fc2")}
    assert len(post_gelu) == 3 and all(float(input_minima[p].min()) >= -0.1701 for p in post_gelu)
    assert all(float(input_minima[p.replace("fc2", "fc1")].min()) < -0.5 for p in post_gelu)


def apply_seeing_dense_inputs(module, params, args):
    """`module.apply` with every `nn.Dense` call intercepted; returns (output, {Dense path: min of its input}),
    the minima stacked over layers inside the scanned blocks."""
    def record(next_fun, call_args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            context.module.sow("intermediates", "input_min", jnp.min(call_args[0]))
        return next_fun(*call_args, **kwargs)

    with nn.intercept_methods(record):
        out, state = module.apply(params, **args, mutable=["intermediates"])
    minima = {path[:-len("/input_min/0")]: value for path, value in _paths(state["intermediates"]).items()}
    return out, minima


def _paths(tree) -> dict:
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_loads_into_bfloat16_on_a_mesh_and_refuses_wrong_folders(tmp_path):
    reference_model(guidance_embeds=False).save_pretrained(tmp_path)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, fsdp=-1))
    _, params = flux.from_diffusers(tmp_path, dtype=jnp.bfloat16, mesh=mesh)
    leaves = jax.tree.leaves(params)
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.bfloat16)}
    assert all(leaf.sharding.mesh.shape == mesh.shape for leaf in leaves)

    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**config, "_class_name": "SD3Transformer2DModel"}))
    with pytest.raises(ValueError, match="SD3Transformer2DModel.*FluxTransformer2DModel"):
        flux.from_diffusers(tmp_path)

    config_path.write_text(json.dumps({**config, "joint_attention_dim": 40}))
    with pytest.raises(ValueError, match="context_embedder/kernel converts to .*disagree"):
        flux.from_diffusers(tmp_path)

    config_path.write_text(json.dumps({**config, "guidance_embeds": True}))  # weights have no guidance embedder
    with pytest.raises(KeyError, match="guidance_embedder"):
        flux.from_diffusers(tmp_path)


@pytest.mark.parametrize("image_tokens", [256, 1024, 4096])
def test_schedule_matches_flux_scheduler(image_tokens):
    """FLUX.1-dev's scheduler config (dynamic shifting), with the pipeline's `mu` written out by hand."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                          base_image_seq_len=256, max_image_seq_len=4096,
                                                          base_shift=0.5, max_shift=1.15)
    steps = 28
    mu = 0.5 + (1.15 - 0.5) * (image_tokens - 256) / (4096 - 256)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    np.testing.assert_allclose(flux.schedule(steps, image_tokens), scheduler.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    assert math.isclose(math.log(resolution_shift(image_tokens)), mu, rel_tol=1e-12)


def test_schnell_schedule_is_unshifted():
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4))
    np.testing.assert_allclose(flux.schedule(4, None), scheduler.sigmas.numpy(), rtol=1e-6)
