import cv2
import numpy as np
import pytest
from conftest import synthetic_photo

from colorize_cli.model.color import (
    LossWeighter,
    bgr_to_lab,
    count_prior,
    gamut_centres,
    grey_from_l,
    lab_to_bgr,
    normalize_u8,
    weights_from_prior,
    zhang_prior,
)


def _real_photos(shared, n=12):
    paths = sorted((shared / "data" / "lfw-deepfunneled").rglob("*.jpg"))[:n]
    paths += sorted((shared / "data" / "old_photos").rglob("*.png"))[:4]
    return [cv2.imread(str(p)) for p in paths]


def _round_trip_error(img):
    back = lab_to_bgr(bgr_to_lab(img))
    return np.abs(back.astype(int) - img.astype(int)).max(axis=(0, 1))


def test_lab_round_trip_real_photos(shared):
    for img in _real_photos(shared):
        lab = bgr_to_lab(img)
        assert lab.dtype == np.float32 and lab.shape == img.shape
        assert lab.min() >= -1.0 and lab.max() <= 1.0
        # 8-bit Lab is lossy; a real photo comes back within 2 levels per channel at the 99.9th percentile
        back = lab_to_bgr(lab).astype(int)
        err = np.abs(back - img.astype(int))
        assert np.percentile(err, 99.9) <= 2, err.max()


def test_lab_round_trip_any_size():
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (3, 7), (64, 64), (250, 250)]:
        img = cv2.resize(synthetic_photo(rng), (w, h), interpolation=cv2.INTER_AREA)
        assert lab_to_bgr(bgr_to_lab(img)).shape == (h, w, 3)
        assert _round_trip_error(img).max() <= 3


def test_grey_from_l_is_achromatic_with_the_same_lightness():
    grey = grey_from_l(np.arange(256, dtype=np.uint8))
    assert np.all(np.diff(grey.astype(int)) >= 0)   # monotone
    bgr = cv2.cvtColor(grey[None, :], cv2.COLOR_GRAY2BGR)
    l_back = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)[0, :, 0].astype(int)
    assert np.abs(l_back - np.arange(256)).max() <= 2


def _slow_weights(ab_norm, centres, bin_weights):
    """The seed's per-pixel loop, with its lookup fixed to the nearest in-gamut bin in 2-D."""
    out = np.zeros(ab_norm.shape, np.float32)
    for i in range(ab_norm.shape[1]):
        for j in range(ab_norm.shape[2]):
            v = ab_norm[:, i, j] * 128.0
            k = np.argmin(((centres - v) ** 2).sum(1))
            out[:, i, j] = bin_weights[k]
    return out


def test_vectorised_weights_equal_slow_reference():
    rng = np.random.default_rng(0)
    weighter = LossWeighter.from_prior(zhang_prior())
    for _ in range(3):
        ab_u8 = rng.integers(0, 256, (2, 16, 16)).astype(np.uint8)
        ab_norm = normalize_u8(ab_u8)
        slow = _slow_weights(ab_norm, gamut_centres(), weighter.bin_weights)
        np.testing.assert_array_equal(weighter.weights(ab_norm), slow)
        table = weighter.weights_u8(np.moveaxis(ab_u8, 0, -1))
        np.testing.assert_array_equal(table, slow[0])


def test_weights_are_inverse_prior():
    prior = zhang_prior()
    w = weights_from_prior(prior)
    assert w.shape == (313,)
    np.testing.assert_allclose(w * prior, 1.0, rtol=1e-5)
    assert weights_from_prior(np.array([0.5, 0.0]))[1] == 0.0


def test_count_prior_of_a_grey_image_is_the_neutral_bin():
    ab = np.full((10, 10, 2), 128, np.uint8)
    prior = count_prior(ab)
    assert prior.sum() == pytest.approx(1.0)
    neutral = np.argmin((gamut_centres() ** 2).sum(1))
    assert prior[neutral] == pytest.approx(1.0)


def test_grey_from_l_any_shape_is_the_table_lookup():
    from colorize_cli.model.color import _grey_lut

    rng = np.random.default_rng(3)
    for shape in [(5,), (3, 4), (2, 224, 224), (1, 7, 600), (0, 4)]:
        l_u8 = rng.integers(0, 256, shape, dtype=np.uint8)
        grey = grey_from_l(l_u8)
        assert grey.shape == l_u8.shape and grey.dtype == np.uint8
        np.testing.assert_array_equal(grey, _grey_lut()[l_u8])
