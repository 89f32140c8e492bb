"""SIGE's sparse conv site fused into one kernel: gather tiles with their halo, norm + activation, k² shifted matrix
products, bias + residual, written into the cached output map in place (see kernel_gpu.py for the design)."""

from pallas_kernels.sparse_conv.ops import IMPLEMENTATIONS, default_implementation, sparse_conv, unsupported
from pallas_kernels.sparse_conv.reference import ACTIVATIONS, sparse_conv_reference
from pallas_kernels.sparse_conv.tuning import BlockSizes

__all__ = ["ACTIVATIONS", "BlockSizes", "IMPLEMENTATIONS", "default_implementation", "sparse_conv",
           "sparse_conv_reference", "unsupported"]
