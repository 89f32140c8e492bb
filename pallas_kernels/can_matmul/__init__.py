"""The condition-aware product `x[b] . (W + sum_j h[b, j] G_j)` with the per-sample weight built tile by tile on chip
(CAN, experiments/can/README.md "Distinct-condition path")."""

from pallas_kernels.can_matmul.ops import IMPLEMENTATIONS
from pallas_kernels.can_matmul.ops import can_matmul
from pallas_kernels.can_matmul.reference import can_matmul as can_matmul_reference
from pallas_kernels.can_matmul.tuning import BlockSizes

__all__ = ["IMPLEMENTATIONS", "can_matmul", "can_matmul_reference", "BlockSizes"]
