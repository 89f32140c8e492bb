"""The few Pallas Mosaic GPU calls whose spelling changed between JAX 0.11 (the H100 machine) and 0.12 (CI).

Both kernel families (block-sparse attention, int4 matmul) go through these, so a kernel reads the same on either.
"""

import inspect

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.mosaic_gpu_overwrite import wgmma_overwriting

_KERNEL_PARAMS = inspect.signature(plgpu.kernel).parameters
_OUT_KW = "out_type" if "out_type" in _KERNEL_PARAMS else "out_shape"
_SCRATCH_KW = "scratch_types" if "scratch_types" in _KERNEL_PARAMS else "scratch_shapes"
_LOAD_TAKES_INDEX = "idx" in inspect.signature(plgpu.load).parameters


def is_hopper() -> bool:
  """Whether the default device is a Hopper GPU (compute capability 9.x), where the Mosaic GPU kernels run."""
  return str(getattr(jax.devices()[0], "compute_capability", "")).startswith("9")


def row_layout():
  """Layout of a per-row vector of a wgmma accumulator (one value per row)."""
  wgmma = plgpu.Layout.WGMMA
  return wgmma.reduce(1) if hasattr(wgmma, "reduce") else plgpu.Layout.WGMMA_ROW


def col_layout():
  """Layout of a per-column vector of a wgmma accumulator (one value per column)."""
  wgmma = plgpu.Layout.WGMMA
  return wgmma.reduce(0) if hasattr(wgmma, "reduce") else plgpu.Layout.WGMMA_COL


def transposed(ref):
  """A 2-D shared-memory ref viewed transposed (how wgmma reads a K-major right-hand operand)."""
  return ref.transpose((1, 0)) if hasattr(ref, "transpose") else plgpu.transpose_ref(ref, (1, 0))


def load(ref, layout):
  """The whole of `ref` into registers with `layout`."""
  return plgpu.load(ref, (), layout=layout) if _LOAD_TAKES_INDEX else plgpu.load(ref, layout=layout)


def launch(body, *, out, scratch, grid, grid_names, num_threads, interpret=False):
  """plgpu.kernel with warpgroup semantics, thread axis "wg", and approximate exp2 (the attention softmax).

  `interpret` runs the kernel in Pallas' Mosaic GPU interpreter (JAX >= 0.12; on CPU, for tests).
  """
  kwargs = {_OUT_KW: out, _SCRATCH_KW: scratch}
  if interpret:
    kwargs["interpret"] = plgpu.InterpretGPUParams()
  return plgpu.kernel(
      body, grid=grid, grid_names=grid_names, num_threads=num_threads, thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True,
                                           lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
      **kwargs)


def smem_tiles(dtype, swizzle=128):
  """Swizzled shared-memory tiles (rows of `swizzle` bytes), the layout wgmma reads without bank conflicts."""
  return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle))


def zeros(shape):
  """A float32 zero tile in the wgmma accumulator layout."""
  return plgpu.layout_cast(jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA)


def matmul(a, b, shape, dtype=jnp.float32):
  """a @ b on the tensor cores into a fresh accumulator of `shape` and `dtype` (written, not zeroed and added to)."""
  def scope(acc_ref):
    wgmma_overwriting(acc_ref, a, b)
    return acc_ref[...]
  return pl.run_scoped(scope, plgpu.ACC(shape, dtype))
