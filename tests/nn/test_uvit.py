"""U-ViT: every tier builds from its gin file with the paper's parameter count (eval_shape: nothing allocated), every
parameter has logical axes, the scanned blocks equal a plain loop with skips popped in U-Net order, and the condition
tokens condition."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config
from jaxgen.nn import uvit
from jaxgen.nn.uvit import UViT

# tier: (parameters in Bao et al.'s table 1, the setting the official configs train it in: image shape, patch, labels
# (1001 = ImageNet + the null class of guidance; 0 = unconditional), output conv).
TIERS = {
    "uvit_tiny": (None, (32, 32, 3), 2, 10, True),
    "uvit_s": (44e6, (32, 32, 3), 2, 0, True),       # CIFAR-10
    "uvit_m": (131e6, (64, 64, 3), 4, 1000, True),   # ImageNet 64
    "uvit_l": (287e6, (32, 32, 4), 2, 1001, False),  # latent ImageNet 256
    "uvit_h": (501e6, (32, 32, 4), 2, 1001, False),  # latent ImageNet 256
}


def inputs(shape, num_classes, batch=2):
    x = jnp.zeros((batch, *shape))
    return x, jnp.zeros(batch), (jnp.zeros(batch, jnp.int32) if num_classes else None)


@pytest.mark.parametrize("tier", TIERS)
def test_tiers_have_the_papers_sizes_shapes_and_logical_axes(tier):
    paper_count, shape, patch, num_classes, conv = TIERS[tier]
    config.parse([f"configs/diffusion/model/{tier}.gin"], [])
    model = config.configured(UViT)(num_classes=num_classes, patch_size=patch, in_channels=shape[-1], conv=conv)
    x, t, y = inputs(shape, num_classes)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
    assert jax.eval_shape(model.apply, variables, x, t, y).shape == x.shape
    count = sum(np.prod(v.shape) for v in jax.tree.leaves(nn.unbox(variables)))
    if paper_count:
        assert abs(count / paper_count - 1) < 0.01, (tier, count)
    boxes = jax.tree.leaves(variables, is_leaf=lambda v: isinstance(v, nn.Partitioned))
    assert all(isinstance(b, nn.Partitioned) for b in boxes), "every parameter names its logical axes"
    specs = nn.get_partition_spec(variables)["params"]
    assert tuple(specs["in_blocks"]["attn"]["qkv"]["kernel"]) == ("layers", "embed", None, "heads", "kv")
    assert len(specs["mid_block"]["mlp"]["fc1"]["kernel"]) == 2


@pytest.fixture(scope="module")
def small():
    """One small conditional model, initialised once (compiling an init costs seconds on CPU)."""
    model = UViT(num_classes=5, embed_dim=32, depth=4, num_heads=2, patch_size=4, mlp_time_embed=True)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    t, y = jnp.array([3.0, 700.0]), jnp.array([1, 4])
    return model, jax.jit(model.init)(jax.random.key(0), x, t, y), (x, t, y)


def test_scan_equals_a_loop_with_skips_in_unet_order_and_remat_changes_nothing(small):
    model, variables, (x, t, y) = small
    captured = {}

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == "patch_embed":
            captured["patches"] = out
        return out

    with nn.intercept_methods(capture):
        out = model.apply(variables, x, t, y)
    remat = model.clone(remat=True)
    np.testing.assert_allclose(jax.jit(remat.apply)(variables, x, t, y), out, atol=1e-5)

    params = nn.unbox(variables)["params"]
    time_token = uvit.TimeEmbed(32, jnp.float32).apply({"params": params["time_embed"]},
                                                       uvit.timestep_embedding(t, 32))
    label_token = params["label_emb"]["embedding"][y]
    tokens = jnp.concatenate([label_token[:, None], time_token[:, None], captured["patches"]], axis=1)
    tokens = tokens + params["pos_embed"]
    options = dict(num_heads=2, mlp_ratio=4.0, qkv_bias=False, backend="dense", backend_options=None,
                   dtype=jnp.float32)
    h, skips = tokens, []
    for i in range(2):
        h, _ = uvit.Block(long_skip=False, **options).apply({"params": layer(params["in_blocks"], i)}, h)
        skips.append(h)
    h, _ = uvit.Block(long_skip=False, **options).apply({"params": params["mid_block"]}, h)
    for i in range(2):
        h, _ = uvit.Block(long_skip=True, **options).apply({"params": layer(params["out_blocks"], i)}, h, skips.pop())
    h = nn.LayerNorm(epsilon=1e-5).apply({"params": params["norm"]}, h)
    h = nn.Dense(4 * 4 * 3).apply({"params": params["decoder_pred"]}, h)[:, 2:]  # label and time tokens dropped
    h = uvit.unpatchify(h, (4, 4), 4, 3)
    expected = nn.Conv(3, (3, 3), padding=1).apply({"params": params["final_layer"]}, h)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def layer(stacked, i):
    return jax.tree.map(lambda a: a[i], stacked)


def test_time_and_label_tokens_condition_the_output(small):
    model, variables, (x, t, y) = small
    apply = jax.jit(model.apply)
    out = apply(variables, x, t, y)
    assert not np.allclose(out, apply(variables, x, t, (y + 1) % 5), atol=1e-4)
    assert not np.allclose(out, apply(variables, x, t + 100, y), atol=1e-4)
    assert set(variables["params"]["time_embed"]) == {"linear_1", "linear_2"}


def test_patchify_inverts_and_errors_name_the_problem():
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    tokens = uvit.patchify(x, 4)
    assert tokens.shape == (2, 6, 48)
    np.testing.assert_array_equal(tokens[0, 1], x[0, 0:4, 4:8].reshape(-1))  # row-major patches, channels last
    np.testing.assert_array_equal(uvit.unpatchify(tokens, (2, 3), 4, 3), x)
    model = UViT(num_classes=3, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ValueError, match=r"divisible by patch_size 2; got \(1, 7, 8, 3\)"):
        model.init(jax.random.key(0), *inputs((7, 8, 3), 3, batch=1))
    with pytest.raises(ValueError, match="labels y"):
        model.init(jax.random.key(0), *inputs((8, 8, 3), 0, batch=1))
    with pytest.raises(ValueError, match="must be even"):
        UViT(depth=3)
    with pytest.raises(ValueError, match="Unknown attention backend 'nope'"):
        UViT(embed_dim=32, depth=2, num_heads=2, attention_backend="nope").init(
            jax.random.key(0), *inputs((8, 8, 3), 0, batch=1))
