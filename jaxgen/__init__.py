"""jaxgen: a JAX/Flax research framework — eight papers on one shared spine.

The spine is `jaxgen.train.run` (the shared trainer), `jaxgen.core` (gin-free library code: task protocol, mesh,
sharding, checkpoints, metrics), `jaxgen.data` (TFDS builders and the per-host loader) and `jaxgen.cli` (the thin
`jaxgen` command). Papers live in `jaxgen.projects.<paper>`.
"""

__version__ = "0.1.0"
