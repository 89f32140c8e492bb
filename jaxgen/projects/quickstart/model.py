"""The quickstart's models: the shared classifiers of `jaxgen.nn.classifiers` (its gin tiers bind them here)."""

from jaxgen.nn.classifiers import CNNClassifier, MLPClassifier

__all__ = ["CNNClassifier", "MLPClassifier"]
