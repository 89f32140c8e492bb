"""Data: named TFDS sources (offline builders included) and the deterministic per-host `Loader`."""

from jaxgen.data.loader import Loader, prefetch
from jaxgen.data.sources import OFFLINE_BUILDERS, ArraySource, DatasetMissingError, builder, prepare, source

__all__ = ["Loader", "prefetch", "OFFLINE_BUILDERS", "ArraySource", "DatasetMissingError", "builder", "prepare", "source"]
