"""The frame-major <-> token-major transform: the right permutation, an exact inverse, per-head selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import svg_brute_force as brute
from jaxgen.projects.svg import VideoLayout, to_frame_major, to_token_major
from jaxgen.projects.svg.layout import heads_to_frame_major, heads_to_token_major, token_major_position

LAYOUTS = [
    VideoLayout(num_frames=4, frame_tokens=16, text_tokens=8, text_first=True),
    VideoLayout(num_frames=3, frame_tokens=6, text_tokens=5, text_first=False),
    VideoLayout(num_frames=2, frame_tokens=9, text_tokens=0),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_token_major_is_the_brute_force_permutation(layout):
    positions = jnp.arange(layout.seq_len)
    moved = np.asarray(to_token_major(positions, layout, axis=0))
    np.testing.assert_array_equal(moved, brute.token_major_source(layout))
    np.testing.assert_array_equal(np.sort(moved), np.arange(layout.seq_len))


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_inverse_is_exact_on_every_axis_and_dtype(layout):
    x = jax.random.normal(jax.random.key(0), (2, layout.seq_len, 3, 4)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(to_frame_major(to_token_major(x, layout), layout), x)
    np.testing.assert_array_equal(to_token_major(to_frame_major(x, layout), layout), x)
    y = jnp.moveaxis(x, 1, 3)
    np.testing.assert_array_equal(to_frame_major(to_token_major(y, layout, axis=3), layout, axis=3), y)


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_token_major_position_tracks_each_token(layout):
    x = jnp.arange(layout.seq_len) * 10
    positions = jnp.arange(layout.seq_len)
    np.testing.assert_array_equal(to_token_major(x, layout, axis=0)[token_major_position(positions, layout)], x)


def test_only_temporal_heads_move_and_come_back():
    layout = LAYOUTS[0]
    x = jax.random.normal(jax.random.key(1), (2, layout.seq_len, 3, 4))
    flags = jnp.array([[True, False, True], [False, False, True]])
    moved = heads_to_token_major(x, flags, layout)
    for b in range(2):
        for h in range(3):
            expected = to_token_major(x[b, :, h], layout, axis=0) if flags[b, h] else x[b, :, h]
            np.testing.assert_array_equal(moved[b, :, h], expected)
    np.testing.assert_array_equal(heads_to_frame_major(moved, flags, layout), x)


def test_shape_errors_name_the_shapes():
    layout = LAYOUTS[0]
    with pytest.raises(ValueError, match=r"\(2, 70, 3, 4\)"):
        to_token_major(jnp.zeros((2, 70, 3, 4)), layout)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        heads_to_token_major(jnp.zeros((2, layout.seq_len, 3, 4)), jnp.zeros((2, 2), bool), layout)
