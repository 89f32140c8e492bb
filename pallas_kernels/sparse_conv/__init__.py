"""SIGE's sparse conv site as one kernel launch (spatially sparse incremental inference for edited images).

A sparse conv site of SIGE recomputes a conv only on the output tiles an edit reaches and keeps the cached output
elsewhere. Done with XLA ops it is a chain of small kernels per site — gather the tiles' input blocks with their halo
(written to HBM), scale / shift (GroupNorm on cached statistics) and activation, a VALID conv over the block batch,
a merge into the cached map — and on an H100 that chain, not the MACs, set the sparse pass's time
(experiments/sige/README.md). `sparse_conv` does the whole site in one launch:

    cached[active tile pixels] = conv(zero_pad(act(x · scale + shift)))[pixels] + bias + residual[pixels]

Each program gathers the input pixels of a few active tiles straight from the full input map (any number of channel
parts, e.g. a skip concatenation; stride 1 or 2; a nearest-upsampled view read from the low-resolution map),
pre-activates them in registers, runs the k × k conv as k² shifted matrix products into a float32 accumulator, adds
bias and residual and stores the tiles into the cached output map in place (`input_output_aliases`). No tile array
reaches HBM. The tile list is padded to a bucket size; `count` (runtime data) says how many entries are real, so one
compile serves every edit of a bucket. Design details and trade-offs: kernel_gpu.py.

Why the Pallas Triton lowering (deprecated since JAX 0.11, still working) rather than Mosaic GPU, the house default:
(1) SIGE runs in float32 (the official code is fp32-only; the H100 measurement whose floor this attacks is float32):
Triton takes float32 dots (TF32 or IEEE); the Mosaic GPU kernels here are bf16/f16 wgmma. (2) The operands are row
gathers: every row of a tap's product is a different input pixel, computed from the tile list. Triton loads a
`[rows, channels]` block from arbitrary pixel ids by pointer arithmetic; Mosaic GPU moves rectangular TMA boxes into
shared memory, so each tap's 64-row wgmma operand (four 4×4 tiles) would have to be rebuilt there from per-tile boxes,
in layouts the Mosaic GPU interpreter does not check — code that could not be validated on CPU. (3) One tile is only
16 output pixels: Triton's smallest dot is 16 rows; wgmma's is 64. A Mosaic GPU version is the follow-up if the
Triton kernel's numbers on the H100 warrant it.

Implementations (`IMPLEMENTATIONS`): "triton" (compiled; the GPU default), "triton_interpret" (the same body in
Pallas' interpreter, for CPU tests), "reference" (plain jnp, the CPU default and the oracle). The kernel needs
channel counts that are multiples of 16 and power-of-two tiles (`unsupported` says why a site does not fit; SIGE's
layers then keep the XLA chain for it, e.g. an RGB `conv_in`).
"""

from pallas_kernels.sparse_conv.ops import IMPLEMENTATIONS, default_implementation, sparse_conv, unsupported
from pallas_kernels.sparse_conv.reference import ACTIVATIONS, sparse_conv_reference
from pallas_kernels.sparse_conv.tuning import BlockSizes

__all__ = ["ACTIVATIONS", "BlockSizes", "IMPLEMENTATIONS", "default_implementation", "sparse_conv",
           "sparse_conv_reference", "unsupported"]
