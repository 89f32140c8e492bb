"""Shared by the int4 matmul tests: data with activation outliers, the error measure, and CPU pinning for the
interpreted kernels."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import mosaic_gpu as plgpu

MOSAIC_INTERPRETER = hasattr(plgpu, "InterpretGPUParams")
NO_MOSAIC_INTERPRETER = "this JAX has no Mosaic GPU interpreter (plgpu.InterpretGPUParams, JAX >= 0.12)"


def random_data(seed, shape, outliers=True):
  """Normal data with a few large channels (the activation outliers SVDQuant deals with)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(np.float32)
  if outliers:
    x[..., rng.choice(shape[-1], max(1, shape[-1] // 32), replace=False)] *= 25.0
  return jnp.asarray(x)


class OnCpu:
  """Runs a test's arrays and interpreted kernels on the CPU device, also in a process whose default is a GPU.

  The Triton kernels' bodies interpreted with GPU arrays give wrong activation codes (XLA's GPU compilation of the
  interpreted body rewrites the int32 -> int8 narrowing of the rounded codes; experiments/bench/int4_matmul_notes.md).
  Interpret mode is a CPU debugging tool, so these tests check it there; the compiled kernels have their own tests.
  """

  def setUp(self):
    self.enterContext(jax.default_device(jax.devices("cpu")[0]))
    super().setUp()
