"""InstanT (instance-dependent pseudo-label thresholds) and the SSL suite it is compared with: FixMatch, FlexMatch,
FreeMatch, SoftMatch and a supervised-only baseline, trained by the forked SSL trainer (`trainer.py`)."""

from jaxgen.projects.instant.algorithms import ALGORITHMS, Algorithm, PseudoLabels, make
from jaxgen.projects.instant.thresholds import instant_threshold

__all__ = ["ALGORITHMS", "Algorithm", "PseudoLabels", "instant_threshold", "make"]
