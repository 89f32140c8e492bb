"""The video DiT: 3D RoPE's relative-position property, frame-major patches, the text/video split of its sequence
(SVG at density 1 must equal dense attention through the whole model), shapes and the size tiers in gin."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config
from jaxgen.nn.transformer import apply_rope
from jaxgen.projects.svg import VideoLayout
from jaxgen.projects.svg import model as model_lib


def test_rope_depends_only_on_relative_position():
    """<R(p) q, R(p') k> == <R(p + d) q, R(p' + d) k> for any 3D shift d that stays on the grid."""
    grid = (4, 3, 5)
    cos, sin = model_lib.rope_3d(grid, (4, 6, 6), theta=100.0)
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 16))
    index = lambda f, y, x: (f * grid[1] + y) * grid[2] + x  # frame-major

    def rotated_dot(p, p2):
        rq = apply_rope(q, cos[p:p + 1], sin[p:p + 1])
        rk = apply_rope(k, cos[p2:p2 + 1], sin[p2:p2 + 1])
        return float(jnp.sum(rq * rk))

    base = rotated_dot(index(0, 0, 1), index(1, 2, 3))  # displacement (1, 2, 2)
    for p, p2 in [((2, 0, 0), (3, 2, 2)), ((1, 0, 2), (2, 2, 4))]:
        assert rotated_dot(index(*p), index(*p2)) == pytest.approx(base, rel=1e-5)
    assert rotated_dot(index(0, 0, 1), index(1, 2, 4)) != pytest.approx(base, rel=1e-3)


def test_rope_preserves_norms_and_checks_shapes():
    cos, sin = model_lib.rope_3d((2, 2, 2), model_lib.rope_axis_dims(32))
    x = jax.random.normal(jax.random.key(1), (1, 8, 2, 32))
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(x, cos, sin), axis=-1),
                               jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    assert sum(model_lib.rope_axis_dims(128)) == 128
    with pytest.raises(ValueError, match=r"\(1, 7, 2, 32\)"):
        apply_rope(x[:, :7], cos, sin)
    with pytest.raises(ValueError, match="divisible by 8"):
        model_lib.rope_axis_dims(12)


def test_patches_are_frame_major_and_invertible():
    video = jax.random.normal(jax.random.key(2), (2, 4, 8, 12, 3))
    tokens = model_lib.patchify(video, (2, 4, 4))
    assert tokens.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3)
    # Token of patch (frame 1, row 0, column 2) = 1 * 6 + 0 * 3 + 2 = 8: frames 2-3, rows 0-3, columns 8-11.
    np.testing.assert_array_equal(tokens[0, 8].reshape(2, 4, 4, 3), video[0, 2:4, 0:4, 8:12])
    np.testing.assert_array_equal(model_lib.unpatchify(tokens, (2, 2, 3), (2, 4, 4), 3), video)


def _random_variables(model, video, t, caption):
    """Noise in every parameter (numpy: nothing to compile), so zero-initialised adaLN/output layers hide nothing."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), video, t, caption)
    rng = np.random.default_rng(3)
    return jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), shapes)


def test_output_shape_layout_and_caption_locality():
    """The sequence is [caption; frame-major video] as `layout` says (SVG at density 1 reproducing dense attention
    through this layout is tested in test_svg_task.py); each caption reaches only its own video."""
    model = model_lib.VideoDiT(vocab_size=16, width=32, depth=2, num_heads=2, patch=(2, 4, 4))
    video = jax.random.normal(jax.random.key(4), (2, 4, 16, 16, 3))
    t, caption = jnp.array([0.3, 0.9]), jnp.array([[3, 8, 12, 0], [1, 2, 3, 4]])
    assert model.layout(video.shape, 4) == VideoLayout(num_frames=2, frame_tokens=16, text_tokens=4, text_first=True)
    variables = _random_variables(model, video, t, caption)
    apply = jax.jit(model.apply)
    dense = apply(variables, video, t, caption)
    assert dense.shape == video.shape and dense.dtype == jnp.float32
    other = apply(variables, video, t, caption.at[0, 0].set(5))
    assert not np.allclose(other[0], dense[0]) and np.allclose(other[1], dense[1])


def test_remat_changes_memory_not_results():
    """`remat=True` (recompute each block in the backward) has the same parameters, outputs and gradients."""
    plain = model_lib.VideoDiT(vocab_size=16, width=32, depth=2, num_heads=2, patch=(2, 4, 4))
    remat = plain.clone(remat=True)
    video = jax.random.normal(jax.random.key(5), (1, 4, 16, 16, 3))
    t, caption = jnp.array([0.5]), jnp.array([[3, 8, 0, 0]])
    variables = _random_variables(plain, video, t, caption)
    assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), video, t, caption)) == jax.tree.structure(
        variables)

    def grads(model):
        return jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, video, t, caption) ** 2)))(variables)

    np.testing.assert_allclose(remat.apply(variables, video, t, caption), plain.apply(variables, video, t, caption),
                               rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(grads(remat)), jax.tree.leaves(grads(plain))):
        # recomputation reorders float sums: equal up to rounding relative to each gradient's scale
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max()))


def test_bad_video_shape_names_it():
    model = model_lib.VideoDiT(vocab_size=16)
    with pytest.raises(ValueError, match=r"\(1, 7, 32, 32, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 7, 32, 32, 3)), jnp.zeros(1), jnp.zeros((1, 8), jnp.int32))


@pytest.mark.parametrize("tier,low,high", [("dit_tiny", 0.9e6, 0.95e6), ("dit_small", 40e6, 46e6),
                                           ("dit_base", 165e6, 180e6), ("dit_hunyuan", 13e9, 14e9)])
def test_size_tiers_parse_and_count_parameters(tier, low, high):
    """Every tier builds from its gin file; counted with eval_shape, so the 13 B model allocates nothing."""
    config.parse([f"configs/svg/{tier}.gin"], [])  # clears whatever an earlier test parsed
    model = config.configured(model_lib.VideoDiT)()
    frames, size = model.patch[0], 8 * model.patch[1]
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, frames, size, size, model.in_channels)),
                            jnp.zeros(1), jnp.zeros((1, 8), jnp.int32))
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert low < count < high, count
