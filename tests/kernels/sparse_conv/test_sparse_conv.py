"""The fused sparse conv site against its jnp reference, and the reference against a dense conv.

In the style of jax's tests/pallas/gpu_ops_test.py: the base class runs the compiled Triton-lowered kernel where a GPU
is present (skipped elsewhere); the subclass runs the same cases on the kernel body in interpret mode on CPU. Shapes
stay tiny (maps of about 12², 16-32 channels, a handful of tiles) so each interpreted case takes a few seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.sparse_conv import BlockSizes, sparse_conv, unsupported
from pallas_kernels.sparse_conv import ops
from pallas_kernels.sparse_conv import reference
from support.numerics import rel_err

# Each case: the site's geometry and what precedes / follows its conv. Sizes are chosen so some tiles run past the
# output's edge (12 × 10 with 4×4 tiles; odd inputs with stride 2), and the tile lists hold padding slots.
_CASES = {
    # A ResBlock's conv2 on a skip concatenation: two parts, GroupNorm scale / shift, SiLU, bias, residual.
    "3x3_parts_norm_silu_residual": dict(shape=(2, 12, 10), channels=(16, 16), cout=32, size=3, stride=1, tile=4,
                                         upsample=1, norm=True, activation="silu", bias=True, residual=True,
                                         tiles=[(0, 0), (2, 2), (1, 1), (0, 2)], slots=6),
    # A downsampler: 3×3 stride 2, 2×2 output tiles, odd input size.
    "3x3_stride2": dict(shape=(1, 13, 11), channels=(16,), cout=16, size=3, stride=2, tile=2, upsample=1, norm=False,
                        activation=None, bias=True, residual=False, tiles=[(0, 0), (3, 2), (1, 2), (2, 0), (3, 0)],
                        slots=8),
    # A 1×1 shortcut over a skip concatenation.
    "1x1_parts": dict(shape=(2, 8, 12), channels=(16, 32), cout=16, size=1, stride=1, tile=4, upsample=1, norm=False,
                      activation=None, bias=False, residual=False, tiles=[(1, 2), (0, 0)], slots=2),
    # An upsampler: nearest 2× read straight from the low-resolution map, then a 3×3 conv.
    "3x3_upsample": dict(shape=(1, 5, 6), channels=(32,), cout=16, size=3, stride=1, tile=4, upsample=2, norm=True,
                         activation="relu", bias=True, residual=False, tiles=[(2, 0), (0, 2), (1, 1)], slots=4),
}
_TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _operands(case, dtype, seed=0):
  rng = np.random.default_rng(seed)
  batch, h, w = case["shape"]
  size, stride, cout, up = case["size"], case["stride"], case["cout"], case["upsample"]
  padding = size // 2
  out_h, out_w = (reference.output_size(s * up, size, stride, padding) for s in (h, w))
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
  channels = sum(case["channels"])
  parts = tuple(normal(batch, h, w, c).astype(dtype) for c in case["channels"])
  tiles = np.zeros((case["slots"], 2), np.int32)
  tiles[:len(case["tiles"])] = case["tiles"]
  kwargs = dict(stride=stride, padding=padding, tile=case["tile"], upsample=up, activation=case["activation"])
  if case["norm"]:
    kwargs.update(scale=1 + 0.3 * normal(batch, channels), shift=0.3 * normal(batch, channels))
  if case["bias"]:
    kwargs["bias"] = (0.1 * normal(cout)).astype(dtype)
  if case["residual"]:
    kwargs["residual"] = normal(batch, out_h, out_w, cout).astype(dtype)
  kernel = (normal(size, size, channels, cout) / np.sqrt(size * size * channels)).astype(dtype)
  cached = normal(batch, out_h, out_w, cout).astype(dtype)
  return parts, jnp.asarray(tiles), len(case["tiles"]), kernel, cached, kwargs


def _dense_expected(parts, tiles, count, kernel, cached, kwargs):
  """The dense conv of the whole pre-activated map, taken on the active tiles' pixels, `cached` elsewhere."""
  x = jnp.concatenate(parts, axis=-1).astype(jnp.float32)
  up, tile, padding = kwargs["upsample"], kwargs["tile"], kwargs["padding"]
  x = jnp.repeat(jnp.repeat(x, up, axis=1), up, axis=2)
  if "scale" in kwargs:
    x = x * kwargs["scale"][:, None, None, :] + kwargs["shift"][:, None, None, :]
  if kwargs["activation"] is not None:
    x = reference.ACTIVATIONS[kwargs["activation"]](x)
  out = jax.lax.conv_general_dilated(x, kernel.astype(jnp.float32), (kwargs["stride"],) * 2, ((padding, padding),) * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out = out + kwargs.get("bias", jnp.zeros(())).astype(jnp.float32)
  out = out + kwargs.get("residual", jnp.zeros(())).astype(jnp.float32)
  mask = np.zeros(cached.shape[1:3], bool)
  for ty, tx in np.asarray(tiles)[:count]:
    mask[ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile] = True
  return jnp.where(mask[None, :, :, None], out, cached.astype(jnp.float32)), mask


@pytest.mark.parametrize("name", list(_CASES))
def test_reference_equals_a_dense_conv_on_the_active_tiles(name):
  parts, tiles, count, kernel, cached, kwargs = _operands(_CASES[name], jnp.float32)
  out = sparse_conv(parts, tiles, count, kernel, cached, implementation="reference", **kwargs)
  expected, mask = _dense_expected(parts, tiles, count, kernel, cached, kwargs)
  assert 0 < mask.sum() < mask.size
  np.testing.assert_allclose(out, expected, atol=1e-5)


class TestSparseConvKernel:
  """The Pallas kernel against the reference; compiled, so it needs a GPU."""

  INTERPRET = False

  @pytest.fixture(autouse=True)
  def _needs_backend(self):
    if not self.INTERPRET and jax.default_backend() != "gpu":
      pytest.skip("the compiled kernel needs a GPU; TestSparseConvKernelInterpret runs the same cases on CPU")

  @property
  def implementation(self):
    return "triton_interpret" if self.INTERPRET else "triton"

  @pytest.mark.parametrize("name, dtype", [(name, jnp.float32) for name in _CASES]
                           + [("3x3_parts_norm_silu_residual", jnp.bfloat16)])
  def test_kernel_matches_reference(self, name, dtype):
    parts, tiles, count, kernel, cached, kwargs = _operands(_CASES[name], dtype)
    out = sparse_conv(parts, tiles, count, kernel, cached, implementation=self.implementation, **kwargs)
    ref = sparse_conv(parts, tiles, count, kernel, cached, implementation="reference", **kwargs)
    assert out.shape == cached.shape and out.dtype == cached.dtype
    assert rel_err(out, ref) < _TOLERANCE[dtype]
    _, mask = _dense_expected(parts, tiles, count, kernel, cached, kwargs)
    np.testing.assert_array_equal(np.asarray(out)[:, ~mask], np.asarray(cached)[:, ~mask])

  def test_small_blocks_split_channels_and_tiles(self):
    # 16-row programs (one 4×4 tile each) and 16-channel steps: several K steps per part, several N blocks.
    parts, tiles, count, kernel, cached, kwargs = _operands(_CASES["3x3_parts_norm_silu_residual"], jnp.float32, 1)
    blocks = BlockSizes(rows=16, block_n=16, block_k=16)
    out = sparse_conv(parts, tiles, count, kernel, cached, implementation=self.implementation, block_sizes=blocks,
                      **kwargs)
    ref = sparse_conv(parts, tiles, count, kernel, cached, implementation="reference", **kwargs)
    assert rel_err(out, ref) < _TOLERANCE[jnp.float32]


  def test_no_active_tile_leaves_the_cached_map(self):
    parts, tiles, _, kernel, cached, kwargs = _operands(_CASES["1x1_parts"], jnp.float32)
    out = sparse_conv(parts, tiles, 0, kernel, cached, implementation=self.implementation, **kwargs)
    np.testing.assert_array_equal(out, cached)


class TestSparseConvKernelInterpret(TestSparseConvKernel):
  """The same kernel body in Pallas' interpreter on CPU."""

  INTERPRET = True


def test_bad_operands_fail_clearly():
  parts, tiles, count, kernel, cached, kwargs = _operands(_CASES["3x3_parts_norm_silu_residual"], jnp.float32)
  with pytest.raises(ValueError, match="kernel must be"):
    sparse_conv(parts, tiles, count, kernel[:, :, :16], cached, **kwargs)
  with pytest.raises(ValueError, match="cached must have shape"):
    sparse_conv(parts, tiles, count, kernel, cached[:, :8], **kwargs)
  with pytest.raises(ValueError, match="scale and shift"):
    sparse_conv(parts, tiles, count, kernel, cached, **{**kwargs, "shift": None})
  with pytest.raises(ValueError, match="idx must be"):
    sparse_conv(parts, tiles[:, :1], count, kernel, cached, **kwargs)
  with pytest.raises(ValueError, match="activation"):
    sparse_conv(parts, tiles, count, kernel, cached, **{**kwargs, "activation": "tanh"})
  with pytest.raises(ValueError, match="bf16/f16/f32"):
    sparse_conv(tuple(p.astype(jnp.int32) for p in parts), tiles, count, kernel, cached, **kwargs)
  with pytest.raises(ValueError, match="multiples of 16"):
    sparse_conv(parts[0][..., :3], tiles, count, kernel[:, :, :3], cached, implementation="triton_interpret",
                **{**kwargs, "scale": None, "shift": None, "residual": None})
  with pytest.raises(ValueError, match="unknown implementation"):
    unsupported((16,), 16, 4, "cuda_graphs")


def test_limits_of_the_kernel_are_reported_not_hidden():
  assert unsupported((16, 32), 64, 4, "triton") is None
  assert "multiples of 16" in unsupported((3,), 128, 4, "triton")   # an RGB conv_in
  assert "multiples of 16" in unsupported((128,), 3, 4, "triton")   # an RGB conv_out
  assert "power of two" in unsupported((16,), 16, 3, "triton")
  assert unsupported((3,), 3, 3, "reference") is None
  assert ops.DEFAULT_BY_PLATFORM["gpu"] == "triton" and ops.DEFAULT_BY_PLATFORM["cpu"] == "reference"


# Full-size sites of the DDPM (128-512 channels, skip concatenations) and SD (320-1280) UNets: (parts' channels,
# output channels, kernel, stride, tile, upsample, dtype).
_FULL_SIZE_SITES = [
    ((256, 128), 128, 3, 1, 4, 1, jnp.float32),
    ((128,), 128, 3, 2, 2, 1, jnp.float32),
    ((512, 256), 512, 1, 1, 4, 1, jnp.float32),
    ((256,), 256, 3, 1, 4, 2, jnp.float32),
    ((640, 320), 320, 3, 1, 4, 1, jnp.bfloat16),
]


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("channels, cout, size, stride, tile, upsample, dtype", _FULL_SIZE_SITES)
def test_triton_lowering_takes_full_size_sites(monkeypatch, channels, cout, size, stride, tile, upsample, dtype):
  """Lowers the kernel to Triton IR for an H100 on any host: every operation of the body must have a Triton lowering
  rule (what the interpreter cannot tell). The PTX compile itself happens only on a GPU."""
  try:
    from jax._src import gpu_info
    from jax._src.pallas.triton import pallas_call_registration
    h100 = gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H100)
  except (ImportError, AttributeError) as missing:
    pytest.skip(f"this JAX lays out its GPU-info internals differently ({missing})")
  monkeypatch.setattr(pallas_call_registration.gpu_info_lib, "get_gpu_info", lambda: h100)
  low = 64 // upsample
  parts = tuple(jax.ShapeDtypeStruct((1, low, low, c), dtype) for c in channels)
  out = reference.output_size(64, size, stride, size // 2)
  cached = jax.ShapeDtypeStruct((1, out, out, cout), dtype)
  norm = jax.ShapeDtypeStruct((1, sum(channels)), jnp.float32)

  def site(idx, count, parts, kernel, bias, cached, scale, shift, residual):
    return ops.IMPLEMENTATIONS["triton"](
        idx, count, parts, kernel, bias, cached, scale, shift, residual, blocks=ops.tuning.DEFAULT,
        static=dict(activation="silu", stride=stride, padding=size // 2, tile=tile, upsample=upsample))

  lowered = jax.jit(site).trace(
      jax.ShapeDtypeStruct((32, 2), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32), parts,
      jax.ShapeDtypeStruct((size, size, sum(channels), cout), dtype), jax.ShapeDtypeStruct((cout,), dtype), cached,
      norm, norm, cached).lower(lowering_platforms=("cuda",))
  assert "sige_sparse_conv" in lowered.as_text()
