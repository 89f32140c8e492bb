"""The AutoMLP recommender: SRSMLP-style mixer branches over a left-padded item history, mixed by architecture weights.

Every branch is a stack of mixer layers over the item embeddings of some window of the history: a sequence mixer (an
MLP across positions, so it is position-aware without position embeddings) and a channel mixer (an MLP across
features), each with a pre-LayerNorm and a residual. The long-term branch sees all `max_len` positions; one
short-term branch per candidate window `k` sees the last `k`. The short-term representation is the softmax(alpha)
weighted sum of the candidates', so alpha (the parameter `arch_alpha`, a top-level parameter, claimed by the pattern
`ARCH_PATTERN` for `jaxgen.core.optim.param_groups`) is what the bilevel search moves. Scores over all items are dot
products with the item embeddings (tied), PAD's score is -inf, and the loss is the full-softmax cross-entropy.

Padding never leaks in: the history's embeddings are zeroed at padding positions before every sequence mixer (the
LayerNorm's bias would otherwise turn a zero row into a non-zero one) and after every layer, so the output is the
same whatever item ids or embeddings sit at the padding positions.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgen.projects.automlp.data import PAD

ARCH_PATTERN = r"^arch_alpha$"


class MixerLayer(nn.Module):
    """A sequence mixer then a channel mixer over [batch, positions, features], padding kept at zero."""

    expansion: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        keep = mask[..., None].astype(x.dtype)
        positions, features = x.shape[-2:]
        y = nn.LayerNorm(name="sequence_norm")(x) * keep
        y = nn.Dense(positions * self.expansion, name="sequence_in")(jnp.swapaxes(y, -1, -2))
        y = nn.Dense(positions, name="sequence_out")(nn.gelu(y))
        x = (x + jnp.swapaxes(y, -1, -2)) * keep
        y = nn.Dense(features * self.expansion, name="channel_in")(nn.LayerNorm(name="channel_norm")(x))
        y = nn.Dense(features, name="channel_out")(nn.gelu(y))
        return (x + y) * keep


class Branch(nn.Module):
    """`depth` mixer layers over a window; the representation is the newest position's (always a real item)."""

    depth: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = MixerLayer(name=f"layer_{i}")(x, mask)
        return nn.LayerNorm(name="out_norm")(x[:, -1])


class AutoMLP(nn.Module):
    """Scores [batch, num_items + 1] (column PAD = 0 is -inf) for histories [batch, max_len] of item ids."""

    num_items: int
    features: int = 64
    depth: int = 2
    windows: Sequence[int] = (1, 2, 4, 8)

    def setup(self):
        if not self.windows:
            raise ValueError("AutoMLP needs at least one short-term window length")
        self.embed = nn.Embed(self.num_items + 1, self.features, name="item_embedding")
        self.long_term = Branch(self.depth, name="long_term")
        self.short_term = [Branch(self.depth, name=f"short_term_{k}") for k in self.windows]
        self.arch_alpha = self.param("arch_alpha", nn.initializers.zeros, (len(self.windows),))
        self.combine = nn.Dense(self.features, name="combine")

    def architecture_weights(self) -> jax.Array:
        """softmax(alpha): the weight of each candidate window in `windows` order."""
        return jax.nn.softmax(self.arch_alpha)

    def __call__(self, history: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        max_len = history.shape[-1]
        if max(self.windows) > max_len:
            raise ValueError(f"Window lengths {tuple(self.windows)} exceed the history length {max_len}")
        mask = history != PAD if mask is None else mask
        x = self.embed(history) * mask[..., None]
        long_term = self.long_term(x, mask)
        short = jnp.stack([branch(x[:, -k:], mask[:, -k:]) for branch, k in zip(self.short_term, self.windows)])
        short_term = jnp.tensordot(self.architecture_weights(), short, axes=1)
        user = self.combine(jnp.concatenate([long_term, short_term], axis=-1))
        scores = self.embed.attend(user)
        return scores.at[:, PAD].set(-jnp.inf)


def cross_entropy(scores: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean full-softmax cross-entropy of the target items."""
    return optax.softmax_cross_entropy_with_integer_labels(scores, targets).mean()
