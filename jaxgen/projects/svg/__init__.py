"""Sparse VideoGen (Xi et al., 2025): training-free spatial/temporal sparse attention for video diffusion transformers.

`svg_attention` is the entry point; `jaxgen.nn.attention` exposes it as the "svg" backend. Modules: `layout` (token
positions, frame-major <-> token-major), `masks` (block masks from indices, density), `profiling` (online head
classification), `gating` (dense steps/layers), `attention` (the op and the backend). To run it on: `model` (a
CogVideoX/Hunyuan-style video DiT), `task` (flow-matching training, dense vs SVG sampling and comparison; PSNR/SSIM from
`jaxgen.metrics.image`), `media` (GIFs, frame strips, head maps).
"""

from jaxgen.projects.svg.attention import svg_attention, svg_backend
from jaxgen.projects.svg.gating import DenseGate
from jaxgen.projects.svg.layout import VideoLayout, to_frame_major, to_token_major
from jaxgen.projects.svg.masks import band_block_mask, band_for_density, block_mask_density
from jaxgen.projects.svg.model import VideoDiT
from jaxgen.projects.svg.task import VideoFlowTask

__all__ = ["DenseGate", "VideoDiT", "VideoFlowTask", "VideoLayout", "band_block_mask", "band_for_density",
           "block_mask_density", "svg_attention", "svg_backend", "to_frame_major", "to_token_major"]
