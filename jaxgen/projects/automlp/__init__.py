"""AutoMLP (Li et al., 2023) for sequential recommendation: an all-MLP recommender whose short-term window length is
searched through softmax architecture weights. So far (issue 21, first slice): the data (`data`: 5-core, leave-one-out
by time, left-padded histories; the registered datasets `automlp_planted`, procedural with planted short-term
dynamics, and `automlp_ml100k`, MovieLens-100K read from RecBole's wheel), the model (`model`: SRSMLP-style mixer
branches over all positions and over the last k for each candidate k, mixed by softmax(alpha)) and the first-order
bilevel step (`search`: weights on training batches, alpha on validation batches, taking turns)."""

from jaxgen.data import register_dataset
from jaxgen.projects.automlp.model import ARCH_PATTERN, AutoMLP, cross_entropy
from jaxgen.projects.automlp.search import search_optimizer, search_step

register_dataset("automlp_planted", "jaxgen.projects.automlp.data")
register_dataset("automlp_ml100k", "jaxgen.projects.automlp.data")

__all__ = ["ARCH_PATTERN", "AutoMLP", "cross_entropy", "search_optimizer", "search_step"]
