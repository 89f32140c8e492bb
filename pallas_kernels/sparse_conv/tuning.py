"""How the fused sparse conv kernel walks a site, per device kind, with safe defaults.

Nothing here is measured yet: the defaults are the shapes a Triton conv / GEMM of this size usually wants on an H100
(64-row products, 64 output channels, 32 input channels per step). `experiments/bench/sige.py --implementations xla
pallas` is where a tuned entry would come from; until then every device gets `DEFAULT`.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling of one launch; frozen so it can be a static jit argument.

  rows: output pixels per program, i.e. the M of its matrix products; a program owns `rows / tile²` active tiles (at
    least one). More rows reuse each weight tile over more pixels; fewer leave fewer padded rows at small buckets.
  block_n: output channels per program (the N of its products).
  block_k: input channels per loop step (the K of each of the k² products of a step).
  num_warps, num_stages: Triton launch width and software-pipelining depth.
  """

  rows: int = 64
  block_n: int = 64
  block_k: int = 32
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("rows", "block_n", "block_k"):
      value = getattr(self, name)
      if value < 16 or value & (value - 1):
        raise ValueError(f"BlockSizes.{name}={value} must be a power of two >= 16 (Triton's smallest dot)")


DEFAULT = BlockSizes()

# Keyed by jax.Device.device_kind; entries only from measurements (none yet).
_TUNED: dict[str, BlockSizes] = {}


def block_sizes_for(device_kind: str) -> BlockSizes:
  """Tuned settings for this device, else the defaults."""
  return _TUNED.get(device_kind, DEFAULT)
