"""DC-AE latents for the shared class-conditional diffusion task (`jaxgen.diffusion.task`, its `latents`).

The paper's point is downstream: a diffusion model on DC-AE latents with patch size 1 against one on a conventional
(SD-VAE-f8 style) autoencoder's latents with patch size 2 at the same number of tokens. `DcaeLatents` is the glue:
a `DCAE` restored from an `AutoencoderTask` run's checkpoint (frozen: its parameters are constants of the diffusion
step, never trained or saved with it), encoding images to latents scaled to unit standard deviation and decoding
samples back to pictures, so the shared evaluators (sample grids, FD-classifier, sample accuracy) judge images.

The scale is Stable Diffusion's `scaling_factor` measured the same way: 1 / the standard deviation of the latents of
`scale_examples` training images of `dataset`, computed once when the object is built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgen.core import checkpoint as ckpt_lib
from jaxgen.data import sources
from jaxgen.projects.dcae import model as model_lib

SCALE_BATCH = 128  # images encoded per call while measuring the scale


def restore_autoencoder(autoencoder: model_lib.DCAE, checkpoint: str, image_shape: tuple[int, int, int]) -> dict:
    """The autoencoder's variables from an `AutoencoderTask` run: its workdir (latest step), `checkpoints/` folder
    or one `checkpoints/<step>/`. Only `params/autoencoder` (and BatchNorm statistics, when the model has them) are
    read; the discriminator stays on disk."""
    example = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    shapes = jax.eval_shape(lambda x: nn.unbox(autoencoder.init(jax.random.key(0), x)), example)
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("devices",)), PartitionSpec())
    abstract = {collection: {"autoencoder": jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), tree)}
        for collection, tree in shapes.items()}
    source, step = ckpt_lib.open_source(Path(checkpoint).absolute(),  # orbax refuses relative paths
                                        f"DcaeLatents.checkpoint={checkpoint!r}")
    try:
        restored = source.restore_subtree(step, abstract)
    except ckpt_lib.CheckpointError as error:
        raise ckpt_lib.CheckpointError(
            f"{error}\nIs DcaeLatents.autoencoder the DCAE (config and residual_shortcuts) that trained this "
            f"checkpoint? It expects {jax.tree.map(lambda a: a.shape, shapes)}") from error
    return {collection: tree["autoencoder"] for collection, tree in restored.items()}


@dataclasses.dataclass(eq=False)
class DcaeLatents:
    """A frozen DC-AE as the `LatentSpace` of `ClassConditionalDiffusionTask`.

    `checkpoint`: an `AutoencoderTask` run of `autoencoder`; None draws the autoencoder at random (seed 0), which
    only smoke tests want. `dataset`: the images (its train split, at their stored size) whose latents set the scale.
    """

    autoencoder: model_lib.DCAE
    checkpoint: str | None
    dataset: str
    scale_examples: int = 512
    data_dir: str | None = None
    scale: float = dataclasses.field(default=1.0, init=False)
    _variables: Any = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.scale_examples < 2:
            raise ValueError(f"scale_examples must be >= 2 (a standard deviation); got {self.scale_examples}")
        source = sources.source(self.dataset, "train", self.data_dir)
        count = min(self.scale_examples, len(source))
        images = sources.read_batch(source, np.arange(count))["image"]
        if self.checkpoint is None:
            self._variables = nn.unbox(model_lib.init(self.autoencoder, jax.random.key(0),
                                                      jnp.zeros((1, *images.shape[1:]))))
        else:
            self._variables = restore_autoencoder(self.autoencoder, self.checkpoint, images.shape[1:])
        self._encode_jit = jax.jit(self._encode_unscaled)
        self._decode_jit = jax.jit(lambda variables, latents, scale: self.autoencoder.apply(
            variables, latents / scale, method="decode"))
        latents = np.concatenate([np.asarray(self._encode_jit(self._variables, images[i:i + SCALE_BATCH]))
                                  for i in range(0, count, SCALE_BATCH)])
        self.scale = float(1.0 / latents.std())

    def _encode_unscaled(self, variables, images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        return self.autoencoder.apply(variables, x, method="encode")

    def encode(self, images: jax.Array) -> jax.Array:
        """Images in [-1, 1] `[b, h, w, 3]` -> latents `[b, h/f, w/f, c]` of unit standard deviation (traced inside
        the diffusion step: the autoencoder's parameters enter it as constants)."""
        return self.autoencoder.apply(self._variables, images, method="encode") * self.scale

    def decode(self, latents: jax.Array) -> jax.Array:
        """Scaled latents -> images in [-1, 1]."""
        return self._decode_jit(self._variables, latents, self.scale)

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(model_lib.latent_shape(self.autoencoder, (1, *image_shape))[1:])
