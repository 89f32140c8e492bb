"""DC-AE (Chen et al., 2025): deep-compression autoencoders (f32c32 / f64c128 / f128c512) with residual autoencoding.

- `model`: the architecture (`DCAE`, the named `CONFIGS`, the shortcut ops);
- `weights`: `from_diffusers(model_dir) -> (module, variables)` for diffusers `AutoencoderDC` folders;
- `task`: the three training phases (`AutoencoderTask`, `PHASES`, `phase_frozen` for the optimizer's masks);
- `data`: the registered procedural set `dcae_textures` (32-512 px); held-out real photographs: `skimage_photos`.
- `latents`: `DcaeLatents`, a trained DC-AE as the latent space of the shared diffusion task (import it directly).

This module imports neither TFDS nor gin (the benchmark imports the model through it).
"""

from jaxgen.data import register_dataset

from jaxgen.projects.dcae.model import CONFIGS, DCAE, config, dcae, latent_shape
from jaxgen.projects.dcae.weights import from_diffusers

__all__ = ["CONFIGS", "DCAE", "config", "dcae", "from_diffusers", "latent_shape"]

register_dataset("dcae_textures", "jaxgen.projects.dcae.data")
