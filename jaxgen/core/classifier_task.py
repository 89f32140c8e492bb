"""ClassifierTask: images in, class logits out, cross-entropy loss; the evaluator reports accuracy and draws the
confusion matrix and a grid of predictions into `eval/<step>/`. The quickstart trains it; InstanT's evaluator reuses
it on the EMA model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core.sharding import local_rows
from jaxgen.core.task import EvalContext
from jaxgen.metrics.classification import confusion_matrix, cross_entropy


class ClassifierTask:
    """Any Linen module mapping float images [B, H, W, C] in [-1, 1] to logits [B, num_classes]."""

    partition_rules = ()

    def __init__(self, model: nn.Module, num_classes: int = 10, class_names: tuple[str, ...] | None = None):
        self.model = model
        self.num_classes = num_classes
        self.class_names = class_names or tuple(str(i) for i in range(num_classes))
        self._eval_step = jax.jit(self._eval_counts)

    @staticmethod
    def preprocess(images: jax.Array) -> jax.Array:
        return images.astype(jnp.float32) / 127.5 - 1.0

    def init(self, rng, batch):
        return self.model.init({"params": rng}, self.preprocess(batch["image"]), train=False)

    def loss(self, variables, batch, rng):
        logits = self.model.apply(variables, self.preprocess(batch["image"]), train=True, rngs={"dropout": rng})
        loss = cross_entropy(logits, batch["label"])
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    def _eval_counts(self, variables, batch):
        logits = self.model.apply(variables, self.preprocess(batch["image"]), train=False)
        valid = batch["valid"]
        predictions = jnp.argmax(logits, -1)
        loss_sum = cross_entropy(logits, batch["label"], valid) * jnp.maximum(valid.sum(), 1)
        return confusion_matrix(predictions, batch["label"], self.num_classes, valid), loss_sum, predictions

    def evaluators(self):
        return {"classification": self.evaluate}

    def evaluate(self, variables, context: EvalContext) -> Mapping[str, float]:
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        loss_sum = 0.0
        first = None
        for batch in context.batches():
            counts, batch_loss, predictions = self._eval_step(variables, batch)
            confusion += np.asarray(jax.device_get(counts))
            loss_sum += float(batch_loss)
            if first is None:
                first = (local_rows(batch["image"]), local_rows(batch["label"]), local_rows(predictions))
        total = confusion.sum()
        if total == 0:
            raise ValueError("The eval split produced no valid examples")
        if context.is_main_process:
            self._draw(context.outdir, confusion, first)
        return {"accuracy": float(np.trace(confusion) / total), "loss": loss_sum / total, "examples": int(total)}

    def _draw(self, outdir: Path, confusion: np.ndarray, first) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        images, labels, predictions = first
        count = min(32, len(images))
        cols = 8
        rows = -(-count // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.35), squeeze=False)
        for ax, image, label, pred in zip(axes.flat, images[:count], labels[:count], predictions[:count]):
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
            ax.set_title(self.class_names[pred], color="green" if pred == label else "red", fontsize=9)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle("predictions (red: wrong)", fontsize=10)
        fig.tight_layout()
        fig.savefig(outdir / "predictions.png", dpi=90)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.imshow(confusion, cmap="Blues")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(self.num_classes), self.class_names, fontsize=7)
        ax.set_yticks(range(self.num_classes), self.class_names, fontsize=7)
        for (i, j), value in np.ndenumerate(confusion):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6)
        fig.tight_layout()
        fig.savefig(outdir / "confusion.png", dpi=90)
        plt.close(fig)
