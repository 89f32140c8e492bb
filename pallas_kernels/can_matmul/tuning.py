"""Tiles of the fused condition-aware product; defaults only (nothing has been timed on a GPU yet).

block_m: rows of one sample per program (a tile never spans two samples: each has its own weights).
block_n: output columns per program. block_k: contraction per step of the in-kernel loop; each step builds a
  `block_k x block_n` weight tile from W and the `rank` generator tiles before its dot.
num_warps, num_stages: Triton launch width and pipelining depth.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  block_m: int = 64
  block_n: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2
