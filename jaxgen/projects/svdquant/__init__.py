"""SVDQuant (Li et al. 2024): smoothing + a 16-bit low-rank branch + 4-bit weights and activations for any Flax model.

`quantize_linear` calibrates one layer; `quantize_model` calibrates every Dense/DenseGeneral layer of a Linen model
that a rule selects and runs the model with the quantized layers (`pallas_kernels.int4_matmul`).
"""

from jaxgen.projects.svdquant.linear import GELU_SHIFT, METHODS, QuantizedLinear, quantize_linear
from jaxgen.projects.svdquant.model import (SCHEMES, QuantizedModel, Scheme, apply_quantized, collect_inputs, dit_rules,
                                            flux_rules, model_bytes, quantize_model)

__all__ = ["GELU_SHIFT", "METHODS", "SCHEMES", "QuantizedLinear", "QuantizedModel", "Scheme", "apply_quantized",
           "collect_inputs", "dit_rules", "flux_rules", "model_bytes", "quantize_linear", "quantize_model"]
