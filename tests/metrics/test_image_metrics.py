"""PSNR against hand values, SSIM against a direct numpy evaluation of Wang et al.'s formula."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxgen.metrics import image as image_metrics


def test_psnr_hand_values():
    a = np.zeros((2, 3, 4, 4, 3), np.float32)
    b = a.copy()
    b[0] += 0.1  # mse 0.01 -> 20 dB
    b[1] += 1.0 / 255.0  # mse (1/255)^2 -> 48.13 dB
    np.testing.assert_allclose(image_metrics.psnr(b, a), [20.0, 20 * np.log10(255.0)], rtol=1e-5)
    np.testing.assert_allclose(image_metrics.psnr(b * 255, a * 255, data_range=255.0), [20.0, 20 * np.log10(255.0)],
                               rtol=1e-5)


def _ssim_numpy(a, b, window=11, sigma=1.5):
    """Direct windowed sums over every valid position, per channel, then the mean."""
    x = np.arange(window) - (window - 1) / 2
    g = np.exp(-x**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for ch in range(a.shape[-1]):
        for i in range(a.shape[0] - window + 1):
            for j in range(a.shape[1] - window + 1):
                pa, pb = a[i:i + window, j:j + window, ch], b[i:i + window, j:j + window, ch]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * pa * pa).sum() - ma**2, (w * pb * pb).sum() - mb**2
                cov = (w * pa * pb).sum() - ma * mb
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(values)


def test_ssim_matches_the_direct_formula_and_is_one_for_identical_frames():
    a = np.asarray(jax.random.uniform(jax.random.key(0), (2, 14, 13, 3)))
    b = np.clip(a + 0.1 * np.asarray(jax.random.normal(jax.random.key(1), a.shape)), 0, 1)
    got = image_metrics.ssim(a, b)
    np.testing.assert_allclose(got, [_ssim_numpy(a[i], b[i]) for i in range(2)], rtol=1e-4)
    np.testing.assert_allclose(image_metrics.ssim(a, a), [1.0, 1.0], rtol=1e-5)
    assert float(got.max()) < 0.99


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(1, 8, 8, 3\).*\(1, 8, 9, 3\)"):
        image_metrics.psnr(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 9, 3)))
    with pytest.raises(ValueError, match="window 11 exceeds"):
        image_metrics.ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
