"""Kernel tile and pipeline settings, tuned per device kind, with safe defaults.

The mask's block sizes (block_q, block_kv) are part of the op's meaning and come from the caller; what is tuned here
is how a kernel walks one block: software-pipeline depth on GPU, warps for the Triton path.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """How the kernels execute; frozen so it can be a static jit argument.

  mosaic_stages: K/V (or Q/dO) blocks in flight in shared memory for the Mosaic GPU kernels (>= 2). Three do not
    fit the forward at head_dim 128 (232,568 bytes of shared memory asked, 232,448 available on an H100).
  triton_warps / triton_stages: Triton-backend launch settings.
  """

  mosaic_stages: int = 2
  triton_warps: int = 4
  triton_stages: int = 2

  def __post_init__(self):
    if self.mosaic_stages < 2:
      raise ValueError(f"mosaic_stages={self.mosaic_stages} must be at least 2")


# Keyed by jax.Device.device_kind, then head_dim. Entries are measured (experiments/bench/block_sparse_attention.py).
_TUNED: dict[str, dict[int, BlockSizes]] = {
    "NVIDIA H100 80GB HBM3": {64: BlockSizes(mosaic_stages=2), 128: BlockSizes(mosaic_stages=2)},
}

DEFAULT = BlockSizes()


def block_sizes_for(device_kind: str, head_dim: int) -> BlockSizes:
  """Tuned settings for this device and head_dim, else the defaults."""
  return _TUNED.get(device_kind, {}).get(head_dim, DEFAULT)
