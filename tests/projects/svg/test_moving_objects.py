"""The moving-objects video dataset: seeded and versioned, objects keep their identity and move as captioned."""

from __future__ import annotations

import numpy as np

from jaxgen.data import sources
from jaxgen.data.builders import moving_objects as mo


def test_same_seed_same_videos_and_captions():
    a = mo.example(np.random.default_rng([1, 2]), 8, 32)[0]
    b = mo.example(np.random.default_rng([1, 2]), 8, 32)[0]
    np.testing.assert_array_equal(a["video"], b["video"])
    np.testing.assert_array_equal(a["caption"], b["caption"])
    c = mo.example(np.random.default_rng([1, 3]), 8, 32)[0]
    assert not np.array_equal(a["video"], c["video"])


def test_objects_persist_and_move_by_their_velocity():
    """Rendered alone, each object has the same pixel count and colour in every frame, and its centroid moves by
    exactly its velocity per frame; it never leaves the frame; the caption names its colour, shape, direction."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        example, objects = mo.example(rng, 16, 32)
        assert mo.decode(example["caption"]) == example["caption_text"]
        for obj in objects:
            video = mo.render([obj], 16, 32, np.zeros(3))
            mask = np.all(video == mo.COLOURS[obj["colour"]], axis=-1)
            counts = mask.sum(axis=(1, 2))
            assert counts.min() == counts.max() > 0
            ys, xs = np.mgrid[0:32, 0:32]
            centroids = np.stack([[ys[m].mean(), xs[m].mean()] for m in mask])
            np.testing.assert_allclose(np.diff(centroids, axis=0), np.broadcast_to(obj["velocity"], (15, 2)),
                                       atol=1e-9)
            assert not mask[:, [0, -1], :].any() and not mask[:, :, [0, -1]].any()
            assert f"{obj['colour']} {obj['shape']} {obj['direction']}" in example["caption_text"]


def test_prepared_dataset_matches_the_generator():
    """The TFDS builder writes what the seeded generator draws (TFDS orders records by a hash of their keys, so the
    test split is compared as a set of (video, caption) byte strings)."""
    source = sources.source("moving_objects/f8_32", "test")
    assert len(source) == 256
    first = source[0]
    assert first["video"].shape == (8, 32, 32, 3) and first["video"].dtype == np.uint8
    assert first["caption"].shape == (mo.CAPTION_TOKENS,)
    prepared = {source[i]["video"].tobytes() + source[i]["caption"].tobytes() for i in range(len(source))}
    rng = np.random.default_rng([mo.SEED, 8, 32, 1])
    generated = [mo.example(rng, 8, 32)[0] for _ in range(256)]
    assert prepared == {e["video"].tobytes() + e["caption"].astype(np.int32).tobytes() for e in generated}


def test_caption_ids_round_trip_and_reject_long_captions():
    words = ["red", "disc", "left", "and", "blue", "square", "up"]
    assert mo.decode(mo.token_ids(words)) == " ".join(words)
    assert len(mo.VOCAB) == 15  # configs/svg/dit_*.gin: VOCAB_SIZE
    try:
        mo.token_ids(words * 2)
    except ValueError as e:
        assert "at most 8" in str(e)
    else:
        raise AssertionError("a 14-token caption was accepted")
