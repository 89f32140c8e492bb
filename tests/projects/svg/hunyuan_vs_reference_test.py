"""The Flax port of HunyuanVideo (`jaxgen.projects.svg.hunyuan`) against diffusers' `HunyuanVideoTransformer3DModel`
on random weights, through `from_diffusers` (float32, CPU), with padded text; SVG at density 1.0 on the port (padding
apart, `VideoLayout.text_padding`) equals its dense forward; the 13B config's size from shapes alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tests.support.numerics import rel_err
from tests.support.parity import require

torch = require("torch")
diffusers = require("diffusers")

from jaxgen.projects.svg import from_diffusers, hunyuan, ports  # noqa: E402

FAST = {"xla_backend_optimization_level": 0}  # LLVM at -O0: compiles about 2x faster on CPU; the run is tiny


def test_matches_diffusers_with_padded_text_and_svg_at_density_one(tmp_path):
    torch.manual_seed(0)
    model = diffusers.HunyuanVideoTransformer3DModel(**hunyuan.CONFIGS["tiny"]).eval()
    with torch.no_grad():  # every tensor random, norm weights and zero-initialised layers included
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    model.save_pretrained(tmp_path)
    module, params = from_diffusers(tmp_path)
    assert isinstance(module, hunyuan.HunyuanVideoTransformer)

    rng = np.random.default_rng(0)
    latents = rng.normal(size=(2, 3, 4, 6, 4)).astype(np.float32)  # [batch, frames, height, width, channels]
    text = rng.normal(size=(2, 7, 12)).astype(np.float32)
    pooled = rng.normal(size=(2, 8)).astype(np.float32)
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0  # the second prompt has 4 real tokens, 3 padding
    timestep, guidance = np.array([999.0, 250.0], np.float32), np.array([6000.0, 3500.0], np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(latents.transpose(0, 4, 1, 2, 3)), torch.from_numpy(timestep),
                         torch.from_numpy(text), torch.from_numpy(mask), torch.from_numpy(pooled),
                         guidance=torch.from_numpy(guidance)).sample.numpy().transpose(0, 2, 3, 4, 1)
    # SVG takes the padding as a static count for the whole batch: both prompts padded by 3 (18 video tokens, 4 real
    # text tokens, 3 padding; blocks of 8, so the real/padding boundary falls inside a block).
    svg = module.clone(attention_backend="svg", attention_options=dict(density=1.0, block_q=8, block_kv=8,
                                                                       implementation="reference"))
    same_padding = np.repeat(mask[1:], 2, axis=0)

    @jax.jit(compiler_options=FAST)
    def run(params, latents, timestep, text, pooled, guidance):
        """One dense trace on both masks (a batch of 4), one SVG trace: two programs to compile, not three."""
        def twice(x):
            return jnp.concatenate([x, x])
        dense = module.apply(params, twice(latents), twice(timestep), twice(text), pooled_projections=twice(pooled),
                             encoder_attention_mask=jnp.concatenate([mask, same_padding]), guidance=twice(guidance))
        sparse = svg.apply(params, latents, timestep, text, pooled_projections=pooled,
                           encoder_attention_mask=same_padding, guidance=guidance, text_padding=3,
                           rng=jax.random.key(0))
        return dense[:2], dense[2:], sparse

    out, dense_out, svg_out = run(params, *(jnp.asarray(x) for x in (latents, timestep, text, pooled, guidance)))
    assert out.shape == latents.shape == expected.shape
    # The bar is 1e-4; measured 4.2e-5, from the float32 sinusoids of timestep 999 and guidance 6000 (arguments in
    # the thousands of radians round differently in torch and XLA; at timesteps below 1 it is 1.4e-6).
    assert rel_err(out, expected) <= 1e-4, rel_err(out, expected)
    assert module.layout(latents.shape, 7, 3).real.seq_len == 22
    assert rel_err(svg_out, dense_out) < 1e-5


def test_the_13b_config_has_the_released_size():
    """HunyuanVideo's transformer, counted from shapes with jax.eval_shape: 12,821,012,544 here."""
    count = ports.num_params(hunyuan.named("13B"), hunyuan.PORT)
    assert 12.5e9 < count < 13.2e9, count
