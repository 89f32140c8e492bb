"""4-bit (and 8-bit) matmuls for SVDQuant-style inference on H100 (int8 tensor cores), TPU and CPU (interpret)."""

from pallas_kernels.int4_matmul.ops import IMPLEMENTATIONS
from pallas_kernels.int4_matmul.ops import w4a16_matmul
from pallas_kernels.int4_matmul.ops import w4a4_matmul
from pallas_kernels.int4_matmul.ops import w8a8_matmul
from pallas_kernels.int4_matmul.reference import dequantize_int4
from pallas_kernels.int4_matmul.reference import pack_int4
from pallas_kernels.int4_matmul.reference import quantize_int4
from pallas_kernels.int4_matmul.reference import quantize_int8_weight
from pallas_kernels.int4_matmul.reference import quantize_uint4
from pallas_kernels.int4_matmul.reference import unpack_int4
from pallas_kernels.int4_matmul.tuning import BlockSizes

__all__ = [
    "IMPLEMENTATIONS", "w4a16_matmul", "w4a4_matmul", "w8a8_matmul", "dequantize_int4", "pack_int4", "quantize_int4",
    "quantize_int8_weight", "quantize_uint4", "unpack_int4", "BlockSizes",
]
