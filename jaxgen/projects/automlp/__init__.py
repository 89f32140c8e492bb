"""AutoMLP (Li et al., 2023) for sequential recommendation: an all-MLP recommender whose short-term window length
is searched by softmax architecture weights. So far: the data (`data`: 5-core, leave-one-out by time, left-padded
histories; a planted procedural dataset and MovieLens-100K) and the model (`model`: SRSMLP-style mixer branches over
all positions and over the last k for each candidate k, mixed by softmax weights alpha)."""

from jaxgen.data import register_dataset

register_dataset("automlp_planted", "jaxgen.projects.automlp.data")
register_dataset("automlp_ml100k", "jaxgen.projects.automlp.data")
