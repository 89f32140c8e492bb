"""How the norm-modulate kernels tile a `[batch, seq, width]` input, with safe defaults.

Nothing here is measured yet: `experiments/bench/norm_modulate.py` on the H100 is where a tuned entry would come
from. A program always holds whole rows (the statistics need the full width), padded in registers to the next power
of two of the width (Triton's blocks are powers of two; 1152 -> 2048 lanes, the padding masked).

rows_forward: rows per forward program (one program per `rows_forward` rows; no loop).
rows_backward: rows per step of a backward program's loop.
splits: backward programs per sample. Each walks `seq / splits` rows, keeping its share of the dshift / dscale sums
  (over the sequence) in registers, and writes one partial row; `ops.py` adds the `splits` partials (a `[batch,
  splits, width]` float32 sum: 4.7 MB at DiT-XL/2's batch 128 with 4 splits, against 75 MB of x). More splits give
  more programs to fill the GPU (batch 128 x 4 = 512 on 132 SMs), fewer give less partial-sum traffic.
num_warps: Triton launch width of both kernels (8 x 32 threads over 4 x 2048 lanes: 32 float32 registers per thread
  per live tensor).
num_stages: Triton's software pipelining of the backward loop (2: the next step's x and dy load while this one
  computes).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  rows_forward: int = 4
  rows_backward: int = 4
  splits: int = 4
  num_warps: int = 8
  num_stages: int = 2

  def __post_init__(self):
    for name in ("rows_forward", "rows_backward"):
      value = getattr(self, name)
      if value < 1 or value & (value - 1):
        raise ValueError(f"BlockSizes.{name}={value} must be a power of two (a Triton block dimension)")
    if min(self.splits, self.num_warps, self.num_stages) < 1:
      raise ValueError(f"BlockSizes.splits={self.splits}, num_warps={self.num_warps} and num_stages={self.num_stages} "
                       f"must be >= 1")


DEFAULT = BlockSizes()

# Keyed by jax.Device.device_kind; entries only from measurements (none yet).
_TUNED: dict[str, BlockSizes] = {}


def block_sizes_for(device_kind: str) -> BlockSizes:
  """Tuned settings for this device, else the defaults."""
  return _TUNED.get(device_kind, DEFAULT)
