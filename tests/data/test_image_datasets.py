"""The class-conditional shapes show their class (colour and shape of every object), are seeded and balanced; the
scikit-image photographs come out resized, cropped and named; `jaxgen data inspect` draws one row per class."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from jaxgen.data import inspect as data_inspect
from jaxgen.data import source
from jaxgen.data.builders import shape_classes, skimage_photos
from jaxgen.data.builders.shape_classes import CLASSES, COLOURS, SHAPES, ShapeClasses, class_of, render_batch

# Fill ratio (area / bounding-box area) of each shape without a hole: the shape of an object, read back from its
# pixels (a ring is the one with a hole).
FILL = {"disc": np.pi / 4, "square": 1.0, "triangle": 0.5}


def test_every_object_has_the_class_colour_and_shape():
    labels = np.repeat(np.arange(len(CLASSES)), 4)
    images = render_batch(np.random.default_rng(0), labels, 64).astype(np.int64)
    saturation = images.max(-1) - images.min(-1)
    for image, sat, label in zip(images, saturation, labels):
        colour, shape = class_of(int(label))
        objects = sat > 60  # backgrounds are grey with a faint tint (saturation < 30); objects are strongly coloured
        assert set(np.unique(image[objects].argmax(-1))) == {int(np.argmax(COLOURS[colour]))}, CLASSES[label]
        filled = ndimage.binary_fill_holes(objects)
        components, count = ndimage.label(filled)
        assert shape_classes.MIN_OBJECTS <= count <= shape_classes.MAX_OBJECTS, (CLASSES[label], count)
        for box in ndimage.find_objects(components):
            has_hole = (filled[box] & ~objects[box]).any()
            fill = filled[box].mean()
            nearest = "ring" if has_hole else min(("disc", "square", "triangle"), key=lambda s: abs(FILL[s] - fill))
            assert nearest == shape, (CLASSES[label], fill, has_hole)


def test_render_is_seeded():
    labels = np.arange(12)
    first, again = (render_batch(np.random.default_rng([1, 2]), labels, 32) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, render_batch(np.random.default_rng([1, 3]), labels, 32))


def test_every_split_fits_the_in_memory_shuffle_buffer_of_tfds_without_tensorflow():
    from tensorflow_datasets.core import shuffle

    for config, splits in ShapeClasses.SPLIT_SIZES.items():
        largest = max(splits.values()) * int(config) ** 2 * 3
        assert largest < shuffle.MAX_MEM_BUFFER_SIZE / 2, (config, largest)


def test_builder_prepares_balanced_classes_and_inspect_draws_a_row_per_class(tmp_path, monkeypatch):
    monkeypatch.setitem(ShapeClasses.SPLIT_SIZES, "32", {"train": 36, "test": 24})
    monkeypatch.setattr(ShapeClasses, "CHUNK_PIXELS", 10 * 32 * 32)  # several chunks, a partial last one
    train = source("shape_classes/32", "train", str(tmp_path))
    assert train.arrays["image"].shape == (36, 32, 32, 3) and train.arrays["image"].dtype == np.uint8
    assert np.bincount(train.arrays["label"]).tolist() == [3] * len(CLASSES)
    picture = tmp_path / "classes.png"
    text = data_inspect.describe("shape_classes/32", "train", str(tmp_path), picture=str(picture))
    assert "one row per class" in text and picture.stat().st_size > 10_000
    assert len(data_inspect.per_class_indices(train.arrays["label"], 2)) == 2 * len(CLASSES)


def test_skimage_photos_are_resized_centre_crops(tmp_path):
    photos = source("skimage_photos/256", "test", str(tmp_path))
    names = sorted(n.decode() for n in photos.arrays["name"])
    assert names == sorted(skimage_photos.PHOTOS) and photos.arrays["image"].shape == (17, 256, 256, 3)
    by_name = dict(zip((n.decode() for n in photos.arrays["name"]), range(len(names))))
    chelsea = photos.arrays["image"][by_name["chelsea"]]
    assert not photos.arrays["grey"][by_name["chelsea"]] and photos.arrays["grey"][by_name["camera"]]
    assert chelsea.std(axis=-1).mean() > 5  # colour survived
    camera = photos.arrays["image"][by_name["camera"]]
    np.testing.assert_array_equal(camera[..., 0], camera[..., 2])
    # The astronaut (512 x 512) at 256 is a plain 2x downsampling: close to 2x2 block means of the original.
    from PIL import Image

    with Image.open(skimage_photos.package_file("skimage", "data/astronaut.png", "")) as f:
        original = np.asarray(f.convert("RGB"), np.float64)
    blocks = original.reshape(256, 2, 256, 2, 3).mean((1, 3))
    astronaut = photos.arrays["image"][by_name["astronaut"]].astype(np.float64)
    assert np.abs(astronaut - blocks).mean() < 6


def test_skimage_photos_name_the_missing_package(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install scikit-image"):
        skimage_photos.load("astronaut", 256)
