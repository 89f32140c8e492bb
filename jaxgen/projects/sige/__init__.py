"""SIGE (Li et al., NeurIPS 2022): spatially sparse incremental inference for edited images — cached features,
gather / sparse conv / scatter, for diffusion UNets and a GauGAN-like SPADE generator; `driver` runs the editing
recipes of configs/sige. See experiments/sige/README.md."""

from jaxgen.projects.sige.engine import EditPlan, IncrementalEngine
from jaxgen.projects.sige.gaugan import SpadeGenerator, gaugan, tiny_gaugan
from jaxgen.projects.sige.port import from_diffusers
from jaxgen.projects.sige.sdedit import sdedit
from jaxgen.projects.sige.unet import SigeUNet, ddpm_unet, random_params, sd_unet, tiny_unet

__all__ = ["EditPlan", "IncrementalEngine", "SigeUNet", "SpadeGenerator", "ddpm_unet", "from_diffusers", "gaugan",
           "random_params", "sd_unet", "sdedit", "tiny_gaugan", "tiny_unet"]
