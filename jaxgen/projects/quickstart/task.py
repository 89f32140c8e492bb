"""The quickstart's task: the shared `ClassifierTask` of `jaxgen.core.classifier_task` (its recipe binds it here)."""

from jaxgen.core.classifier_task import ClassifierTask

__all__ = ["ClassifierTask"]
