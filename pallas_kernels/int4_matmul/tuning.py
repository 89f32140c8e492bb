"""Block sizes for the int4 matmul kernels, tuned per device kind, with safe defaults.

`block_sizes(op, m, device_kind)` looks up the table below by device kind (as `jax.devices()[0].device_kind`
spells it), operation and whether M is small (decode-like, memory-bound) or large (compute-bound); anything not in
the table gets the defaults, which are correct everywhere and merely slower.
"""

import dataclasses

SMALL_M = 64


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling of one kernel launch.

  block_m, block_n: output tile of one program (the M tile is also the token tile of activation quantization).
  block_k: contraction per step (a multiple of the group size): per grid step on TPU; on GPU the groups unrolled in
    one iteration of the in-kernel loop.
  k_splits: programs sharing one output tile along K (partial sums added afterwards); fills the GPU when M is small.
  num_warps, num_stages: Triton launch width and software-pipelining depth.
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


DEFAULT = BlockSizes()

_H100 = {
    ("w4a4", False): BlockSizes(block_m=128, block_n=64, block_k=64, num_warps=4, num_stages=4,
                                quantize_block_m=32, quantize_block_k=512),
    ("w4a4", True): BlockSizes(block_m=16, block_n=64, block_k=128, k_splits=4, num_warps=4, num_stages=4),
    ("w4a16", False): BlockSizes(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=4),
    ("w4a16", True): BlockSizes(block_m=16, block_n=64, block_k=128, k_splits=4, num_warps=4, num_stages=4),
    ("w8a8", False): BlockSizes(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=4,
                                quantize_block_k=512),
    ("w8a8", True): BlockSizes(block_m=16, block_n=64, block_k=128, k_splits=4, num_warps=4, num_stages=4),
}

TUNED = {
    "NVIDIA H100 80GB HBM3": _H100,
    "NVIDIA H100": _H100,
}


def block_sizes(op: str, m: int, device_kind: str | None) -> BlockSizes:
  """Tuned block sizes for `op` ("w4a4", "w4a16", "w8a8") at M = m on `device_kind`, else the defaults."""
  return TUNED.get(device_kind, {}).get((op, m <= SMALL_M), DEFAULT)
