"""Sparse VideoGen (Xi et al., 2025): training-free spatial/temporal sparse attention for video diffusion transformers.

`svg_attention` is the entry point; importing this package registers it as the "svg" backend of
`jaxgen.nn.attention` (`attention.py` calls `register_backend`), so shared code never names the paper. Modules:
`layout` (token positions, frame-major <-> token-major), `masks` (block masks from indices, density), `profiling`
(online head classification), `gating` (dense steps/layers), `attention` (the op and the backend). To run it on:
`model` (a CogVideoX/Hunyuan-style video DiT trained here), `task` (flow-matching training, dense vs SVG sampling and
comparison; PSNR/SSIM from `jaxgen.metrics.image`), `media` (GIFs, frame strips, head maps), and the real models:
`ports.from_diffusers` loads a diffusers video transformer into its Flax port (`wan`: Wan2.1, `cogvideox`:
CogVideoX-1.5, `hunyuan`: HunyuanVideo, sharing `port_layers`), `sampling` runs the models' samplers from precomputed
text embeddings, `generate` is the recipes' `jaxgen run` entry. Measured so far on CPU only (parity with diffusers,
SVG's masks); the GPU speed of SVG on the real models is not measured yet (experiments/svg/README.md).
"""

from jaxgen.projects.svg import cogvideox, hunyuan, wan  # noqa: F401  (each registers its port)
from jaxgen.projects.svg.attention import svg_attention, svg_backend
from jaxgen.projects.svg.gating import DenseGate
from jaxgen.projects.svg.layout import VideoLayout, to_frame_major, to_token_major
from jaxgen.projects.svg.masks import band_block_mask, band_for_density, block_mask_density
from jaxgen.projects.svg.model import VideoDiT
from jaxgen.projects.svg.ports import from_diffusers
from jaxgen.projects.svg.task import VideoFlowTask

__all__ = ["DenseGate", "VideoDiT", "VideoFlowTask", "VideoLayout", "band_block_mask", "band_for_density",
           "block_mask_density", "from_diffusers", "svg_attention", "svg_backend", "to_frame_major",
           "to_token_major"]
