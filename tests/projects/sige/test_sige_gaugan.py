"""The SPADE generator under the incremental engine: an edit of the semantic map recomputes only where the map
changed, and equals the dense generator there (running statistics) or a dense pass on the same statistics
(instance norm)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxgen.projects.sige import IncrementalEngine, SpadeGenerator, gaugan, random_params
from jaxgen.projects.sige.gaugan import nearest_resize

SIZE, CLASSES = 32, 4
FAST = {"xla_backend_optimization_level": 0}


def segmaps(batch=2):
    """One-hot maps of 4×4-pixel label cells, and the same with two cells' worth of pixels relabelled near a
    corner."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, CLASSES, (batch, SIZE // 4, SIZE // 4)), 4, 1), 4, 2)
    edited = labels.copy()
    edited[:, 1:3, 2:4] = (labels[:, 1:3, 2:4] + 1) % CLASSES
    return jax.nn.one_hot(labels, CLASSES), jax.nn.one_hot(edited, CLASSES)


# Two blocks: the first at 16² (dense: min_sparse_res=SIZE), the second upsampled to 32² and sparse. Dilation 14
# covers the edit's reach (fc and the first block spread it 5 pixels at 16², the second block 4 more at 32²); the
# 32² sites then run on 25 of their 64 tiles.
@pytest.mark.parametrize("norm, widths", [("batch", (8, 4)), ("instance", (8, 8))],
                         ids=["batch-learned-shortcut", "instance-identity-shortcut"])
def test_sparse_edit_equals_dense(norm, widths):
    module = SpadeGenerator(num_classes=CLASSES, block_channels=widths, upsample=(False, True), hidden=8, norm=norm)
    original, edited = segmaps()
    engine = IncrementalEngine(module, random_params(module, original), dilation=14, min_sparse_res=SIZE,
                               levels=(0.5, 1.0), compiler_options=FAST)
    before = engine.full(original)
    out = engine.edit(edited)                      # the difference mask comes from the one-hot maps
    assert engine.last_plan.level == 0.5
    assert {key: int(grid.sum()) for key, grid in engine.last_plan.active.items()} == {
        key: 25 for key in engine.last_plan.active}
    if norm == "batch":   # running statistics: convs and pointwise functions only, the plain dense generator
        reference = engine.full(edited, cache_id="dense")
        np.testing.assert_allclose(out, reference, atol=1e-5)
    else:                 # each map's own statistics: the sparse pass keeps the original's
        reference = engine.dense_with_cached_statistics(edited)
        np.testing.assert_allclose(out, reference, atol=1e-4)
    assert np.abs(np.asarray(reference) - np.asarray(before)).max() > 0.1   # the edit changed the output


def test_gaugan_shapes_and_bad_maps():
    module = gaugan(ngf=2, num_classes=5, upsampling="normal")
    assert module.block_channels == (32, 32, 32, 16, 8, 4, 2) and sum(module.upsample) == 5
    shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 128, 5), np.float32))
    assert set(shapes) == {"params", "batch_stats"}
    with pytest.raises(ValueError, match="one-hot NHWC maps with 5 classes"):
        jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 128, 4), np.float32))
    with pytest.raises(ValueError, match="must divide by 32"):
        jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 48, 128, 5), np.float32))
    with pytest.raises(ValueError, match="unknown norm"):
        SpadeGenerator(norm="group")
    assert nearest_resize(np.arange(16.0).reshape(1, 4, 4, 1), 2, 2)[0, :, :, 0].tolist() == [[0, 2], [8, 10]]
