"""The study's augmentations as pure, seeded TensorFlow functions on image batches.

What: horizontal flip, vertical flip, rotation by a multiple of 90 degrees (never an
arbitrary angle: that would interpolate pixels and cut the corners of a 96x96 patch
whose label is about its centre), uniform noise of amplitude ``noise * 255``, and an
optional colour jitter (brightness, contrast, saturation, hue) and an optional stain
jitter in HED space (:func:`hed_jitter`), each switched by
:class:`pcam.config.AugmentConfig`.

How: every function takes a batch ``(B, 96, 96, 3)`` of uint8 or float pixels in
0..255 and returns the same dtype (uint8 results are rounded and clipped). All random
draws are ``tf.random.stateless_*`` with a seed that is an int or a shape-``[2]``
tensor, so the same seed gives the same augmentation: :mod:`pcam.shard` uses that to
materialise augmented copies deterministically, and :mod:`pcam.input` feeds a fresh
per-batch seed from a seeded ``tf.data.Dataset.random`` for online augmentation. One
implementation serves both, so the copies in the shards and the online views can
never drift apart. Each image draws its own flips, rotation and jitter factors, and
its own noise field from a fixed bank (:func:`add_noise`).

Colour jitter follows ``tf.image`` semantics on a 0..1 scale: brightness adds a delta
in ``±brightness`` (times 255 here), contrast scales each channel's distance from
its mean by a factor in ``[1 - x, 1 + x]``, saturation scales the chroma by such a
factor and hue turns it by ``±hue`` of a full turn (both in YIQ space, the fast
linear stand-in for HSV). It is off in the
study's own list and on in ``configs`` that ask for it: PCam's two centres stain
differently, and colour jitter is what helps a model ignore that.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pcam import IMAGE_SHAPE
from pcam.config import TTA_VIEW_NAMES, AugmentConfig
from pcam.errors import ConfigError


def _tf() -> Any:
    import tensorflow as tf

    return tf


def hflip(images: Any) -> Any:
    """Mirror left-right (the width axis of ``(B, H, W, C)``)."""
    return _tf().reverse(images, axis=[2])


def vflip(images: Any) -> Any:
    """Mirror top-bottom (the height axis)."""
    return _tf().reverse(images, axis=[1])


def rot90(images: Any, k: int) -> Any:
    """Rotate counter-clockwise by ``k * 90`` degrees, ``k`` in {1, 2, 3} only."""
    if k not in (1, 2, 3):
        raise ValueError(f"rot90 takes k in 1, 2 or 3 (multiples of 90 degrees), got {k!r}")
    return _tf().image.rot90(images, k=k)


def view(images: Any, name: str) -> Any:
    """One named symmetry of a ``(B, H, W, C)`` batch (the TTA views; rotations counter-clockwise, as np.rot90).

    Args:
        images: A batch of images, any dtype.
        name: One of :data:`pcam.config.TTA_VIEW_NAMES` (the 8 symmetries of a square).

    Returns:
        The transformed batch, same dtype.

    Raises:
        ConfigError: ``name`` is not a view.
    """
    if name == "identity":
        return images
    if name == "hflip":
        return hflip(images)
    if name == "vflip":
        return vflip(images)
    if name in ("rot90", "rot180", "rot270"):
        return rot90(images, int(name[3:]) // 90)
    if name == "transpose":
        return _tf().transpose(images, perm=[0, 2, 1, 3])
    if name == "transverse":  # mirror about the anti-diagonal: transpose, then rotate by 180
        return rot90(view(images, "transpose"), 2)
    raise ConfigError(f"unknown TTA view {name!r}; expected one of {', '.join(TTA_VIEW_NAMES)}")


def _seeds(seed: Any, n: int) -> list[Any]:
    """``n`` independent stateless seeds from an int or a shape-[2] seed."""
    tf = _tf()
    base = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if base.shape.rank == 0:
        base = tf.stack([base, tf.constant(0, tf.int64)])
    return list(tf.unstack(tf.random.experimental.stateless_split(base, num=n)))


def _per_image(mask: Any) -> Any:
    return mask[:, None, None, None]


def _uniform(shape: Any, seed: Any, low: float, high: float) -> Any:
    tf = _tf()
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high, dtype=tf.float32)


def _dihedral_table() -> np.ndarray:
    """Source pixel of every output pixel for each (hflip, vflip, k) combination.

    Row ``h * 8 + v * 4 + k`` is the flattened index grid after hflip (if h), vflip
    (if v), then rotation by ``k`` quarter turns, so one batched ``tf.gather`` moves
    every image by its own transform: about ten times faster on CPU than per-image
    ``tf.where`` over reversed and rotated copies of the whole batch.
    """
    height, width, _ = IMAGE_SHAPE
    grid = np.arange(height * width, dtype=np.int32).reshape(height, width)
    rows = []
    for h in (0, 1):
        for v in (0, 1):
            for k in range(4):
                g = grid[:, ::-1] if h else grid
                g = g[::-1] if v else g
                rows.append(np.rot90(g, k).reshape(-1))
    return np.stack(rows)


_TABLE = _dihedral_table()


def random_dihedral(images: Any, cfg: AugmentConfig, seed: Any) -> Any:
    """Per image: a random flip each way and a random rotation by 0/90/180/270 degrees."""
    tf = _tf()
    batch = tf.shape(images)[0]
    s_h, s_v, s_r = _seeds(seed, 3)
    zero = tf.zeros([batch], tf.int32)
    h = tf.random.stateless_uniform([batch], s_h, 0, 2, tf.int32) if cfg.hflip else zero
    v = tf.random.stateless_uniform([batch], s_v, 0, 2, tf.int32) if cfg.vflip else zero
    k = tf.random.stateless_uniform([batch], s_r, 0, 4, tf.int32) if cfg.rot90 else zero
    if not (cfg.hflip or cfg.vflip or cfg.rot90):
        return images
    height, width, channels = IMAGE_SHAPE
    sources = tf.gather(tf.constant(_TABLE), h * 8 + v * 4 + k)
    flat = tf.reshape(images, [batch, height * width, channels])
    return tf.reshape(tf.gather(flat, sources, batch_dims=1), [batch, height, width, channels])


# RGB <-> YIQ: Y is luma, (I, Q) the chroma plane. Saturation scales the chroma plane
# and hue rotates it, so both are one 3x3 matrix per image (cheap) instead of a
# round trip through HSV (four times slower on CPU).
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def color_jitter(images: Any, cfg: AugmentConfig, seed: Any) -> Any:
    """Per-image brightness, contrast, saturation and hue on float pixels in 0..255."""
    tf = _tf()
    batch = tf.shape(images)[0]
    s_b, s_c, s_s, s_h = _seeds(seed, 4)
    x = images
    if cfg.brightness > 0:
        x = x + _per_image(_uniform([batch], s_b, -cfg.brightness, cfg.brightness) * 255.0)
    if cfg.contrast > 0:
        factor = _per_image(_uniform([batch], s_c, 1 - cfg.contrast, 1 + cfg.contrast))
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = (x - mean) * factor + mean
    if cfg.saturation > 0 or cfg.hue > 0:
        sat = _uniform([batch], s_s, 1 - cfg.saturation, 1 + cfg.saturation)
        theta = _uniform([batch], s_h, -cfg.hue, cfg.hue) * (2 * np.pi)
        cos, sin, one, nil = tf.cos(theta) * sat, tf.sin(theta) * sat, tf.ones_like(sat), tf.zeros_like(sat)
        chroma = tf.reshape(tf.stack([one, nil, nil, nil, cos, -sin, nil, sin, cos], axis=1), [-1, 3, 3])
        matrix = tf.einsum("ij,bjk,kl->bil", tf.constant(_YIQ_TO_RGB), chroma, tf.constant(_RGB_TO_YIQ))
        x = tf.einsum("bhwc,bdc->bhwd", x, matrix)
    return x


# Stain vectors of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001; skimage's
# rgb_from_hed): optical density (OD) of a pixel = stain densities @ _RGB_FROM_HED.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)
_LOG_ADJUST = float(np.log(1e-6))
"""skimage's OD scale: ``od = log(rgb) / log(1e-6)``, so stain densities compare with ``rgb2hed``'s."""


def hed_jitter(images: Any, scale: float, shift: float, seed: Any) -> Any:
    """Per-image stain augmentation in HED space on float pixels in 0..255 (Tellez et al. 2018).

    Each pixel's optical density is unmixed into haematoxylin, eosin and DAB
    densities, each density is multiplied by a factor in ``[1 - scale, 1 + scale]``
    and shifted by ``±shift`` (one draw per image and stain), and the result is mixed
    back to RGB. This mimics what differs between PCam's two centres (stain uptake and
    scanner colour) while keeping tissue structure. With ``scale = shift = 0`` it is
    the identity up to float rounding: unmixing and remixing are exact inverses (no
    clipping in between).
    """
    tf = _tf()
    batch = tf.shape(images)[0]
    s_a, s_b = _seeds(seed, 2)
    od = tf.math.log(tf.maximum(images / 255.0, 1e-6)) / _LOG_ADJUST
    stains = tf.einsum("bhwc,cd->bhwd", od, tf.constant(_HED_FROM_RGB))
    alpha = _uniform([batch, 3], s_a, 1 - scale, 1 + scale)[:, None, None, :]
    beta = _uniform([batch, 3], s_b, -shift, shift)[:, None, None, :] if shift > 0 else 0.0
    od = tf.einsum("bhwd,dc->bhwc", stains * alpha + beta, tf.constant(_RGB_FROM_HED))
    return tf.exp(od * _LOG_ADJUST) * 255.0


NOISE_FIELDS = 1024
"""Size of the bank of uniform noise fields that :func:`add_noise` draws from."""
NOISE_BANK_SEED = 20161123
"""Fixed, so the bank (and with it every augmentation) is the same in every process."""


@functools.cache
def noise_bank() -> Any:
    """``NOISE_FIELDS`` fields of uniform random bytes, ``(NOISE_FIELDS, 96, 96, 3)`` uint8 (28 MB).

    Made once per process from a fixed numpy seed, as an eager tensor even when first
    asked for while a graph is traced, so functions capture it by reference instead of
    embedding 28 MB of constants.
    """
    tf = _tf()
    fields = np.random.default_rng(NOISE_BANK_SEED).integers(0, 256, (NOISE_FIELDS, *IMAGE_SHAPE), dtype=np.uint8)
    with tf.init_scope():
        return tf.constant(fields)


def add_noise(images: Any, noise: float, seed: Any) -> Any:
    """Add uniform noise in ``±noise * 255`` to float pixels in 0..255.

    Each image gets a field picked at random from :func:`noise_bank`, mapped to 256
    evenly spaced levels from ``-a`` to ``+a`` (steps of 0.04 grey levels at the
    default 2 %, far below the uint8 resolution of the data). Drawing one index per
    image instead of one random number per pixel is what makes the study's
    augmentation cheap on a CPU: per-pixel Philox draws were 60 % of the input
    pipeline (bench/RESULTS.md). Every pixel is still uniform over the 256 levels and
    two images share a field with probability 1/1024; the noise is independent of
    labels, so reused fields carry nothing a model could learn from.
    """
    tf = _tf()
    amplitude = float(noise) * 255.0
    batch = tf.shape(images)[0]
    pick = tf.random.stateless_uniform([batch], seed=seed, minval=0, maxval=NOISE_FIELDS, dtype=tf.int32)
    levels = tf.gather(noise_bank(), pick)
    return images + (tf.cast(levels, images.dtype) * (2 * amplitude / 255.0) - amplitude)


def augment_batch(images: Any, cfg: AugmentConfig, seed: Any, dtype: Any = None) -> Any:
    """Augment a batch ``(B, 96, 96, 3)``; same seed, same result.

    Order: geometry (exact pixel moves, done in the input dtype: moving uint8 is four
    times cheaper than float32), then HED stain jitter, then colour jitter, then
    noise, then one clip to 0..255. The result has ``dtype`` (default: the input's; uint8 results are
    rounded). With noise and jitter off the result is exactly one of the eight
    dihedral transforms of each input image.

    The work runs as one XLA-compiled function (:func:`_compiled`), also inside
    ``tf.data`` maps: fused, the per-image gather and the noise cost a fifth of the
    same ops run one by one (bench/input_bench.py).
    """
    tf = _tf()
    images = tf.convert_to_tensor(images)
    dtype = tf.as_dtype(dtype or images.dtype)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
    return _compiled(cfg, dtype.name)(images, seed)


@functools.cache
def _compiled(cfg: AugmentConfig, dtype_name: str) -> Any:
    """The XLA-compiled body of :func:`augment_batch` for one config and output dtype."""
    tf = _tf()
    dtype = tf.as_dtype(dtype_name)

    def body(images: Any, seed: Any) -> Any:
        s_geo, s_col, s_noise, s_hed = _seeds(seed, 4)
        out = random_dihedral(images, cfg, s_geo)
        stain = cfg.hed > 0 or cfg.hed_shift > 0
        if not (cfg.color_jitter or cfg.noise > 0 or stain):
            return tf.cast(out, dtype)
        x = tf.cast(out, tf.float32)
        if stain:
            x = hed_jitter(x, cfg.hed, cfg.hed_shift, s_hed)
        if cfg.color_jitter:
            x = color_jitter(x, cfg, s_col)
        if cfg.noise > 0:
            x = add_noise(x, cfg.noise, s_noise)
        x = tf.clip_by_value(x, 0.0, 255.0)
        if dtype == tf.uint8:
            return tf.cast(tf.round(x), tf.uint8)
        return tf.cast(x, dtype)

    return tf.function(body, jit_compile=True, reduce_retracing=True)


def augment_numpy(images: Any, cfg: AugmentConfig, seed: Any) -> Any:
    """:func:`augment_batch` on a numpy batch, returning numpy (for materialised copies)."""
    return augment_batch(images, cfg, seed).numpy()
