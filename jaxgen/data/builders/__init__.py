"""Offline TFDS builders: datasets that ship inside Python packages, and seeded procedural datasets.

Importing a builder module registers it with TFDS under its snake_case class name; `jaxgen.data.sources` prepares
it on first use (no internet needed).
"""
