"""Block-sparse attention: Pallas kernels (Mosaic GPU, Triton, Mosaic TPU, CPU interpret) and a jnp reference."""

from pallas_kernels.block_sparse_attention.mask_info import MaskInfo, make_mask_info
from pallas_kernels.block_sparse_attention.ops import IMPLEMENTATIONS, block_sparse_attention
from pallas_kernels.block_sparse_attention.reference import block_sparse_attention_reference
from pallas_kernels.block_sparse_attention.tuning import BlockSizes

__all__ = ["BlockSizes", "IMPLEMENTATIONS", "MaskInfo", "block_sparse_attention", "block_sparse_attention_reference",
           "make_mask_info"]
