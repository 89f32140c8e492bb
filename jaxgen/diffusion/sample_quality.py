"""Judges of generated images: networks that map uint8 images to features (and, for a classifier, logits), so an
evaluator can measure how far samples are from held-out real images and whether they show the class they were
drawn for.

- `ClassifierJudge`: a classifier trained in the framework on the same data (its own recipe; its checkpoint found by
  path). Its features give "FD-classifier" (the Fréchet distance of `jaxgen.metrics.frechet` in the classifier's
  feature space, as FID is in Inception's), its predictions the conditional accuracy of samples. Offline and cheap,
  and it knows the data: on a 32-pixel procedural set it tells a disc from a ring, which ImageNet's Inception, fed
  the images upscaled to 299 pixels, may not.
- `InceptionJudge` (`jaxgen.metrics.inception`): FID's Inception-v3 pool features, from a weights file the user
  supplies (nothing is downloaded); its `fd_inception` is FID as pytorch-fid computes it (the samples' resize to
  299 pixels included).

A judge is any object with a unique `name`, a `prepare(image_shape)` that loads what it needs once, and
`__call__(images uint8 [n, h, w, c]) -> (features [n, d], logits [n, classes] or None)`. Samples are judged as the
uint8 images a user would save (rounded to 256 levels), as clean-fid recommends, never as floats.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgen.core import checkpoint as ckpt_lib
from jaxgen.core.classifier_task import ClassifierTask
from jaxgen.core.errors import ConfigError
from jaxgen.core.progress import CountProgress
from jaxgen.metrics import inception
from jaxgen.metrics.frechet import FeatureStatistics, frechet_distance_of


class Judge(Protocol):
    name: str

    def prepare(self, image_shape: tuple[int, int, int]) -> None: ...

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array | None]: ...


def _replicated_everywhere() -> NamedSharding:
    """Every device holds the whole array: a judge's weights are small and every process needs all of them."""
    return NamedSharding(Mesh(np.array(jax.devices()), ("devices",)), PartitionSpec())


@dataclasses.dataclass(eq=False)
class ClassifierJudge:
    """The classifier of a `ClassifierTask` run, restored from `checkpoint`: the run's workdir (its latest step), its
    `checkpoints/` folder, or one `checkpoints/<step>/`.

    `model` must be the module that run trained, with the same settings (bind it from the classifier recipe's model
    tier, as `configs/diffusion/shape_classes32_judge.gin` does); it must sow `intermediates/features`, as the
    classifiers of `jaxgen.nn.classifiers` do. The trained parameters are used, not an EMA the run may keep.
    """

    model: nn.Module
    checkpoint: str
    name: str = "classifier"
    _params: Any = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not Path(self.checkpoint).exists():
            raise ckpt_lib.CheckpointError(
                f"No classifier checkpoint at {str(Path(self.checkpoint).absolute())!r} for the sample-quality judge "
                f"({type(self).__name__}.checkpoint): train the classifier first with its own recipe "
                "(configs/diffusion/classifier_shape_classes32.gin for shape_classes/32) and point checkpoint at "
                "its workdir, or leave the task's judges empty")
        self._apply = jax.jit(self._features_and_logits)

    def prepare(self, image_shape: tuple[int, int, int]) -> None:
        if self._params is not None:
            return
        example = jnp.zeros((1, *image_shape), jnp.float32)
        shapes = jax.eval_shape(lambda: nn.unbox(self.model.init(jax.random.key(0), example, train=False)))
        sharding = _replicated_everywhere()
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                shapes["params"])
        source, step = ckpt_lib.open_source(Path(self.checkpoint).absolute(),  # orbax refuses relative paths
                                            f"{type(self).__name__}.checkpoint={self.checkpoint!r}")
        try:
            self._params = source.restore_subtree(step, {"params": abstract})["params"]
        except ckpt_lib.CheckpointError as error:
            raise ckpt_lib.CheckpointError(
                f"{error}\nIs {type(self).__name__}.model the module (and settings) that trained this checkpoint? "
                f"It expects parameters {jax.tree.map(lambda a: a.shape, shapes['params'])}") from error

    def _features_and_logits(self, params, images):
        logits, state = self.model.apply({"params": params}, ClassifierTask.preprocess(images), train=False,
                                         mutable=["intermediates"])
        if "features" not in state.get("intermediates", {}):
            raise ValueError(f"{type(self.model).__name__} sows no intermediates/features; a ClassifierJudge needs "
                             "the input of its last layer (self.sow('intermediates', 'features', x))")
        (features,) = state["intermediates"]["features"]
        return features.astype(jnp.float32), logits.astype(jnp.float32)

    def __call__(self, images):
        if self._params is None:
            raise RuntimeError("ClassifierJudge.prepare(image_shape) loads the classifier; call it first")
        return self._apply(self._params, images)


@dataclasses.dataclass(eq=False)
class InceptionJudge:
    """FID's Inception-v3 (`jaxgen.metrics.inception`) with the weights in `weights`: pytorch-fid's
    `pt_inception-2015-12-05-6726825d.pth` (reading it needs torch) or its `.npz` / `.safetensors` copy. A missing file
    stops the run at start-up, naming the file to download. No logits: it gives `fd_inception` only."""

    weights: str
    name: str = "inception"
    _variables: Any = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not Path(self.weights).is_file():
            raise ConfigError(
                f"No Inception weights at {str(Path(self.weights).absolute())!r} ({type(self).__name__}.weights): "
                f"FID needs pytorch-fid's {inception.FID_WEIGHTS_NAME} ({inception.FID_WEIGHTS_URL}); download it "
                "where the internet is and point weights at it, or drop the InceptionJudge from the task's judges")
        self._apply = jax.jit(lambda variables, images: inception.FIDInceptionV3().apply(
            variables, inception.preprocess(images)))

    def prepare(self, image_shape: tuple[int, int, int]) -> None:
        if self._variables is None:
            self._variables = jax.device_put(inception.load_fid_inception(self.weights), _replicated_everywhere())

    def __call__(self, images):
        if self._variables is None:
            raise RuntimeError("InceptionJudge.prepare(image_shape) loads the weights; call it first")
        return self._apply(self._variables, images), None


class Judgement:
    """What one judge made of a set of images: their feature statistics and, for a classifier, correct counts per
    class. Built up batch by batch (`add`), so any number of images is judged in bounded memory."""

    def __init__(self, num_classes: int):
        self.features: FeatureStatistics | None = None
        self.correct, self.seen = np.zeros(num_classes), np.zeros(num_classes)
        self.classifies = False

    def add(self, features, logits, labels, valid) -> None:
        features, valid = np.asarray(jax.device_get(features)), np.asarray(valid, bool)
        if self.features is None:
            self.features = FeatureStatistics(features.shape[1])
        self.features.add(features, valid)
        if logits is not None:
            self.classifies = True
            labels = np.asarray(labels)[valid]
            hits = np.asarray(jax.device_get(jnp.argmax(logits, -1)))[valid] == labels
            np.add.at(self.correct, labels, hits)
            np.add.at(self.seen, labels, 1)

    def accuracy(self) -> float:
        return float(self.correct.sum() / self.seen.sum())

    def class_accuracy(self) -> np.ndarray:
        """Per class; NaN for a class with no image."""
        with np.errstate(invalid="ignore"):
            return self.correct / self.seen


def judge_real(judges: Sequence[Judge], batches: Iterable[Mapping[str, Any]], num_classes: int, *,
               empty_error: str) -> dict[str, Judgement]:
    """Each judge's statistics of real images: `batches` of `image`, `label` and `valid` (an eval pass). The judges
    are prepared for the first batch's image shape; no batch at all raises `ValueError(empty_error)`."""
    judgements = None
    for batch in batches:
        if judgements is None:
            for judge in judges:
                judge.prepare(batch["image"].shape[1:])
            judgements = {judge.name: Judgement(num_classes) for judge in judges}
        for judge in judges:
            judgements[judge.name].add(*judge(batch["image"]), batch["label"], batch["valid"])
    if judgements is None:
        raise ValueError(empty_error)
    return judgements


def judge_generated(draw: Callable[[int, np.ndarray], np.ndarray], judges: Sequence[Judge],
                    real: Mapping[str, Judgement], *, num_classes: int, count: int, batch_size: int,
                    progress: CountProgress) -> dict[str, Any]:
    """`count` generated images judged against `real` (each judge's statistics of real images): `draw(index, labels)`
    returns uint8 images for the `batch_size` labels of batch `index` (classes in turn; always full batches, so a
    sampler compiles once; the rows past `count` are drawn but not counted). Returns every judge's `judged_metrics`."""
    labels = np.arange(-(-count // batch_size) * batch_size, dtype=np.int32) % num_classes
    generated = {judge.name: Judgement(num_classes) for judge in judges}
    for index, start in enumerate(range(0, count, batch_size)):
        batch_labels = labels[start:start + batch_size]
        images = draw(index, batch_labels)
        valid = np.arange(start, start + batch_size) < count
        for judge in judges:
            generated[judge.name].add(*judge(images), batch_labels, valid)
        progress.update(int(valid.sum()))
    results: dict[str, Any] = {}
    for judge in judges:
        results.update(judged_metrics(judge.name, generated[judge.name], real[judge.name]))
    return results


def judged_metrics(name: str, generated: Judgement, real: Judgement) -> dict[str, Any]:
    """One judge's verdict on generated images against real ones: `fd_<name>` and, for a judge that classifies,
    `<name>_accuracy` (samples classified as the class they were drawn for), its worst class, the per-class list and
    `<name>_real_accuracy` (the judge on the real images: the ceiling samples can reach)."""
    results: dict[str, Any] = {f"fd_{name}": float(frechet_distance_of(generated.features, real.features))}
    if generated.classifies:
        per_class = generated.class_accuracy()
        results[f"{name}_accuracy"] = generated.accuracy()
        results[f"{name}_worst_class_accuracy"] = float(np.nanmin(per_class))
        results[f"{name}_class_accuracy"] = per_class.tolist()
        results[f"{name}_real_accuracy"] = real.accuracy()
    return results
