"""Data: named TFDS sources (offline builders included) and the deterministic per-host `Loader`."""

from jaxgen.data.loader import Loader, prefetch
from jaxgen.data.sources import (
    ArraySource, DatasetMissingError, builder, prepare, register_dataset, registered_datasets, source,
)

__all__ = ["Loader", "prefetch", "ArraySource", "DatasetMissingError", "builder", "prepare", "register_dataset",
           "registered_datasets", "source"]
