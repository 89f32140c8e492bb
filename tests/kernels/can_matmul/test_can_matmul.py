"""The fused condition-aware product against the jnp reference (and against CAN's per-sample dense path): forward on
padded and unpadded shapes, gradients through the custom_vjp, errors.

The base class runs the compiled Pallas kernel and needs a GPU; the subclass runs the same tests on the Pallas body
in interpret mode on CPU, with 16-wide tiles so every test pads and loops over several tiles and contraction steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.can_matmul import BlockSizes
from pallas_kernels.can_matmul import can_matmul
from pallas_kernels.can_matmul import can_matmul_reference
from jaxgen.projects.can.layers import dense_per_sample

_TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(batch, rows, k, n, rank, dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(keys[0], (batch, rows, k)).astype(dtype)
  kernel = (jax.random.normal(keys[1], (k, n)) / np.sqrt(k)).astype(dtype)
  h = jax.random.normal(keys[2], (batch, rank)).astype(dtype)
  generator = (0.3 * jax.random.normal(keys[3], (rank, k, n)) / np.sqrt(k)).astype(dtype)
  return x, kernel, h, generator


def _rel_err(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.abs(a - b).max() / np.abs(b).max())


class TestCanMatmul:
  """The compiled kernel; needs a GPU."""

  INTERPRET = False
  BLOCKS = BlockSizes(block_m=64, block_n=64, block_k=64)

  @property
  def implementation(self):
    return "interpret" if self.INTERPRET else "pallas"

  @pytest.fixture(autouse=True)
  def _needs_backend(self):
    if not self.INTERPRET and jax.default_backend() != "gpu":
      pytest.skip("the compiled kernel needs a GPU; the interpret subclass covers CPU")

  @pytest.mark.parametrize("dtype, shape", [(jnp.float32, (2, 32, 48, 32, 8)),   # whole tiles, 3 K steps
                                            (jnp.float32, (3, 20, 40, 24, 3)),   # every axis padded, rank 3 -> 4
                                            (jnp.bfloat16, (2, 33, 32, 16, 8))])
  def test_forward_matches_reference_and_the_per_sample_dense_path(self, dtype, shape):
    x, kernel, h, generator = _inputs(*shape, dtype)
    out = jax.jit(lambda *a: can_matmul(*a, implementation=self.implementation, blocks=self.BLOCKS))(
        x, kernel, h, generator)
    ref = can_matmul_reference(x, kernel, h, generator)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert _rel_err(out, ref) < _TOLERANCE[dtype]
    if dtype == jnp.float32:
      stack = kernel[None] + jnp.einsum("br,rio->bio", h, generator)
      assert _rel_err(out, dense_per_sample(x, stack, None)) < _TOLERANCE[dtype]

  def test_gradients_match_the_reference(self):
    x, kernel, h, generator = _inputs(2, 20, 24, 16, 4, jnp.float32)
    target = jax.random.normal(jax.random.key(9), (2, 20, 16))
    loss = lambda fn: lambda *a: jnp.sum((fn(*a) - target) ** 2)
    ours = jax.grad(loss(lambda *a: can_matmul(*a, implementation=self.implementation, blocks=self.BLOCKS)),
                    argnums=(0, 1, 2, 3))(x, kernel, h, generator)
    want = jax.grad(loss(can_matmul_reference), argnums=(0, 1, 2, 3))(x, kernel, h, generator)
    for got, expected in zip(ours, want):
      assert _rel_err(got, expected) < 1e-5

  def test_bad_shapes_and_names_are_refused(self):
    x, kernel, h, generator = _inputs(2, 8, 16, 16, 4, jnp.float32)
    with pytest.raises(ValueError, match=r"generator \[rank, in, out\]; got .* generator \(3, 16, 16\)"):
      can_matmul(x, kernel, h, generator[:3], implementation=self.implementation)
    with pytest.raises(ValueError, match=r"got x \(2, 8, 15\)"):
      can_matmul(x[..., :15], kernel, h, generator, implementation=self.implementation)
    with pytest.raises(ValueError, match="implementation must be one of"):
      can_matmul(x, kernel, h, generator, implementation="triton")


class TestCanMatmulInterpret(TestCanMatmul):
  """The Pallas body interpreted on CPU, on 16-wide tiles."""

  INTERPRET = True
  BLOCKS = BlockSizes(block_m=16, block_n=16, block_k=16)
