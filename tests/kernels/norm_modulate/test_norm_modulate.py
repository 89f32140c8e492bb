"""The fused LayerNorm-modulate kernels against their jnp reference (and the reference against a float64 LayerNorm
by hand): forward, gradients through the custom_vjp, errors.

The base class runs the compiled Triton-lowered kernels and needs a GPU; the subclass runs the same tests on the
kernel bodies in interpret mode on CPU. Widths that are not powers of two (40, 48) exercise the padded lanes (masked
loads and stores past the width: compiled on an H100, a BlockSpec-masked first version got every row but the first
wrong while the interpreter got them right, so the compiled class is what settles them); sequences that are not multiples of the row blocks exercise the forward's masked rows and
the backward's zero padding; small blocks give the backward loop several steps and several splits. One more test
lowers the compiled kernels to Triton IR for an abstract H100, which needs no GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.norm_modulate import BlockSizes, layer_norm_modulate, layer_norm_modulate_reference
from pallas_kernels.norm_modulate import residual_layer_norm_modulate, residual_layer_norm_modulate_reference
from support.numerics import rel_err

_TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}
_BLOCKS = BlockSizes(rows_forward=4, rows_backward=2, splits=2)


def _inputs(shape, dtype, seed=0):
  batch, _, width = shape
  keys = jax.random.split(jax.random.key(seed), 4)
  x = (3.0 + 2.0 * jax.random.normal(keys[0], shape)).astype(dtype)  # an offset: the centring has work to do
  shift = (0.5 * jax.random.normal(keys[1], (batch, width))).astype(dtype)
  scale = (0.5 * jax.random.normal(keys[2], (batch, width))).astype(dtype)
  return x, shift, scale, jax.random.normal(keys[3], shape).astype(dtype)


def test_compiled_kernels_lower_to_triton_for_an_h100():
  """Without a GPU, the Pallas-to-Triton lowering (the step that refuses blocks whose size is not a power of two, or a
  primitive Triton lacks) still runs for an abstract H100: both ops, forward and backward, at DiT-XL/2's width 1152."""
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), abstract_device=device)
  x, row = jnp.zeros((2, 256, 1152), jnp.bfloat16), jnp.zeros((2, 1152), jnp.bfloat16)
  plain = lambda x, s, c: layer_norm_modulate(x, s, c, implementation="pallas_gpu")
  residual = lambda x, h, g, s, c: residual_layer_norm_modulate(x, h, g, s, c, implementation="pallas_gpu")
  with jax.sharding.use_abstract_mesh(mesh):
    for op, args in ((plain, (x, row, row)), (residual, (x, x, row, row, row))):
      step = lambda *a, op=op: (lambda out, vjp: vjp(out))(*jax.vjp(op, *a))
      text = jax.jit(step).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
      assert text.count("__gpu$xla.gpu.triton") == 2  # the forward and the backward kernel


class TestLayerNormModulate:
  """The compiled kernels; need a GPU."""

  INTERPRET = False

  @property
  def implementation(self):
    return "pallas_gpu_interpret" if self.INTERPRET else "pallas_gpu"

  @pytest.fixture(autouse=True)
  def _needs_backend(self):
    if not self.INTERPRET and jax.default_backend() != "gpu":
      pytest.skip("the compiled kernels need a GPU; the interpret subclass covers CPU")

  def _op(self, *args):
    return layer_norm_modulate(*args, 1e-5, implementation=self.implementation, block_sizes=_BLOCKS)

  @pytest.mark.parametrize("dtype, shape", [(jnp.float32, (2, 12, 40)),   # whole row blocks, 40 of 64 lanes
                                            (jnp.bfloat16, (3, 10, 48))])  # the last row block masked
  def test_forward_matches_the_reference(self, dtype, shape):
    x, shift, scale, _ = _inputs(shape, dtype)
    out = jax.jit(self._op)(x, shift, scale)
    ref = layer_norm_modulate_reference(x, shift, scale, 1e-5)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert rel_err(out, ref) < _TOLERANCE[dtype]
    if dtype == jnp.float32:
      x64 = np.asarray(x, np.float64)
      normed = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
      by_hand = normed * (1 + np.asarray(scale)[:, None]) + np.asarray(shift)[:, None]
      assert rel_err(ref, by_hand) < 1e-6

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_gradients_match_the_reference(self, dtype):
    """seq 10 with 2-row steps and 2 splits: the backward pads to 12 rows, each split loops 3 steps."""
    x, shift, scale, dy = _inputs((2, 10, 40), dtype, seed=1)
    ours = jax.jit(lambda *a: jax.vjp(self._op, *a)[1](dy))(x, shift, scale)
    want = jax.vjp(lambda *a: layer_norm_modulate_reference(*a, 1e-5), x, shift, scale)[1](dy)
    for got, expected in zip(ours, want):
      assert got.shape == expected.shape and got.dtype == expected.dtype
      assert rel_err(got, expected) < _TOLERANCE[dtype]

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_residual_variant_matches_the_reference_forward_and_backward(self, dtype):
    """z = x + gate * h and y = norm-modulate(z); both outputs carry cotangents (the stream goes on past the norm)."""
    x, shift, scale, dy = _inputs((2, 10, 40), dtype, seed=2)
    h, gate, _, dz = _inputs((2, 10, 40), dtype, seed=3)
    op = lambda *a: residual_layer_norm_modulate(*a, 1e-5, implementation=self.implementation, block_sizes=_BLOCKS)
    (z, y), grads = jax.jit(lambda *a: (lambda out, vjp: (out, vjp((dz, dy))))(*jax.vjp(op, *a)))(
        x, h, gate, shift, scale)
    (want_z, want_y), want_vjp = jax.vjp(lambda *a: residual_layer_norm_modulate_reference(*a, 1e-5), x, h, gate,
                                         shift, scale)
    for got, expected in zip((z, y, *grads), (want_z, want_y, *want_vjp((dz, dy)))):
      assert got.shape == expected.shape and got.dtype == expected.dtype
      assert rel_err(got, expected) < _TOLERANCE[dtype]

  def test_bad_shapes_dtypes_and_names_are_refused(self):
    x, shift, scale, _ = _inputs((2, 8, 16), jnp.float32)
    with pytest.raises(ValueError, match=r"got x \(2, 8, 16\), shift \(2, 15\), scale \(2, 16\)"):
      self._op(x, shift[:, :15], scale)
    with pytest.raises(ValueError, match=r"got x \(8, 16\)"):
      self._op(x[0], shift, scale)
    with pytest.raises(ValueError, match="bf16 / f16 / f32 arrays; got x int32"):
      self._op(x.astype(jnp.int32), shift, scale)
    with pytest.raises(ValueError, match=r"got x \(2, 8, 16\), h \(2, 8, 8\), gate \(2, 16\)"):
      residual_layer_norm_modulate(x, x[..., :8], shift, shift, scale, implementation=self.implementation)
    with pytest.raises(ValueError, match="implementation must be one of"):
      layer_norm_modulate(x, shift, scale, implementation="triton")


class TestLayerNormModulateInterpret(TestLayerNormModulate):
  """The kernel bodies interpreted on CPU."""

  INTERPRET = True
