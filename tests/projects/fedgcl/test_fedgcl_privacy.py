"""EdgeRand's flip rate and LapGraph's noisy edge count, both outputs symmetric without self-loops, epsilon = inf
changes nothing, and bad epsilons or matrices are refused by name."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from jaxgen.projects.fedgcl import edge_rand, lap_graph
from jaxgen.projects.fedgcl import privacy


def random_graph(n: int, density: float, seed: int = 0) -> np.ndarray:
    upper = np.triu(np.random.default_rng(seed).random((n, n)) < density, 1)
    return (upper | upper.T).astype(np.float32)


def assert_simple_undirected(a):
    a = np.asarray(a)
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, a.T)
    assert not np.diag(a).any()


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 3.0])
def test_edge_rand_flips_each_pair_with_probability_one_over_one_plus_e_to_the_epsilon(epsilon):
    n = 300
    a = random_graph(n, 0.1)
    out = np.asarray(edge_rand(a, epsilon, jax.random.key(7)))
    assert_simple_undirected(out)
    upper = np.triu_indices(n, 1)
    flipped = (out[upper] != a[upper]).mean()
    p = 1 / (1 + math.exp(epsilon))
    sigma = math.sqrt(p * (1 - p) / len(upper[0]))
    assert abs(flipped - p) < 3 * sigma, (flipped, p, sigma)


def test_lap_graph_keeps_the_noisy_edge_count_and_is_simple_undirected():
    a = random_graph(60, 0.15, seed=1)
    for epsilon, seed in ((1.0, 0), (4.0, 1), (0.5, 2)):
        key = jax.random.key(seed)
        out = np.asarray(lap_graph(a, epsilon, key))
        assert_simple_undirected(out)
        count_key, _ = jax.random.split(key)
        expected = int(privacy.noisy_edge_count(a, privacy.LAPGRAPH_COUNT_SHARE * epsilon, count_key))
        assert np.triu(out, 1).sum() == expected
        assert expected != np.triu(a, 1).sum()  # the count carries Laplace(100 / epsilon) noise


def test_lap_graph_with_much_budget_keeps_most_edges_and_both_are_the_identity_at_infinity():
    a = random_graph(60, 0.15, seed=2)
    assert (np.asarray(lap_graph(a, 1e4, jax.random.key(0))) == a).mean() > 0.99
    np.testing.assert_array_equal(np.asarray(lap_graph(a, math.inf, jax.random.key(0))), a)
    np.testing.assert_array_equal(np.asarray(edge_rand(a, math.inf, jax.random.key(0))), a)


@pytest.mark.parametrize("mechanism", [edge_rand, lap_graph])
def test_bad_epsilons_and_matrices_are_refused_with_the_reason(mechanism):
    a = random_graph(5, 0.5)
    for epsilon in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="epsilon must be > 0"):
            mechanism(a, epsilon, jax.random.key(0))
    with pytest.raises(ValueError, match="square"):
        mechanism(np.zeros((3, 4)), 1.0, jax.random.key(0))
    directed = np.zeros((3, 3))
    directed[0, 1] = 1
    with pytest.raises(ValueError, match="symmetric"):
        mechanism(directed, 1.0, jax.random.key(0))


def test_guarantee_states_epsilon_and_mechanism():
    text = privacy.guarantee("edge_rand", 2.0)
    assert text.startswith("2-edge-DP") and "0.1192" in text  # 1 / (1 + e^2)
    assert "epsilon = inf" in privacy.guarantee(None, None)
