"""CAN (Cai et al., CVPR 2024): condition-aware weight generation for DiT/U-ViT, its adaptive-kernel-selection
baseline, and a MACs counter. See experiments/can/README.md."""

from jaxgen.projects.can.layers import AKS, CAN, ConditionAwareConv, ConditionAwareDense, DistinctConditions
from jaxgen.projects.can.model import ConditionAwareModel

__all__ = ["AKS", "CAN", "ConditionAwareConv", "ConditionAwareDense", "ConditionAwareModel", "DistinctConditions"]
