"""`wgmma_overwriting`: a Hopper wgmma that writes its accumulator instead of adding to it (PTX scale-d = 0).

Why: Pallas' `plgpu.wgmma` always accumulates, so a fresh `plgpu.ACC` is first filled with zeros. A kernel that
starts a new accumulator often pays for that: the int4 grouped GEMM starts one per 64-deep quantization group, and
zeroing 64 registers per thread and group was a large share of its instructions per group (SASS counts on an H100).
PTX `wgmma.mma_async` has a predicate, scale-d, that makes D = A @ B without reading D. With it, the zeros are dead
code and ptxas drops them (the GEMM's time before and after: experiments/bench/int4_matmul_notes.md).

How: Mosaic GPU emits scale-d = 1 unconditionally and has no switch for it, so this module extends its lowering.
`wgmma_overwriting` is `plgpu.wgmma` inside a `jax.named_scope` whose name reaches the Mosaic GPU dialect op as its
location; a wrapper around the dialect's wgmma lowering rule sees that name and, for the op's first wgmma
instruction only, passes scale-d = 0 and undefined accumulator inputs (the later instructions of the op accumulate),
through a thread-local flag read by a pass-through stand-in for the `llvm` module that Mosaic's wgmma.py emits
with. Every other wgmma lowers exactly as before. Both are installed once, on first use, at trace time.

Contract: use it only on a fresh accumulator (a `plgpu.ACC` from `pl.run_scoped` that nothing has written yet), where
overwriting and accumulating into zeros agree. That keeps every path exact that does not see the marker: the Mosaic
GPU interpreter, and a JAX whose internals moved (then `install()` returns False, warns once, and the kernels run
with zeroed accumulators, correct and slower). `tests/kernels/test_mosaic_gpu_overwrite.py` lowers a kernel for CUDA
on the CPU and checks which wgmma instructions get scale-d = 0, so a JAX upgrade that breaks this fails CI.
"""

import importlib
import threading
import warnings

import jax
from jax.experimental.pallas import mosaic_gpu as plgpu

SCOPE = "jaxgen_wgmma_overwrites"
_WGMMA_PTX = "wgmma.mma_async"
_installed = None  # None: not tried yet; then whether the lowering rule is wrapped
_pending = threading.local()  # .overwrite: the next wgmma instruction lowered on this thread overwrites


def wgmma_overwriting(acc_ref, a, b):
  """acc_ref = a @ b, started asynchronously like `plgpu.wgmma`; acc_ref must be a fresh accumulator."""
  install()
  with jax.named_scope(SCOPE):
    plgpu.wgmma(acc_ref, a, b)


class _LlvmWithOverwrite:
  """The `llvm` dialect module as Mosaic's wgmma.py sees it. Everything passes through, except the first wgmma
  inline-asm call after `_pending.overwrite` is set (on this thread): it gets scale-d = 0 and undefined accumulator
  inputs. A thread-local flag, not a swapped module, so that a kernel lowering on another thread is never touched."""

  def __init__(self, llvm, ir):
    self._llvm, self._ir = llvm, ir

  def __getattr__(self, name):
    return getattr(self._llvm, name)

  def inline_asm(self, result, operands, asm, constraints, **kwargs):
    if getattr(_pending, "overwrite", False) and _WGMMA_PTX in asm:
      _pending.overwrite = False
      fields = constraints.split(",")
      outputs = sum(field.startswith("=") for field in fields)
      # Operands: the accumulator registers (tied to the outputs), A, the B descriptor, then the immediates, of
      # which the first is scale-d (Mosaic's `wgmma_m64`: "setp.ne.b32 p, scale-d, 0").
      scale_d = len(operands) - fields.count("n")
      i32 = self._ir.IntegerType.get_signless(32)
      operands = [self._llvm.mlir_undef(v.type) for v in operands[:outputs]] + list(operands[outputs:])
      operands[scale_d] = self._llvm.ConstantOp(i32, self._ir.IntegerAttr.get(i32, 0)).result
    return self._llvm.inline_asm(result, operands, asm, constraints, **kwargs)


def install() -> bool:
  """Wraps Mosaic GPU's wgmma lowering rule (once); False, with a warning, where this JAX's internals differ."""
  global _installed
  if _installed is not None:
    return _installed
  try:
    from jax._src.lib.mlir import ir  # pylint: disable=g-import-not-at-top
    dialect_lowering = importlib.import_module("jax.experimental.mosaic.gpu.dialect_lowering")
    wgmma_module = importlib.import_module("jax.experimental.mosaic.gpu.wgmma")
    op_name = dialect_lowering.mgpu.WGMMAOp.OPERATION_NAME
    plain_rule = dialect_lowering._lowerings[op_name]  # pylint: disable=protected-access
    llvm = wgmma_module.llvm
    for name in ("mlir_undef", "ConstantOp", "inline_asm"):
      getattr(llvm, name)
  except (ImportError, AttributeError, KeyError) as error:
    warnings.warn(f"wgmma_overwriting falls back to zeroed accumulators: this JAX's Mosaic GPU internals differ "
                  f"({error!r})", stacklevel=3)
    _installed = False
    return False

  def rule(ctx, op):
    if SCOPE not in str(op.location):
      return plain_rule(ctx, op)
    _pending.overwrite = True
    try:
      return plain_rule(ctx, op)
    finally:
      _pending.overwrite = False

  wgmma_module.llvm = _LlvmWithOverwrite(llvm, ir)
  dialect_lowering._lowerings[op_name] = rule  # pylint: disable=protected-access
  _installed = True
  return True
