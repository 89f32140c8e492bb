"""PSNR and SSIM of images or videos against a reference (SVG: sparse vs dense video; DC-AE: reconstructions).

Both take float arrays `[..., height, width, channels]` in `[0, data_range]` and return one value per leading index
(per image for `[batch, h, w, c]`, per video for `[batch, frames, h, w, c]`): PSNR over all pixels of that index, SSIM
averaged over frames, channels and positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check(a: jax.Array, b: jax.Array, what: str) -> None:
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"{what} needs two arrays of one shape [..., height, width, channels]; got {a.shape} and "
                         f"{b.shape}")


def psnr(a: jax.Array, b: jax.Array, data_range: float = 1.0) -> jax.Array:
    """`10 log10(data_range^2 / mse)` per leading index `a.shape[0]` (infinite for identical inputs)."""
    _check(a, b, "psnr")
    mse = jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2, axis=tuple(range(1, a.ndim)))
    return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> jax.Array:
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    g = jnp.exp(-x**2 / (2 * sigma**2))
    return g / g.sum()


def ssim(a: jax.Array, b: jax.Array, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> jax.Array:
    """Wang et al. (2004) SSIM with an 11x11 Gaussian window (sigma 1.5), 'valid' borders, per leading index."""
    _check(a, b, "ssim")
    if min(a.shape[-3:-1]) < window:
        raise ValueError(f"ssim window {window} exceeds the frame size {a.shape[-3:-1]} of {a.shape}")
    shape = a.shape
    a, b = (x.astype(jnp.float32).reshape(-1, *shape[-3:]) for x in (a, b))
    g = _gaussian_window(window, sigma)

    def blur(x):
        """Separable Gaussian over height and width of `[n, h, w, c]`, valid borders."""
        x = jnp.moveaxis(x, -1, 1)
        x = jax.vmap(jax.vmap(jax.vmap(lambda r: jnp.convolve(r, g, mode="valid"))))(x)
        x = jnp.swapaxes(x, -1, -2)
        x = jax.vmap(jax.vmap(jax.vmap(lambda r: jnp.convolve(r, g, mode="valid"))))(x)
        return x

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.reshape(shape[0], -1).mean(-1)
