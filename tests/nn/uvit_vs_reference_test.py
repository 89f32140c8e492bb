"""`uvit.params_from_official` + `UViT` reproduce a PyTorch U-ViT whose state_dict has the official checkpoint's keys.

The reference below is written for this test from the paper (Bao et al. 2023, section 3: tokens [label, time,
patches] + learned positions, pre-LN blocks, long skips `Linear(concat(x, skip))`, linear head, unpatchify, 3 × 3
conv) and the official state_dict layout (parameter names, `qkv` features ordered (3, heads, head_dim), head output
ordered (patch row, patch column, channel)), not copied from baofff/U-ViT, whose libs/uvit.py imports the timm
package. It proves the mapping's transposes and reshapes; loading a real official checkpoint needs the internet
(Google Drive) and is left to where it exists.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from support.numerics import rel_err
from support.parity import require

torch = require("torch")
from torch import nn as tnn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from jaxgen.nn import uvit  # noqa: E402


class RefBlock(tnn.Module):
    def __init__(self, dim, heads, qkv_bias, long_skip):
        super().__init__()
        self.heads = heads
        self.skip_linear = tnn.Linear(2 * dim, dim) if long_skip else None
        self.norm1, self.norm2 = tnn.LayerNorm(dim), tnn.LayerNorm(dim)
        self.attn = tnn.Module()
        self.attn.qkv, self.attn.proj = tnn.Linear(dim, 3 * dim, bias=qkv_bias), tnn.Linear(dim, dim)
        self.mlp = tnn.Module()
        self.mlp.fc1, self.mlp.fc2 = tnn.Linear(dim, 4 * dim), tnn.Linear(4 * dim, dim)

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], -1))
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = x + self.attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class RefUViT(tnn.Module):
    def __init__(self, size, patch, channels, dim, depth, heads, num_classes):
        super().__init__()
        self.patch, self.channels, self.dim = patch, channels, dim
        self.patch_embed = tnn.Module()
        self.patch_embed.proj = tnn.Conv2d(channels, dim, patch, stride=patch)
        self.time_embed = tnn.Sequential(tnn.Linear(dim, 4 * dim), tnn.SiLU(), tnn.Linear(4 * dim, dim))
        self.label_emb = tnn.Embedding(num_classes, dim)
        self.pos_embed = tnn.Parameter(0.02 * torch.randn(1, 2 + (size // patch) ** 2, dim))
        self.in_blocks = tnn.ModuleList([RefBlock(dim, heads, True, False) for _ in range(depth // 2)])
        self.mid_block = RefBlock(dim, heads, True, False)
        self.out_blocks = tnn.ModuleList([RefBlock(dim, heads, True, True) for _ in range(depth // 2)])
        self.norm = tnn.LayerNorm(dim)
        self.decoder_pred = tnn.Linear(dim, patch * patch * channels)
        self.final_layer = tnn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, t, y):  # x NCHW
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        half = self.dim // 2
        angles = t[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / half)[None]
        time = self.time_embed(torch.cat([torch.cos(angles), torch.sin(angles)], -1))
        h = torch.cat([self.label_emb(y)[:, None], time[:, None], tokens], 1) + self.pos_embed
        skips = []
        for block in self.in_blocks:
            h = block(h)
            skips.append(h)
        h = self.mid_block(h)
        for block in self.out_blocks:
            h = block(h, skips.pop())
        h = self.decoder_pred(self.norm(h))[:, 2:]
        b, p, c = h.shape[0], self.patch, self.channels
        side = int(math.isqrt(h.shape[1]))
        h = h.reshape(b, side, side, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, side * p, side * p)
        return self.final_layer(h)


def test_official_state_dict_loads_and_matches_the_reference():
    torch.manual_seed(0)
    size, patch, channels, classes = 16, 4, 3, 7
    reference = RefUViT(size, patch, channels, dim=64, depth=4, heads=4, num_classes=classes).eval()
    model = uvit.UViT(num_classes=classes, patch_size=patch, in_channels=channels, embed_dim=64, depth=4,
                      num_heads=4, qkv_bias=True, mlp_time_embed=True)
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    params = uvit.params_from_official(state, model, (size, size, channels))

    x = torch.randn(3, channels, size, size)
    t, y = torch.tensor([1.0, 250.0, 999.0]), torch.tensor([0, 3, 6])
    with torch.no_grad():
        expected = reference(x, t, y).permute(0, 2, 3, 1).numpy()
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(x.permute(0, 2, 3, 1).numpy()), jnp.asarray(t.numpy()),
                               jnp.asarray(y.numpy()))
    assert rel_err(out, expected) < 1e-4


def test_a_checkpoint_of_another_configuration_is_refused_by_name():
    reference = RefUViT(16, 4, 3, dim=64, depth=4, heads=4, num_classes=7)
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    model = uvit.UViT(num_classes=7, patch_size=4, embed_dim=64, depth=4, num_heads=4, qkv_bias=True,
                      mlp_time_embed=False)
    try:
        uvit.params_from_official(state, model, (16, 16, 3))
    except ValueError as error:
        assert "time_embed.0.bias" in str(error) and "mlp_time_embed" in str(error)
    else:
        raise AssertionError("a checkpoint with a time MLP loaded into a model without one")
