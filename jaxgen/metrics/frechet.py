"""The Fréchet distance between two Gaussians fitted to features: FID (Inception features), FD-classifier (the
features of a classifier trained on the same data), and any other feature space, computed here and only here.

`d² = |μ_a − μ_b|² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})` (Dowson & Landau 1982; Heusel et al. 2017 for FID).

The trace of the matrix square root is taken as the sum of the square roots of the eigenvalues of
`Σ_a^{1/2} Σ_b Σ_a^{1/2}`, a symmetric positive semi-definite matrix with the same eigenvalues as `Σ_a Σ_b`, so two
symmetric eigendecompositions suffice. pytorch-fid and clean-fid call `scipy.linalg.sqrtm` on the non-symmetric
product instead, which can return a complex result with a small imaginary part that they then drop (and which they
patch with an ε on the diagonal when the product is singular); the tests check both give the same number.

Statistics are accumulated in float64 over batches (`FeatureStatistics`), with a mask for the padding rows of the
last eval batch, so a held-out split of any size streams through without holding its features.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class FeatureStatistics:
    """Running count, sum and sum of outer products of feature vectors; `mean` and `covariance` (unbiased, as
    `np.cov`) when at least two rows were added."""

    dim: int
    count: int = 0
    total: np.ndarray | None = None
    outer: np.ndarray | None = None

    def __post_init__(self):
        if self.total is None:
            self.total = np.zeros(self.dim)
        if self.outer is None:
            self.outer = np.zeros((self.dim, self.dim))

    def add(self, features, valid=None) -> "FeatureStatistics":
        """Adds the rows of `features [n, dim]` (only those where `valid [n]` is true, when given)."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [n, {self.dim}]; got shape {features.shape}")
        if valid is not None:
            features = features[np.asarray(valid, bool)]
        self.count += features.shape[0]
        self.total += features.sum(0)
        self.outer += features.T @ features
        return self

    @property
    def mean(self) -> np.ndarray:
        self._require_rows()
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        self._require_rows()
        mean = self.mean
        return (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)

    def _require_rows(self):
        if self.count < 2:
            raise ValueError(f"Feature statistics need at least 2 rows; got {self.count}")


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased covariance) of `features [n, dim]`, in float64."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be [n, dim]; got shape {features.shape}")
    stats = FeatureStatistics(features.shape[1]).add(features)
    return stats.mean, stats.covariance


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """Squared Fréchet distance between N(mean_a, cov_a) and N(mean_b, cov_b) (the number FID reports)."""
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    dim = mean_a.shape[0] if mean_a.ndim == 1 else -1
    if mean_b.shape != (dim,) or cov_a.shape != (dim, dim) or cov_b.shape != (dim, dim):
        raise ValueError(f"frechet_distance needs means [d] and covariances [d, d] of one d; got {mean_a.shape}, "
                         f"{cov_a.shape}, {mean_b.shape}, {cov_b.shape}")
    root_a = _psd_sqrt(cov_a)
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sum(np.sqrt(np.clip(middle, 0.0, None)))
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))


def frechet_distance_of(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """`frechet_distance` of two accumulated feature sets."""
    return frechet_distance(a.mean, a.covariance, b.mean, b.covariance)
