"""Real photographs that ship inside the scikit-image wheel (`skimage/data/`), as a small held-out set of real images.

Seventeen photographs and micrographs (astronaut, chelsea, coffee, rocket, motorcycle, retina, hubble, textures such
as brick, grass and gravel, ...) for reconstruction and editing tests of autoencoders and generators trained on other
data: nothing procedural, nothing any recipe trains on. The files are read from the installed package with Pillow,
without importing scikit-image (its import pulls in scipy and lazy loaders for nothing here); they are never copied
into this repository (their licences are scikit-image's to state: public domain or CC for each, see its docs).

Each photograph is resized so its shorter side is the config's size (Lanczos, so a larger photograph is
antialiased and a smaller one, like chelsea at 451 × 300, is upsampled) and centre-cropped to a square. Grey-level
ones are repeated to three channels; `grey` says which, so a colour metric can leave them out. One split, "test".
The selection is fixed by `PHOTOS`; a change of selection or resizing is a new version.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data.builders._bundled import package_file

INSTALL_HINT = "pip install scikit-image"

# name -> file under skimage/data. Left out: drawings and synthetic images (chessboard, color, horse, logo, phantom),
# a 102-pixel crop (microaneurysms), the second view of the motorcycle stereo pair and a motion-blurred clock.
PHOTOS = {
    "astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png", "retina": "retina.jpg", "hubble": "hubble_deep_field.jpg",
    "ihc": "ihc.png", "camera": "camera.png", "coins": "coins.png", "moon": "moon.png", "brick": "brick.png",
    "grass": "grass.png", "gravel": "gravel.png", "cell": "cell.png", "page": "page.png", "text": "text.png",
}
SIZES = (256, 512)


def load(name: str, size: int) -> tuple[np.ndarray, bool]:
    """uint8 `[size, size, 3]` photograph `name` (shorter side resized to `size`, centre crop) and whether it is
    grey-level."""
    from PIL import Image

    path = package_file("skimage", f"data/{PHOTOS[name]}", INSTALL_HINT)
    with Image.open(path) as original:
        grey = original.mode in ("L", "I", "I;16", "1")
        picture = original.convert("RGB")
    scale = size / min(picture.size)
    width, height = max(size, round(picture.width * scale)), max(size, round(picture.height * scale))
    picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(picture.crop((left, top, left + size, top + size)), np.uint8), grey


class SkimagePhotos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"{len(PHOTOS)} photographs from scikit-image's data folder; Lanczos resize and "
                              "centre crop."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=str(s), description=f"{s}x{s} RGB, {len(PHOTOS)} photographs")
                       for s in SIZES]

    def _info(self) -> tfds.core.DatasetInfo:
        size = int(self.builder_config.name)
        return self.dataset_info_from_configs(
            description="Real photographs bundled with scikit-image (skimage/data), a held-out set of real images.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
                "name": tfds.features.Text(),
                "grey": tfds.features.Scalar(dtype=np.bool_),
            }),
            homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        )

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        size = int(self.builder_config.name)
        for name in PHOTOS:
            image, grey = load(name, size)
            yield name, {"image": image, "name": name, "grey": grey}
