"""The AutoMLP recommender: SRSMLP-style mixer branches over a left-padded item history, mixed by architecture weights.

Every branch is a stack of mixer layers over the item embeddings of some window of the history: a sequence mixer (an
MLP across positions, so it is position-aware without position embeddings) and a channel mixer (an MLP across
features), each with a pre-LayerNorm and a residual. The long-term branch sees all `max_len` positions; one
short-term branch per candidate window `k` sees the last `k`. The short-term representation is the softmax(alpha)
weighted sum of the candidates', so alpha (the parameter `arch_alpha`, a top-level parameter, claimed by the pattern
`ARCH_PATTERN` for `jaxgen.core.optim.param_groups`) is what the bilevel search moves. With one window there is
nothing to search: that is the fixed-k mixer baseline. Scores over all items are dot products with the item
embeddings (tied), PAD's score is -inf, and the loss is the full-softmax cross-entropy.

Linear in the sequence length: the sequence mixer maps `positions -> sequence_hidden -> positions` with a fixed
hidden width, so a layer costs O(L · sequence_hidden · features) where self-attention costs O(L² · features).
(A hidden width proportional to L, as in the image MLP-Mixer, would make it quadratic too.)

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

PAD = 0  # the padding item id; real items are 1..num_items
ARCH_PATTERN = r"^arch_alpha$"


def score_items(embed: nn.Embed, user: jax.Array) -> jax.Array:
    """Scores [batch, num_items + 1] of every item for user representations [batch, features] (tied embeddings);
    PAD can never be predicted."""
    return embed.attend(user).at[:, PAD].set(-jnp.inf)


class MixerLayer(nn.Module):
    """A sequence mixer then a channel mixer over [batch, positions, features], padding kept at zero."""

    sequence_hidden: int = 64
    expansion: int = 2
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
        keep = mask[..., None].astype(x.dtype)
        positions, features = x.shape[-2:]
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        y = nn.LayerNorm(name="sequence_norm")(x) * keep
        y = nn.Dense(self.sequence_hidden, name="sequence_in")(jnp.swapaxes(y, -1, -2))
        y = nn.Dense(positions, name="sequence_out")(nn.gelu(y))
        x = (x + drop(jnp.swapaxes(y, -1, -2))) * keep
        y = nn.Dense(features * self.expansion, name="channel_in")(nn.LayerNorm(name="channel_norm")(x))
        y = nn.Dense(features, name="channel_out")(nn.gelu(y))
        return (x + drop(y)) * keep


class Branch(nn.Module):
    """`depth` mixer layers over a window; the representation is the newest position's (always a real item)."""

    depth: int = 2
    sequence_hidden: int = 64
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.depth):
            x = MixerLayer(self.sequence_hidden, dropout_rate=self.dropout_rate, name=f"layer_{i}")(x, mask, train)
        return nn.LayerNorm(name="out_norm")(x[:, -1])


class AutoMLP(nn.Module):
    """Scores [batch, num_items + 1] (column PAD = 0 is -inf) for histories [batch, max_len] of item ids."""

    num_items: int
    features: int = 64
    depth: int = 2
    windows: Sequence[int] = (1, 2, 4, 8)
    sequence_hidden: int = 64
    dropout_rate: float = 0.0

    def setup(self):
        if not self.windows:
            raise ValueError("AutoMLP needs at least one short-term window length")
        self.embed = nn.Embed(self.num_items + 1, self.features, name="item_embedding")
        self.long_term = Branch(self.depth, self.sequence_hidden, self.dropout_rate, name="long_term")
        self.short_term = [Branch(self.depth, self.sequence_hidden, self.dropout_rate, name=f"short_term_{k}")
                           for k in self.windows]
        self.arch_alpha = self.param("arch_alpha", nn.initializers.zeros, (len(self.windows),))
        self.combine = nn.Dense(self.features, name="combine")
        self.embedding_dropout = nn.Dropout(self.dropout_rate)

    def architecture_weights(self) -> jax.Array:
        """softmax(alpha): the weight of each candidate window in `windows` order."""
        return jax.nn.softmax(self.arch_alpha)

    def __call__(self, history: jax.Array, mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        max_len = history.shape[-1]
        if max(self.windows) > max_len:
            raise ValueError(f"Window lengths {tuple(self.windows)} exceed the history length {max_len}")
        mask = history != PAD if mask is None else mask
        x = self.embedding_dropout(self.embed(history), deterministic=not train) * mask[..., None]
        long_term = self.long_term(x, mask, train)
        short = jnp.stack([branch(x[:, -k:], mask[:, -k:], train)
                           for branch, k in zip(self.short_term, self.windows)])
        short_term = jnp.tensordot(self.architecture_weights(), short, axes=1)
        user = self.combine(jnp.concatenate([long_term, short_term], axis=-1))
        return score_items(self.embed, user)


def cross_entropy(scores: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean full-softmax cross-entropy of the target items."""
    return optax.softmax_cross_entropy_with_integer_labels(scores, targets).mean()
