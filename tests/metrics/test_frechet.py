"""The Fréchet distance against hand values (1-D, diagonal, shifted) and against pytorch-fid's formula written with
scipy's `sqrtm`; the streamed statistics against `np.cov`."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from jaxgen.metrics import frechet


def _scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The formula as pytorch-fid evaluates it: sqrtm of the non-symmetric product, real part."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def _random_covariance(rng, dim, rank=None):
    factor = rng.normal(size=(dim, rank or dim))
    return factor @ factor.T / (rank or dim)


def test_one_dimension_is_mean_and_std_difference_squared():
    # N(1, 2^2) vs N(-2, 0.5^2): (1 + 2)^2 + (2 - 0.5)^2 = 9 + 2.25
    assert frechet.frechet_distance([1.0], [[4.0]], [-2.0], [[0.25]]) == pytest.approx(11.25, rel=1e-12)


def test_diagonal_covariances_by_hand():
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.0, 0.0])
    expected = 1 + 4 + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # 5 + 1 + 1 + 0
    assert frechet.frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected)
    assert expected == 7.0


def test_same_gaussian_is_zero_and_a_shift_adds_its_squared_length():
    rng = np.random.default_rng(0)
    cov = _random_covariance(rng, 6)
    mean = rng.normal(size=6)
    assert frechet.frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([3.0, 0, 0, 4.0, 0, 0])
    assert frechet.frechet_distance(mean, cov, mean + shift, cov) == pytest.approx(25.0, rel=1e-9)


@pytest.mark.parametrize("rank", [None, 3])
def test_matches_the_scipy_sqrtm_formula(rank):
    rng = np.random.default_rng(1)
    dim = 8
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    sigma1, sigma2 = _random_covariance(rng, dim), _random_covariance(rng, dim, rank)
    ours = frechet.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert ours == pytest.approx(_scipy_frechet(mu1, sigma1, mu2, sigma2), rel=1e-6)
    assert ours == pytest.approx(frechet.frechet_distance(mu2, sigma2, mu1, sigma1), rel=1e-6)  # symmetric (sqrt of round-off eigenvalues ~1e-8)


def test_streamed_statistics_with_padding_match_numpy():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(50, 5)) @ rng.normal(size=(5, 5)) + 3.0
    stats = frechet.FeatureStatistics(5)
    stats.add(features[:32])
    last = np.concatenate([features[32:], np.full((14, 5), 1e6)])  # 18 real rows and 14 padding rows
    stats.add(last, valid=np.arange(32) < 18)
    assert stats.count == 50
    np.testing.assert_allclose(stats.mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    mean, cov = frechet.gaussian_statistics(features)
    assert frechet.frechet_distance_of(stats, stats) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(cov, np.cov(features, rowvar=False), rtol=1e-10)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet.FeatureStatistics(3).add(np.zeros((1, 3))).mean
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        frechet.FeatureStatistics(3).add(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="of one d"):
        frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
