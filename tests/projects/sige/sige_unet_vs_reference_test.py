"""`sige.port.from_diffusers` + `SigeUNet` against diffusers' own `UNet2DModel` and `UNet2DConditionModel` on tiny
random configs (float32, CPU). Norm affines are perturbed so a swapped name cannot hide behind ones and zeros."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tests.support.numerics import rel_err
from tests.support.parity import require

torch = require("torch")
diffusers = require("diffusers")

from jaxgen.projects.sige.port import from_diffusers  # noqa: E402

FAST = {"xla_backend_optimization_level": 0}  # LLVM at -O0: compiles 2.4× faster on CPU; the run is tiny
DDPM = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4, attention_head_dim=8, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1)
SD = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
          norm_num_groups=4, cross_attention_dim=12, attention_head_dim=2)


def perturb(model):
    """Random norm affines too (diffusers initialises them to 1 and 0, which would hide a swapped name)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def test_ddpm_unet_matches_diffusers(tmp_path):
    torch.manual_seed(0)
    reference = perturb(diffusers.UNet2DModel(**DDPM).eval())
    reference.save_pretrained(tmp_path)
    module, params = from_diffusers(tmp_path)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    t = np.array([3, 750])
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample
    expected = expected.numpy().transpose(0, 2, 3, 1)
    out = jax.jit(module.apply, compiler_options=FAST)(params, jnp.asarray(x), jnp.asarray(t))
    assert rel_err(out, expected) <= 1e-4, rel_err(out, expected)


def test_sd_unet_matches_diffusers(tmp_path):
    torch.manual_seed(0)
    reference = perturb(diffusers.UNet2DConditionModel(**SD).eval())
    reference.save_pretrained(tmp_path)
    module, params = from_diffusers(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 4)).astype(np.float32)
    context = rng.normal(size=(2, 5, 12)).astype(np.float32)
    t = np.array([10, 900])
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                             encoder_hidden_states=torch.from_numpy(context)).sample
    expected = expected.numpy().transpose(0, 2, 3, 1)
    out = jax.jit(module.apply, compiler_options=FAST)(params, jnp.asarray(x), jnp.asarray(t),
                                                       jnp.asarray(context))
    assert rel_err(out, expected) <= 1e-4, rel_err(out, expected)
