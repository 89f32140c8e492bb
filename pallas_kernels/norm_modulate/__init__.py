"""adaLN's `LayerNorm(x) * (1 + scale) + shift` as one kernel each way (DiT's norm-modulate).

XLA runs a DiT block's norm-modulate as several elementwise and reduction fusions, forward and backward, each
reading and writing the activations; on DiT-XL/2 training those fusions were a large part of the time XLA spent
outside matrix products and attention (experiments/bench/README.md, "DiT-XL/2 training"). Here the forward pass reads
x once and writes y once; the backward pass reads x and dy once and writes dx once, with the sequence sums that give
dshift and dscale kept in registers (details: kernel_gpu.py). `residual_layer_norm_modulate` also takes the gated residual
before the norm, `z = x + gate * h` (a block's attention residual, then the MLP's norm-modulate), writing z and y
in one pass and reading z back only in the backward pass.

Why the Pallas Triton lowering (deprecated since JAX 0.11, still working) rather than Mosaic GPU, the house default
for Hopper: the op is a row-wise reduction with no matrix product, so none of what Mosaic GPU adds (wgmma, TMA,
warpgroup specialisation) applies, and it is memory-bound; Triton lowers row reductions and masked loads of a width
that is not a power of two (DiT-XL's 1152) directly from jnp code, where a Mosaic GPU kernel would need explicit
layouts and a width split into tiles. The Triton body also runs in Pallas' interpreter on CPU, which is how the tests
check it. A Mosaic GPU version is the follow-up if the H100 numbers show the Triton code short of HBM bandwidth.

Implementations (`IMPLEMENTATIONS`): "xla" (the jnp reference), "pallas_gpu", "pallas_gpu_interpret".
"""

from pallas_kernels.norm_modulate.ops import IMPLEMENTATIONS, default_implementation, layer_norm_modulate
from pallas_kernels.norm_modulate.ops import residual_layer_norm_modulate
from pallas_kernels.norm_modulate.reference import layer_norm_modulate as layer_norm_modulate_reference
from pallas_kernels.norm_modulate.reference import residual_layer_norm_modulate as residual_layer_norm_modulate_reference
from pallas_kernels.norm_modulate.tuning import BlockSizes

__all__ = ["BlockSizes", "IMPLEMENTATIONS", "default_implementation", "layer_norm_modulate",
           "layer_norm_modulate_reference", "residual_layer_norm_modulate", "residual_layer_norm_modulate_reference"]
