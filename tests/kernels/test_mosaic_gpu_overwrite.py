"""`wgmma_overwriting` lowers to a wgmma whose first instruction has scale-d = 0, and leaves every other wgmma alone.

Checked on the CPU: the kernels are lowered for CUDA (no GPU needed) while a recorder stands between Mosaic's
wgmma.py and the `llvm` dialect, listing each wgmma inline-asm instruction as it is emitted, with its scale-d operand
and where its accumulator inputs come from. That the overwrite gives the right numbers is checked by the kernels'
own tests on an H100.
"""

import importlib

import jax
import jax.numpy as jnp
import pytest
from jax._src.lib.mlir import ir
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import mosaic_gpu_compat as compat
from pallas_kernels import mosaic_gpu_overwrite
from pallas_kernels.int4_matmul import kernel_mosaic_gpu

OVERWRITES, ACCUMULATES = "overwrites", "accumulates"


class _Recorder:
  """Passes every `llvm` dialect call through, noting each wgmma instruction: (OVERWRITES or ACCUMULATES, whether
  every accumulator input is undefined)."""

  def __init__(self, llvm):
    self._llvm, self.instructions = llvm, []

  def __getattr__(self, name):
    return getattr(self._llvm, name)

  def inline_asm(self, result, operands, asm, constraints, **kwargs):
    if "wgmma.mma_async" in asm:
      fields = constraints.split(",")
      scale_d = operands[len(operands) - fields.count("n")].owner
      outputs = sum(field.startswith("=") for field in fields)
      undefined = all(v.owner.name == "llvm.mlir.undef" for v in operands[:outputs])
      kind = OVERWRITES if ir.IntegerAttr(scale_d.attributes["value"]).value == 0 else ACCUMULATES
      self.instructions.append((kind, undefined))
    return self._llvm.inline_asm(result, operands, asm, constraints, **kwargs)


@pytest.fixture
def wgmma_instructions(monkeypatch):
  """fn, *avals -> the wgmma instructions of fn's Mosaic GPU kernel lowered for CUDA, in program order."""
  assert mosaic_gpu_overwrite.install()
  stand_in = importlib.import_module("jax.experimental.mosaic.gpu.wgmma").llvm

  def lower(fn, *avals):
    recorder = _Recorder(stand_in._llvm)  # pylint: disable=protected-access
    monkeypatch.setattr(stand_in, "_llvm", recorder)
    jax.jit(fn).trace(*avals).lower(lowering_platforms=("cuda",))
    monkeypatch.undo()
    return recorder.instructions

  return lower


def test_installs_on_this_jax():
  assert mosaic_gpu_overwrite.install()


def test_only_the_first_instruction_of_a_marked_wgmma_overwrites(wgmma_instructions):
  # bf16 64 x 64 x 64 with a 128-byte swizzle: 4 instructions (k = 16 each) per wgmma.
  def body(a_ref, b_ref, out_ref, a_smem, b_smem, out_smem, loaded):
    plgpu.copy_gmem_to_smem(a_ref, a_smem, loaded)
    plgpu.copy_gmem_to_smem(b_ref, b_smem, loaded)
    plgpu.barrier_wait(loaded)

    def scope(acc_ref):
      mosaic_gpu_overwrite.wgmma_overwriting(acc_ref, a_smem, b_smem)
      plgpu.wgmma(acc_ref, a_smem, b_smem)
      return acc_ref[...]

    out_smem[...] = pl.run_scoped(scope, plgpu.ACC((64, 64), jnp.float32))
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(out_smem, out_ref)
    plgpu.wait_smem_to_gmem(0)

  tile = plgpu.SMEM((64, 64), jnp.bfloat16, transforms=compat.smem_tiles(jnp.bfloat16))
  kernel = compat.launch(body, out=jax.ShapeDtypeStruct((64, 64), jnp.float32),
                         scratch=[tile, tile, plgpu.SMEM((64, 64), jnp.float32), plgpu.Barrier(num_arrivals=2)],
                         grid=(1,), grid_names=("x",), num_threads=1)
  operand = jax.ShapeDtypeStruct((64, 64), jnp.bfloat16)
  assert wgmma_instructions(kernel, operand, operand) == (
      [(OVERWRITES, True)] + [(ACCUMULATES, False)] * 3 + [(ACCUMULATES, False)] * 4)


def test_int4_gemm_overwrites_once_per_group_and_in_the_low_rank_epilogue(wgmma_instructions):
  # e4m3, group 64: one 64-deep step per group, two instructions (k = 32) per step; the low-rank product (bf16,
  # rank 64) comes last, four instructions.
  m, k, n, rank = 128, 512, 128, 64
  f8, f32, bf16 = jnp.float8_e4m3fn, jnp.float32, jnp.bfloat16

  def gemm(a, b, a_scales, b_scales, low, up):
    return kernel_mosaic_gpu.grouped_gemm(a, b, a_scales, b_scales, low, up, None, group_size=64,
                                          out_dtype=bf16, tile_n=128, stages=4)

  instructions = wgmma_instructions(
      gemm, jax.ShapeDtypeStruct((m, k), f8), jax.ShapeDtypeStruct((n, k), f8),
      jax.ShapeDtypeStruct((k // 64, m), f32), jax.ShapeDtypeStruct((k // 64, n), f32),
      jax.ShapeDtypeStruct((m, rank), bf16), jax.ShapeDtypeStruct((rank, n), bf16))
  grouped, epilogue = instructions[:-4], instructions[-4:]
  assert grouped and grouped == [(OVERWRITES, True), (ACCUMULATES, False)] * (len(grouped) // 2)
  assert epilogue == [(OVERWRITES, True)] + [(ACCUMULATES, False)] * 3
