"""The MACs counter: exact on a matmul, loops counted `length` times (nested too, which XLA's cost analysis alone does
not), one adaLN-Zero DiT block and one condition-aware layer against hand counts, shapes only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxgen.nn import attention as nn_attention
from jaxgen.nn.dit import DiT
from jaxgen.nn.transformer import AdaLNZeroBlock
from jaxgen.projects.can import CAN, ConditionAwareDense
from jaxgen.projects.can.macs import count_macs

F32 = jnp.float32


def shape(*dims, dtype=F32):
    return jax.ShapeDtypeStruct(dims, dtype)


def test_a_matmul_is_counted_exactly():
    assert count_macs(lambda x, w: x @ w, shape(8, 16), shape(16, 4)) == 8 * 16 * 4


def test_nested_scans_are_counted_for_every_iteration():
    def twelve_matmuls(x, w):
        def outer(carry, _):
            return jax.lax.scan(lambda c, _: (c @ w, None), carry, None, length=3)[0], None
        return jax.lax.scan(outer, x, None, length=4)[0]

    assert count_macs(twelve_matmuls, shape(8, 16), shape(16, 16)) == pytest.approx(12 * 8 * 16 * 16, rel=1e-3)


def test_a_while_loop_is_refused():
    def loop(x):
        return jax.lax.while_loop(lambda c: c.sum() < 10.0, lambda c: c * 2.0, x)

    with pytest.raises(ValueError, match="while loop"):
        count_macs(loop, shape(4))


def test_dit_blocks_under_scan_add_up():
    x, t, y = shape(1, 16, 16, 3), shape(1), shape(1, dtype=jnp.int32)

    def macs(depth):
        model = DiT(num_classes=3, width=64, depth=depth, num_heads=2, in_channels=3)
        return count_macs(model.apply, jax.eval_shape(model.init, jax.random.key(0), x, t, y), x, t, y)

    one, two, four = macs(1), macs(2), macs(4)
    assert four - two == pytest.approx(2 * (two - one), rel=1e-3) and two - one > 0.9 * one / 2


def test_one_adaln_block_matches_a_hand_count():
    """Hand count of the block's matmuls for N tokens of width w: adaLN w·6w, qkv N·w·3w, scores and values
    2·N²·w, output N·w², MLP 2·N·w·4w. XLA adds the elementwise work (norms, GELU, softmax): a few per cent."""
    tokens, width = 64, 128
    block = AdaLNZeroBlock(width=width, num_heads=2)
    context = nn_attention.AttentionContext(num_layers=1)
    variables = jax.eval_shape(lambda: block.init(jax.random.key(0), jnp.zeros((1, tokens, width)), 0,
                                                  jnp.zeros((1, width)), None, None, context))
    macs = count_macs(lambda v, h, c: block.apply(v, h, 0, c, None, None, context), variables,
                      shape(1, tokens, width), shape(1, width))
    hand = (6 * width * width + tokens * width * 3 * width + 2 * tokens * tokens * width + tokens * width * width
            + 2 * tokens * width * 4 * width)
    assert hand <= macs <= 1.05 * hand


def test_a_condition_aware_dense_costs_its_generator_plus_the_per_sample_product():
    """Per sample: the generator (cond_dim · in · out) and the product with its own kernel (tokens · in · out)."""
    batch, tokens, width_in, width_out, cond_dim = 2, 32, 24, 16, 8
    layer = ConditionAwareDense(width_out, weights=CAN())
    x, cond = shape(batch, tokens, width_in), shape(batch, cond_dim)
    variables = jax.eval_shape(layer.init, jax.random.key(0), x, cond)
    hand = batch * (cond_dim + tokens) * width_in * width_out
    assert hand <= count_macs(layer.apply, variables, x, cond) <= 1.05 * hand
