"""The baselines AutoMLP is measured against, on its pipeline: left-padded histories [batch, max_len] in, scores over
every item out (tied item embeddings, PAD at -inf, `model.score_items`), trained with the same full-softmax
cross-entropy. (The fixed-k mixer baseline is `AutoMLP` with one window.)

- `SASRec` (Kang & McAuley, 2018): learned position embeddings and causal self-attention blocks; the user is the
  newest position's output. Pre-LayerNorm blocks (attention, then a position-wise ReLU feed-forward net, each with a
  residual), a final LayerNorm, dropout on the embeddings and on both residual branches, padding rows zeroed after
  every block as in the original. Attention comes from `jaxgen.nn.attention.SelfAttention`, so its backend is a gin
  choice ("dense" for XLA, "cudnn" on a GPU).
- `GRU4Rec` (Hidasi et al., 2016), as RecBole runs it for next-item prediction: item embeddings with dropout, a GRU,
  and a dense layer from its hidden state to the item-embedding space. The GRU's state stays at zero through the
  left padding, so the newest item's state is the one a GRU over the real items alone would reach.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import SelfAttention
from jaxgen.projects.automlp.model import PAD, score_items


class SASRecBlock(nn.Module):
    heads: int
    dropout_rate: float
    attention_backend: str = "dense"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        keep = mask[..., None].astype(x.dtype)
        features = x.shape[-1]
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        positions = jnp.arange(x.shape[1])
        # a query sees itself and the real items before it
        allowed = (positions[None, :] <= positions[:, None])[None, None] & mask[:, None, None, :]
        y = SelfAttention(self.heads, features // self.heads, backend=self.attention_backend, name="attention")(
            nn.LayerNorm(name="attention_norm")(x), mask=allowed)
        x = (x + drop(y)) * keep
        y = nn.Dense(features, name="ffn_in")(nn.LayerNorm(name="ffn_norm")(x))
        y = nn.Dense(features, name="ffn_out")(drop(nn.relu(y)))
        return (x + drop(y)) * keep


class SASRec(nn.Module):
    """Scores [batch, num_items + 1] for histories [batch, max_len]; `max_len` sets the position table's size."""

    num_items: int
    max_len: int
    features: int = 64
    depth: int = 2
    heads: int = 1
    dropout_rate: float = 0.2
    attention_backend: str = "dense"

    @nn.compact
    def __call__(self, history: jax.Array, mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        if history.shape[-1] > self.max_len:
            raise ValueError(f"History length {history.shape[-1]} exceeds SASRec's position table ({self.max_len})")
        if self.features % self.heads:
            raise ValueError(f"features {self.features} is not a multiple of heads {self.heads}")
        mask = history != PAD if mask is None else mask
        embed = nn.Embed(self.num_items + 1, self.features, name="item_embedding")
        # positions count back from the newest item, so the newest has the same embedding at every history length
        positions = nn.Embed(self.max_len, self.features, name="position_embedding")(
            jnp.arange(history.shape[-1])[::-1])
        x = embed(history) * self.features ** 0.5 + positions
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x) * mask[..., None]
        for i in range(self.depth):
            x = SASRecBlock(self.heads, self.dropout_rate, self.attention_backend, name=f"block_{i}")(x, mask, train)
        return score_items(embed, nn.LayerNorm(name="out_norm")(x[:, -1]))


class _MaskedGRUStep(nn.Module):
    """One GRU step that keeps the state where the position is padding."""

    features: int

    @nn.compact
    def __call__(self, state: jax.Array, inputs: tuple[jax.Array, jax.Array]):
        x, real = inputs
        new_state, _ = nn.GRUCell(self.features, name="cell")(state, x)
        return jnp.where(real[:, None], new_state, state), None


class GRU4Rec(nn.Module):
    """Scores [batch, num_items + 1] for histories [batch, max_len]."""

    num_items: int
    features: int = 64
    hidden: int = 128
    dropout_rate: float = 0.2

    @nn.compact
    def __call__(self, history: jax.Array, mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        mask = history != PAD if mask is None else mask
        embed = nn.Embed(self.num_items + 1, self.features, name="item_embedding")
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(embed(history))
        scan = nn.scan(_MaskedGRUStep, variable_broadcast="params", split_rngs={"params": False}, in_axes=1)
        state, _ = scan(self.hidden, name="gru")(jnp.zeros((history.shape[0], self.hidden), x.dtype), (x, mask))
        return score_items(embed, nn.Dense(self.features, name="out")(state))
