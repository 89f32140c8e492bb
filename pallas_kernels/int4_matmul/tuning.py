"""Block sizes for the int4 matmul kernels, tuned per device kind, with safe defaults.

`block_sizes(op, m, device_kind, backend)` looks up the table below by device kind (as
`jax.devices()[0].device_kind` spells it), backend, operation and the size class of M: "gemv" (M = 1), "decode"
(M <= 16) and "small" (M <= 64) are memory-bound, "large" compute-bound; a missing gemv entry falls back to decode,
and decode to small. Anything not in the table gets the defaults, which are correct everywhere and merely slower.
"""

import dataclasses

GEMV_M = 1
DECODE_M = 16
SMALL_M = 64


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling of one kernel launch.

  block_m, block_n: output tile of one program (the M tile is also the token tile of activation quantization).
  block_k: contraction per step (a multiple of the group size): per grid step on TPU; on GPU the groups unrolled in
    one iteration of the in-kernel loop.
  k_splits: programs sharing one output tile along K (partial sums added afterwards); fills the GPU when M is small.
  num_warps, num_stages: Triton launch width and software-pipelining depth; for Mosaic GPU, num_stages is the
    depth of the shared-memory ring of K steps.
  code_dtype: the 8-bit form of 4-bit codes on the Mosaic GPU tensor cores, "int8" or "float8_e4m3fn".
  fused_quantize: Mosaic GPU W4A4 (bf16 x, group 64): quantize the activations and compute the low-rank
    down-projection in one kernel (`quantize_mosaic_gpu.py`, one read of x) instead of two XLA fusions.
  persistent: Mosaic GPU W4A4 / W8A8 GEMM with one persistent CTA per SM walking the output tiles (the next tile's
    K steps load during this tile's epilogue) instead of one CTA per tile. Off: on an H100 it was slower at three of
    four M = 4096 shapes (experiments/bench/README.md).
  gemv: GPU W4A16 with M <= kernel_gpu.GEMV_MAX_M: multiply-adds on the CUDA cores instead of a 16-row tensor-core
    dot (`kernel_gpu.w4a16_gemv`; block_m is unused).
  mosaic_w4a16: Mosaic GPU backend, bf16 x, M <= 64, group 64: W4A16 in `w4a16_mosaic_gpu.py` instead of the Triton
    kernel. Off: on an H100 it was slower than the Triton kernels at every shape timed (bench op mosaic_w4a16).
  pingpong: Mosaic GPU W4A4 (group 64, N a multiple of 128): the GEMM of `w4a4_pingpong_mosaic_gpu.py` (two
    consumer warpgroups taking turns on the tensor cores, the int4 weights widened inside the kernel) instead of
    `kernel_mosaic_gpu.py` after an XLA widening pass. Off until measured on an H100 (issue 27).
  w4a4_scales: with `pingpong`, how the group scales are applied. "exact" is the spec. The others change the result
    (their errors against the spec: tests/kernels/int4_matmul/test_w4a4_pingpong.py) and must be named to be used:
    "act128" quantizes the activations in groups of 128 and folds each 64-group weight scale into the e4m3 weights
    as its ratio to the larger of its 128-block's two (half the promotions); "folded" folds the activation scales
    per token and the weight scales per output channel into e4m3 values (one FP8 GEMM, no promotion).
  w4a16_rs: Mosaic GPU backend, bf16 x, group 64, N a multiple of 128: W4A16 in `w4a16_rs_mosaic_gpu.py` (the widened
    weights as wgmma's register operand, tokens as its N; any M), before `mosaic_w4a16` and the Triton kernels.
    block_m caps its token tile (rounded down to a power of two, 8 to 256), num_stages its ring depth; its K splits
    fill the GPU by themselves. On at M > 64 on the H100 (0.87-0.99x XLA bf16 at M = 4096 where the Triton W4A16
    ran 0.18-0.22x; experiments/bench/README.md); off below, where the per-call weight shuffle made it slower than
    the Triton kernels (41 against 24.6 us at 16 x 3072 x 12288).
  rs_code_layout: how `w4a16_rs` loads the codes into registers, "WGMMA" (the A-fragment layout itself, byte loads)
    or "WGMMA_UPCAST_2X" (16-bit loads, then Mosaic's relayout).
  rs_exact_scale: `w4a16_rs` multiplies code and group scale in float32 and rounds once (the Triton kernels' bf16
    weights); False multiplies in bf16 with the scale rounded to bf16 first (fewer instructions, a second rounding).
  quantize_block_m, quantize_block_k: token rows per program and contraction per loop iteration of the
    activation-quantization kernel (memory-bound: wide steps keep loads in flight).
  """

  block_m: int = 64
  block_n: int = 64
  block_k: int = 256
  k_splits: int = 1
  num_warps: int = 4
  num_stages: int = 3
  quantize_block_m: int = 16
  quantize_block_k: int = 256
  code_dtype: str = "int8"
  fused_quantize: bool = False
  persistent: bool = False
  gemv: bool = False
  mosaic_w4a16: bool = False
  pingpong: bool = False
  w4a4_scales: str = "exact"
  w4a16_rs: bool = False
  rs_code_layout: str = "WGMMA"
  rs_exact_scale: bool = True


DEFAULT = BlockSizes()

_H100 = {
    ("w4a4", "large"): BlockSizes(block_m=128, block_n=64, block_k=64, num_warps=4, num_stages=4,
                                  quantize_block_m=32, quantize_block_k=512),
    ("w4a4", "small"): BlockSizes(block_m=16, block_n=64, block_k=128, k_splits=4, num_warps=4, num_stages=4),
    ("w4a16", "large"): BlockSizes(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=4),
    # At M = 64 one 64-row tile widens each weight once (16-row tiles widened it four times); faster at every shape
    # timed (experiments/bench/int4_matmul.json, `w4a16_m64_tiling`).
    ("w4a16", "small"): BlockSizes(block_m=64, block_n=128, block_k=128, k_splits=8, num_warps=4, num_stages=4),
    # 16 K splits of 128 x 128 tiles won the M = 16 sweep (int4_matmul.json, `w4a16_dot_sweep`); at M = 64 the
    # same tiling was mixed against the 4-split one, hence the separate decode class.
    ("w4a16", "decode"): BlockSizes(block_m=16, block_n=128, block_k=128, k_splits=16, num_warps=4, num_stages=4),
    # One token: the CUDA-core GEMV beat the 16-row dot at the four shapes timed (`--sweep gemv`; int4_matmul.json,
    # `w4a16_gemv_sweep`); from two tokens on the dot wins (`w4a16_gemv_vs_dot_probe`), since the GEMV's work grows
    # with every token.
    ("w4a16", "gemv"): BlockSizes(block_n=256, block_k=128, k_splits=32, num_warps=4, num_stages=4, gemv=True),
    ("w8a8", "large"): BlockSizes(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=4,
                                  quantize_block_k=512),
    ("w8a8", "small"): BlockSizes(block_m=16, block_n=64, block_k=128, k_splits=4, num_warps=4, num_stages=4),
}

# Chosen at 4096 x 3072 x 12288 (the timings: experiments/bench/int4_matmul_notes.md): W8A8 needs a deep ring (8
# stages); so does W4A4 since its rescale got cheaper. W4A4 takes e4m3 codes: no int32 -> float32 conversion per
# group, and ops.codes_as makes them as cheaply as int8 ones. ops.py lowers the depth where it would overflow shared
# memory. The fused quantize kernel is on at large M, where it was faster at every shape timed
# (experiments/bench/README.md); small M is not measured with it.
_H100_MOSAIC = {
    ("w4a4", "large"): BlockSizes(block_n=128, num_stages=8, code_dtype="float8_e4m3fn", fused_quantize=True),
    ("w4a4", "small"): BlockSizes(block_n=128, num_stages=8, code_dtype="float8_e4m3fn"),
    ("w8a8", "large"): BlockSizes(block_n=128, num_stages=8),
    ("w8a8", "small"): BlockSizes(block_n=128, num_stages=8),
    # W4A16 at M <= 64 runs the Triton kernels under this backend too; above, the register-operand kernel (issue 27,
    # int4_matmul.json `issue27_large_m`: 256-token tiles, its ring lowered to 4 there by ops.py).
    **{key: value for key, value in _H100.items() if key[0] == "w4a16"},
    ("w4a16", "large"): BlockSizes(block_m=256, block_n=128, num_stages=8, w4a16_rs=True),
}

MOSAIC_DEFAULT = BlockSizes(block_n=128, num_stages=4)

# The H200 has the H100's chip (sm_90, 132 SMs, 227 KB of shared memory a block) with faster memory, so it takes the
# H100's tables; they are not measured on an H200, where memory-bound small-M tilings may prefer more K splits.
TUNED = {
    (kind, backend): table
    for kind in ("NVIDIA H100 80GB HBM3", "NVIDIA H100", "NVIDIA H200")
    for backend, table in (("pallas_gpu", _H100), ("mosaic_gpu", _H100_MOSAIC))
}


def block_sizes(op: str, m: int, device_kind: str | None, backend: str = "pallas_gpu") -> BlockSizes:
  """Tuned block sizes for `op` ("w4a4", "w4a16", "w8a8") at M = m with `backend` on `device_kind`, else defaults."""
  default = MOSAIC_DEFAULT if backend == "mosaic_gpu" and op != "w4a16" else DEFAULT
  table = TUNED.get((device_kind, backend), {})
  size = "gemv" if m <= GEMV_M else "decode" if m <= DECODE_M else "small" if m <= SMALL_M else "large"
  for smaller, larger in (("gemv", "decode"), ("decode", "small")):
    if size == smaller and (op, size) not in table:
      size = larger
  return table.get((op, size), default)
