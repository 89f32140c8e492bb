"""AutoMLP (Li et al., 2023) for sequential recommendation: an all-MLP recommender whose short-term window length is
searched through softmax architecture weights, with its baselines on one pipeline.

- `data`: 5-core, leave-one-out by time, left-padded histories; the registered datasets `automlp_planted`
  (procedural, planted short-term dynamics) and `automlp_ml100k` (MovieLens-100K read from RecBole's wheel);
- `model`: AutoMLP (long-term and short-term SRSMLP-style mixer branches, the candidates mixed by softmax(alpha);
  one window: the fixed-k mixer); `baselines`: SASRec and GRU4Rec;
- `task`: next-item prediction (full-softmax cross-entropy, full-ranking HR/NDCG/MRR on valid and test);
- `search`: the first-order bilevel step; `trainer`: the search, then the chosen window retrained by the shared
  trainer (`configs/automlp/`).

This module imports neither TFDS nor gin (the benchmark imports the models through it)."""

from jaxgen.data import register_dataset
from jaxgen.projects.automlp.baselines import GRU4Rec, SASRec
from jaxgen.projects.automlp.model import ARCH_PATTERN, PAD, AutoMLP, cross_entropy
from jaxgen.projects.automlp.search import search_optimizer, search_update

register_dataset("automlp_planted", "jaxgen.projects.automlp.data")
register_dataset("automlp_ml100k", "jaxgen.projects.automlp.data")

__all__ = ["ARCH_PATTERN", "PAD", "AutoMLP", "GRU4Rec", "SASRec", "cross_entropy", "search_optimizer",
           "search_update"]
