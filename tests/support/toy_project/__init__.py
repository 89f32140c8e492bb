"""A test-only "paper" package: it registers its own datasets and brings its own collate functions and tasks, the way
a package under `jaxgen/projects/` does, without touching `jaxgen/core` or `jaxgen/data`."""

from jaxgen.data import register_dataset

register_dataset("toy_sequences", "support.toy_project.data")
register_dataset("toy_graphs", "support.toy_project.data")
