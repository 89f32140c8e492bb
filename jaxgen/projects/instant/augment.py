"""Weak and strong image augmentations in JAX: keyed, batched, jit-able, so they run on the accelerator inside the
train step instead of in host-side PIL loops (USB's approach).

Images are float [batch, height, width, channels] in [0, 1]. One `jax.random.uniform(key, [batch, draws])` gives every
example its own random numbers (one PRNG call, not one per decision: threefry is costly to compile on CPU), so a
batch is a pure function of (key, images).

- `weak`: random translation by up to `max_shift` of the side with reflect padding (USB's RandomCrop(padding,
  reflect)), then a horizontal flip with probability 1/2 when `flip` (off for digits: mirrored digits are not digits).
- `strong`: `weak`, then RandAugment-style: `num_ops` operations drawn uniformly from `OPS`, each applied with
  probability 1/2 at a uniform random magnitude, then Cutout of a random square up to half the side (FixMatch's
  RandAugmentMC; Equalize is left out: a per-image histogram is awkward to batch and adds little on grey digits).
  The drawn geometric ops are composed into one warp applied after the photometric ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

FILL = 0.5  # geometric ops and Cutout fill with mid-grey, like USB's (128, 128, 128)
WEAK_DRAWS, OP_DRAWS, CUTOUT_DRAWS = 3, 4, 3  # uniforms per image: shift/flip; per op slot; Cutout size and centre


def _check(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"augmentations take images [batch, height, width, channels]; got shape {images.shape}")


def _weak_one(image: jax.Array, u: jax.Array, flip: bool, max_shift: float) -> jax.Array:
    """`u`: 3 uniforms (vertical shift, horizontal shift, flip) — one draw per image keeps the compiled step small."""
    height, width, _ = image.shape
    pad_h, pad_w = round(max_shift * height), round(max_shift * width)
    padded = jnp.pad(image, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode="reflect")
    dy = jnp.floor(u[0] * (2 * pad_h + 1)).astype(jnp.int32)
    dx = jnp.floor(u[1] * (2 * pad_w + 1)).astype(jnp.int32)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
    if flip:
        image = jnp.where(u[2] < 0.5, image[:, ::-1], image)
    return image


def weak(key: jax.Array, images: jax.Array, *, flip: bool = True, max_shift: float = 0.125) -> jax.Array:
    _check(images)
    u = jax.random.uniform(key, (images.shape[0], WEAK_DRAWS))
    return jax.vmap(lambda image, draws: _weak_one(image, draws, flip, max_shift))(images, u)


# ---------------------------------------------------------------------------------------------------- strong ops


def _affine(image: jax.Array, matrix: jax.Array) -> jax.Array:
    """Samples `image` at `matrix @ (y, x, 1)` around the centre (bilinear, grey outside)."""
    height, width, channels = image.shape
    yy, xx = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    cy, cx = (height - 1) / 2, (width - 1) / 2
    source = jnp.einsum("ij,jhw->ihw", matrix, jnp.stack([yy - cy, xx - cx, jnp.ones_like(yy)]))
    coords = [source[0] + cy, source[1] + cx]
    return jnp.stack([ndimage.map_coordinates(image[..., c], coords, order=1, mode="constant", cval=FILL)
                      for c in range(channels)], axis=-1)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    """PIL ImageEnhance: factor 0 gives `other`, 1 the image, > 1 extrapolates."""
    return jnp.clip(other + factor * (image - other), 0.0, 1.0)


def _factor(m: jax.Array) -> jax.Array:
    return 0.05 + 1.9 * m  # PIL enhance factors in [0.05, 1.95]


def _signed(m: jax.Array, sign: jax.Array, limit: float) -> jax.Array:
    return sign * m * limit


def _autocontrast(image, m, sign):
    low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
    return jnp.where(high > low, (image - low) / jnp.where(high > low, high - low, 1.0), image)


def _sharpness(image, m, sign):
    kernel = jnp.array([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0  # PIL's SMOOTH filter
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width, _ = image.shape
    smooth = sum(kernel[i, j] * padded[i:i + height, j:j + width] for i in range(3) for j in range(3))
    return _blend(image, smooth, _factor(m))


def _posterize(image, m, sign):
    step = 2.0 ** jnp.round(4.0 * m)  # keep 8 − round(4m) bits
    return jnp.floor(image * 255.0 / step) * step / 255.0


def _rotation(m, sign, height, width):
    angle = jnp.deg2rad(_signed(m, sign, 30.0))
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _shear(axis: int) -> Callable:
    def matrix(m, sign, height, width):
        return jnp.eye(3).at[axis, 1 - axis].set(_signed(m, sign, 0.3))
    return matrix


def _translation(axis: int) -> Callable:
    def matrix(m, sign, height, width):
        return jnp.eye(3).at[axis, 2].set(_signed(m, sign, 0.3 * (height, width)[axis]))
    return matrix


# Photometric ops map (image, magnitude in [0, 1], sign ±1) to an image; geometric ops give a 3x3 homogeneous matrix
# (rows: source y, x) from (magnitude, sign, height, width). All geometric ops drawn for one image are composed and
# applied in one resampling at the end: one interpolation instead of several (sharper), and much less to compile.
PHOTOMETRIC: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "identity": lambda image, m, sign: image,
    "autocontrast": _autocontrast,
    "brightness": lambda image, m, sign: _blend(image, jnp.zeros_like(image), _factor(m)),
    "color": lambda image, m, sign: _blend(image, jnp.mean(image, axis=-1, keepdims=True), _factor(m)),
    "contrast": lambda image, m, sign: _blend(image, jnp.full_like(image, jnp.mean(image)), _factor(m)),
    "posterize": _posterize,
    "sharpness": _sharpness,
    "solarize": lambda image, m, sign: jnp.where(image >= 1.0 - m, 1.0 - image, image),
}
GEOMETRIC: dict[str, Callable[[jax.Array, jax.Array, int, int], jax.Array]] = {
    "rotate": _rotation,
    "shear_x": _shear(1),
    "shear_y": _shear(0),
    "translate_x": _translation(1),
    "translate_y": _translation(0),
}
OPS = (*PHOTOMETRIC, *GEOMETRIC)
_PHOTOMETRIC_LIST = tuple(PHOTOMETRIC.values())
_GEOMETRIC_LIST = tuple(GEOMETRIC.values())


def apply_op(name: str, image: jax.Array, magnitude: jax.Array, sign: jax.Array) -> jax.Array:
    """One named op on one image [H, W, C] (what `strong` draws; exposed for tests and pictures)."""
    if name in PHOTOMETRIC:
        return PHOTOMETRIC[name](image, magnitude, sign)
    if name in GEOMETRIC:
        return _affine(image, GEOMETRIC[name](magnitude, sign, *image.shape[:2])[:2])
    raise ValueError(f"Unknown augmentation {name!r}; known: {OPS}")


def _cutout(image: jax.Array, u: jax.Array, max_fraction: float) -> jax.Array:
    """`u`: 3 uniforms (size, centre y, centre x)."""
    height, width, _ = image.shape
    half = u[0] * max_fraction * height / 2
    cy, cx = u[1] * height, u[2] * width
    yy, xx = jnp.meshgrid(jnp.arange(height) + 0.5, jnp.arange(width) + 0.5, indexing="ij")
    inside = (jnp.abs(yy - cy) <= half) & (jnp.abs(xx - cx) <= half)
    return jnp.where(inside[..., None], FILL, image)


def _strong_one(image, u, flip, max_shift, num_ops, cutout):
    """`u`: WEAK_DRAWS + OP_DRAWS · num_ops + CUTOUT_DRAWS uniforms; per op slot: choice, applied, magnitude, sign."""
    image = _weak_one(image, u[:WEAK_DRAWS], flip, max_shift)
    height, width, _ = image.shape
    warp = jnp.eye(3)
    for slot in range(num_ops):
        choice, apply_draw, magnitude, sign_draw = u[WEAK_DRAWS + OP_DRAWS * slot:WEAK_DRAWS + OP_DRAWS * (slot + 1)]
        index = jnp.minimum(jnp.floor(choice * len(OPS)).astype(jnp.int32), len(OPS) - 1)
        applied = apply_draw < 0.5
        sign = jnp.where(sign_draw < 0.5, 1.0, -1.0)
        geometric = index >= len(PHOTOMETRIC)
        changed = jax.lax.switch(jnp.where(geometric, 0, index), _PHOTOMETRIC_LIST, image, magnitude, sign)
        image = jnp.where(applied & ~geometric, changed, image)
        matrix = jax.lax.switch(jnp.maximum(index - len(PHOTOMETRIC), 0), _GEOMETRIC_LIST, magnitude, sign,
                                height, width)
        warp = jnp.where(applied & geometric, matrix @ warp, warp)
    image = _affine(image, warp[:2])
    return _cutout(image, u[-CUTOUT_DRAWS:], cutout) if cutout > 0 else image


def strong(key: jax.Array, images: jax.Array, *, flip: bool = True, max_shift: float = 0.125, num_ops: int = 2,
           cutout: float = 0.5) -> jax.Array:
    _check(images)
    if num_ops < 0 or not 0.0 <= cutout <= 1.0:
        raise ValueError(f"strong augmentation needs num_ops >= 0 and cutout in [0, 1]; got {num_ops}, {cutout}")
    u = jax.random.uniform(key, (images.shape[0], WEAK_DRAWS + OP_DRAWS * num_ops + CUTOUT_DRAWS))
    return jax.vmap(lambda image, draws: _strong_one(image, draws, flip, max_shift, num_ops, cutout))(images, u)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """One experiment's augmentation settings; `weak` / `strong` apply them to uint8 or [0, 1] float images."""

    flip: bool = True
    max_shift: float = 0.125
    num_ops: int = 2
    cutout: float = 0.5

    def weak(self, key: jax.Array, images: jax.Array) -> jax.Array:
        return weak(key, to_unit(images), flip=self.flip, max_shift=self.max_shift)

    def strong(self, key: jax.Array, images: jax.Array) -> jax.Array:
        return strong(key, to_unit(images), flip=self.flip, max_shift=self.max_shift, num_ops=self.num_ops,
                      cutout=self.cutout)


def to_unit(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float [0, 1]; float images pass through."""
    return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
