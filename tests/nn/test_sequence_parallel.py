"""The "ulysses" sequence-parallel attention backend: on 4 forced host devices it equals the inner backend on one
device, for dense attention and for SVG (interpret-mode kernel, per-head profiling and layout inside), with text
tokens before or after the video, and for cross-attention to captions; bad head counts and a missing mesh are clear errors.

The 4-device cases run in one subprocess: XLA's host device count is fixed when jax starts (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxgen.nn.attention import attention
from support.launch import REPO, env

FOUR_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from jaxgen.core import mesh as mesh_lib
from jaxgen.nn.attention import AttentionContext, attention
from jaxgen.projects.svg import VideoLayout

assert jax.device_count() == 4
mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, fsdp=4, tensor=1))


def qkv(seq, heads, seed=0):  # numpy inputs: a jax.random program per shape would cost more than the cases
    return list(np.random.default_rng(seed).normal(size=(3, 2, seq, heads, 8)).astype(np.float32))


def both(q, k, v, context, **options):
    single = attention(q, k, v, context=context, **options)
    with jax.set_mesh(mesh):
        parallel = jax.jit(lambda q, k, v: attention(q, k, v, backend="ulysses", axis="fsdp", inner=options["backend"],
                                                     context=context,
                                                     **{n: o for n, o in options.items() if n != "backend"}))(q, k, v)
    return single, parallel


# dense, video only, then with 3 text tokens first (35 tokens: only the 32 video tokens are split)
for text, first in ((0, True), (3, True)):
    layout = VideoLayout(num_frames=4, frame_tokens=8, text_tokens=text, text_first=first)
    (out, _), (sp_out, _) = both(*qkv(layout.seq_len, 4), AttentionContext(video_layout=layout), backend="dense")
    np.testing.assert_allclose(sp_out, out, rtol=1e-5, atol=1e-6, err_msg=f"dense, text {text}")

# cross-attention (Wan's captions: 5 keys every device holds whole): no exchange, queries stay split
q, _, _ = qkv(32, 4)
_, k, v = qkv(5, 4, seed=2)
(out, _), (sp_out, _) = both(q, k, v, AttentionContext(), backend="dense")
np.testing.assert_allclose(sp_out, out, rtol=1e-5, atol=1e-6, err_msg="cross-attention")

# SVG with 5 text tokens last (HunyuanVideo's place), 8 heads: 2 per device; diagnostics come back whole
layout = VideoLayout(num_frames=4, frame_tokens=8, text_tokens=5, text_first=False)
context = AttentionContext(video_layout=layout, rng=jax.random.key(3))
q, k, v = qkv(layout.seq_len, 8, seed=1)
(out, aux), (sp_out, sp_aux) = both(q, k, v, context, backend="svg", density=0.5, num_sampled_rows=8, block_q=8,
                                    block_kv=8, implementation="interpret")
np.testing.assert_allclose(sp_out, out, rtol=1e-5, atol=1e-6, err_msg="svg")
assert sp_aux["head_is_temporal"].shape == (2, 8)
for name in ("head_is_temporal", "recall", "density"):
    np.testing.assert_allclose(sp_aux[name], aux[name], rtol=1e-6, err_msg=name)
assert float(aux["density"]) < 1.0  # the sparse path ran

# 6 heads do not split over 4 devices
try:
    with jax.set_mesh(mesh):
        attention(*qkv(32, 6), backend="ulysses", axis="fsdp")
    raise AssertionError("6 heads on 4 devices should fail")
except ValueError as error:
    assert "6 heads, not a multiple of 4" in str(error), error
print("ok")
"""


def test_ulysses_equals_one_device_for_dense_and_svg_on_four_devices():
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES], cwd=REPO, capture_output=True, text=True, timeout=280,
                          env=env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_ulysses_without_a_mesh_axis_is_a_clear_error():
    q = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="needs the option `axis`"):
        attention(q, q, q, backend="ulysses")
    with pytest.raises(ValueError, match="no mesh is set"):
        attention(q, q, q, backend="ulysses", axis="fsdp")
    with jax.set_mesh(jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))):
        with pytest.raises(ValueError, match=r"has axes \('data',\)"):
            attention(q, q, q, backend="ulysses", axis="fsdp")
