"""`jaxgen.projects.dcae.from_diffusers` against diffusers' own `AutoencoderDC` on random weights (float32, CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.numerics import rel_err
from tests.support.parity import require

torch = require("torch")
diffusers = require("diffusers")

from jaxgen.projects.dcae import from_diffusers  # noqa: E402

# Every path of the port: an empty first stage (project-in and project-out downsample/upsample), ResBlocks with
# RMSNorm and with BatchNorm (the official decoders'), EfficientViT blocks with and without multi-scale aggregation,
# linear attention (8x8 = 64 positions > head_dim 16) and its quadratic form (4x4 = 16 <= 16), all four shortcuts.
PIXEL_SHUFFLE = dict(
    latent_channels=8, attention_head_dim=16,
    encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
    encoder_layers_per_block=(0, 1, 1, 1), decoder_layers_per_block=(0, 1, 2, 1),
    encoder_qkv_multiscales=((), (), (5,), ()), decoder_qkv_multiscales=((), (), (), (3,)),
    decoder_norm_types=("batch_norm", "batch_norm", "rms_norm", "rms_norm"),
    decoder_act_fns=("relu", "relu", "silu", "silu"),
)
# The other resampling blocks (stride-2 conv, nearest + conv) and a non-empty first stage.
INTERPOLATE = dict(
    latent_channels=4, attention_head_dim=8, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
    encoder_block_out_channels=(8, 16, 16), decoder_block_out_channels=(8, 16, 16),
    encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
    encoder_qkv_multiscales=((), (), ()), decoder_qkv_multiscales=((), (), ()),
    downsample_block_type="conv", upsample_block_type="interpolate",
)


def reference_model(config, seed: int = 0):
    """A random diffusers AutoencoderDC; norms and BatchNorm statistics randomised too (their init is 1 / 0)."""
    torch.manual_seed(seed)
    model = diffusers.AutoencoderDC(**config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "norm" in name and tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if name.endswith(("weight", "running_var"))
                             else 0.3 * torch.randn_like(tensor))
    return model


@pytest.mark.parametrize("config", [PIXEL_SHUFFLE, INTERPOLATE], ids=["pixel_shuffle", "interpolate"])
def test_encode_and_decode_match_diffusers(config, tmp_path):
    model = reference_model(config)
    model.save_pretrained(tmp_path)
    module, variables = from_diffusers(tmp_path)
    assert set(variables) == ({"params", "batch_stats"} if config is PIXEL_SHUFFLE else {"params"})

    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        latents_ref = model.encode(torch.from_numpy(images.transpose(0, 3, 1, 2))).latent
        decoded_ref = model.decode(latents_ref).sample
    latents_ref, decoded_ref = (t.numpy().transpose(0, 2, 3, 1) for t in (latents_ref, decoded_ref))

    encode = jax.jit(lambda v, x: module.apply(v, x, method="encode"))
    decode = jax.jit(lambda v, z: module.apply(v, z, method="decode"))
    latents, decoded = encode(variables, jnp.asarray(images)), decode(variables, jnp.asarray(latents_ref))
    f = 2 ** (len(config["encoder_block_out_channels"]) - 1)
    assert latents.shape == (2, 32 // f, 32 // f, config["latent_channels"]) == latents_ref.shape
    assert decoded.shape == images.shape == decoded_ref.shape
    # The port's bar is 1e-4; both measured about 4e-7 here (2026-12-07).
    assert rel_err(latents, latents_ref) <= 1e-5, rel_err(latents, latents_ref)
    assert rel_err(decoded, decoded_ref) <= 1e-5, rel_err(decoded, decoded_ref)


def test_a_tensor_the_module_does_not_use_is_an_error(tmp_path):
    model = reference_model(INTERPOLATE)
    model.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"encoder_layers_per_block": [\n    1,\n    1,\n    1\n  ]',
                                                            '"encoder_layers_per_block": [\n    1,\n    0,\n    1\n  ]')
    assert config != (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ValueError, match="map to nothing"):
        from_diffusers(tmp_path)
