"""Augmentations: exact flips and quarter turns, bounded noise, seeded, switchable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pcam import augment as A
from pcam.config import AugmentConfig
from tests.fixtures_shards import sample_patches

GEOMETRY_ONLY = AugmentConfig(noise=0.0)
OFF = AugmentConfig(hflip=False, vflip=False, rot90=False, noise=0.0)


@pytest.fixture(scope="module")
def images(pcam_sample):
    return sample_patches(pcam_sample, "valid", 16)[0]  # 32 real patches


def dihedral(image: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square, by numpy."""
    return [np.rot90(view, k) for view in (image, image[:, ::-1]) for k in range(4)]


def which_view(augmented: np.ndarray, original: np.ndarray) -> int:
    matches = [i for i, v in enumerate(dihedral(original)) if np.array_equal(v, augmented)]
    assert matches, "augmented image is not a flip/quarter-turn of its original"
    return matches[0]


def test_flips_and_rotations_equal_numpy(images):
    np.testing.assert_array_equal(A.hflip(images).numpy(), np.flip(images, axis=2))
    np.testing.assert_array_equal(A.vflip(images).numpy(), np.flip(images, axis=1))
    for k in (1, 2, 3):
        np.testing.assert_array_equal(A.rot90(images, k).numpy(), np.rot90(images, k, axes=(1, 2)))


@pytest.mark.parametrize("k", [0, 4, 45, -1])
def test_rotation_is_only_by_quarter_turns(images, k):
    with pytest.raises(ValueError, match="multiples of 90"):
        A.rot90(images, k)


def test_geometry_gives_dihedral_transforms_and_uses_all_of_them(images):
    out = A.augment_batch(images, GEOMETRY_ONLY, seed=7).numpy()
    assert out.dtype == np.uint8 and out.shape == images.shape
    views = {which_view(a, o) for a, o in zip(out, images, strict=True)}
    assert len(views) >= 5  # 32 images, 8 equally likely views: all but a few appear


def test_float_input_stays_float_and_exact(images):
    out = A.augment_batch(images.astype(np.float32), GEOMETRY_ONLY, seed=3)
    assert out.dtype.name == "float32"
    for a, o in zip(out.numpy(), images, strict=True):
        which_view(a.astype(np.uint8), o)


@pytest.mark.parametrize("switch", ["hflip", "vflip", "rot90"])
def test_each_switch_alone_gives_only_its_own_views(images, switch):
    cfg = dataclasses.replace(OFF, **{switch: True})
    out = A.augment_batch(images, cfg, seed=11).numpy()
    allowed = {
        "hflip": lambda x: [x, x[:, ::-1]],
        "vflip": lambda x: [x, x[::-1]],
        "rot90": lambda x: [np.rot90(x, k) for k in range(4)],
    }[switch]
    changed = 0
    for a, o in zip(out, images, strict=True):
        assert any(np.array_equal(a, view) for view in allowed(o))
        changed += not np.array_equal(a, o)
    assert 0 < changed < len(images)


def test_everything_switched_off_is_identity(images):
    np.testing.assert_array_equal(A.augment_batch(images, OFF, seed=1).numpy(), images)
    jitter_zero = dataclasses.replace(OFF, color_jitter=True, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    np.testing.assert_array_equal(A.augment_batch(images, jitter_zero, seed=1).numpy(), images)


def test_same_seed_same_result_other_seed_differs(images):
    cfg = AugmentConfig(color_jitter=True)
    first = A.augment_batch(images, cfg, seed=5).numpy()
    np.testing.assert_array_equal(first, A.augment_batch(images, cfg, seed=5).numpy())
    np.testing.assert_array_equal(first, A.augment_numpy(images, cfg, [5, 0]))  # int seed == [seed, 0]
    assert not np.array_equal(first, A.augment_batch(images, cfg, seed=6).numpy())


def test_noise_amplitude_is_two_percent_and_nonzero(images):
    cfg = dataclasses.replace(OFF, noise=0.02)
    x = images.astype(np.float32)
    diff = A.augment_batch(x, cfg, seed=2).numpy() - x
    inside = (x > 6) & (x < 249)  # away from the clip at 0 and 255
    assert np.abs(diff).max() <= 0.02 * 255 + 1e-4
    assert np.abs(diff[inside]).mean() == pytest.approx(0.02 * 255 / 2, rel=0.05)  # uniform: mean |u| = a/2
    assert diff[inside].mean() == pytest.approx(0, abs=0.05)
    assert len(np.unique(np.round(diff[inside], 3))) >= 250  # 256 levels, not a handful
    out_u8 = A.augment_batch(images, cfg, seed=2).numpy().astype(int)
    assert 0 < np.abs(out_u8 - images).max() <= 5  # round(5.1)


def test_color_jitter_changes_colours_within_range(images):
    cfg = dataclasses.replace(OFF, color_jitter=True)
    out = A.augment_batch(images.astype(np.float32), cfg, seed=4).numpy()
    assert out.min() >= 0 and out.max() <= 255
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    shift = np.abs(out.mean(axis=(1, 2)) @ luma - images.mean(axis=(1, 2)) @ luma)
    assert shift.mean() > 5  # brightness moves each image's luma by up to 0.25 * 255
    assert shift.max() <= 0.25 * 255 + 5  # contrast, saturation and hue keep it (up to the final clip)
    hue_turn = np.abs(out - images).mean(axis=(1, 2)) - shift[:, None]
    assert (hue_turn > 0.5).any()  # colours moved beyond the brightness shift


def test_hue_rotation_keeps_luma(images):
    cfg = dataclasses.replace(OFF, color_jitter=True, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1)
    x = images.astype(np.float32)
    out = A.color_jitter(x, cfg, seed=[1, 2]).numpy()
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out @ luma, x @ luma, atol=1e-2)
    assert np.abs(out - x).mean() > 1


def _stains(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin/eosin/DAB densities by numpy (skimage's rgb2hed without its clip)."""
    od = np.log(np.maximum(rgb / 255.0, 1e-6)) / np.log(1e-6)
    return od @ np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))


def test_hed_jitter_scales_each_stain_by_one_factor_per_image(images):
    x = images.astype(np.float32)
    np.testing.assert_allclose(A.hed_jitter(x, 0.0, 0.0, [1, 2]).numpy(), x, atol=1e-2)  # exact round trip
    out = A.hed_jitter(x, 0.1, 0.0, [1, 2]).numpy()
    before, after = _stains(x), _stains(out)
    factors = []
    for i in range(len(x)):
        for c in (0, 1):  # haematoxylin and eosin: every real H&E patch has plenty of both
            # pixels with a channel near 0 sit on the 1e-6 floor of the log: not linear there
            dense = (np.abs(before[i, ..., c]) > 0.02) & (x[i].min(-1) >= 2) & (out[i].min(-1) >= 2)
            ratio = after[i, ..., c][dense] / before[i, ..., c][dense]
            factor = np.median(ratio)
            assert np.mean(np.abs(ratio - factor) < 2e-3) > 0.99  # one factor per image and stain
            factors.append(factor)
    factors = np.array(factors)
    assert factors.min() >= 0.9 - 1e-3 and factors.max() <= 1.1 + 1e-3
    assert factors.std() > 0.02  # drawn per image and stain, not one global factor
    shifted = A.hed_jitter(x, 0.0, 0.01, [3, 4]).numpy()
    delta = (_stains(shifted) - before).reshape(len(x), -1, 3)
    shift = np.median(delta, axis=1, keepdims=True)  # one shift per image and stain
    assert np.abs(shift).max() <= 0.01 + 1e-4 and np.abs(shift).max() > 0.005
    assert np.mean(np.abs(delta - shift) < 1e-4) > 0.99  # pixels on the log's 1e-6 floor aside


def test_hed_in_augment_batch_is_seeded_switchable_and_keeps_range(images):
    cfg = dataclasses.replace(OFF, hed=0.1, hed_shift=0.01)
    a = A.augment_batch(images, cfg, seed=5).numpy()
    assert a.dtype == np.uint8 and np.array_equal(a, A.augment_batch(images, cfg, seed=5).numpy())
    assert not np.array_equal(a, A.augment_batch(images, cfg, seed=6).numpy())
    assert np.abs(a.astype(int) - images).mean() > 1  # colours moved
    assert np.array_equal(A.augment_batch(images, OFF, seed=5).numpy(), images)  # off by default
    assert AugmentConfig().hed == 0 and AugmentConfig().hed_shift == 0
