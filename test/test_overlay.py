"""Mask overlays: colours where the masks are, the grey image everywhere else."""

import numpy as np
import pytest

from drac_algo.common.errors import DracInputError
from drac_algo.serve.overlay import CLASS_COLOURS, overlay


def _image(value=100, size=20):
    return np.full((size, size), value, np.uint8)


def _square(a, b, size=20):
    mask = np.zeros((size, size), np.uint8)
    mask[a:b, a:b] = 1
    return mask


def test_shape_dtype_and_grey_elsewhere():
    image = np.random.default_rng(0).integers(0, 256, (20, 24), np.uint8)
    mask = np.zeros((20, 24), np.uint8)
    mask[5:10, 6:12] = 1
    out = overlay(image, {2: mask})
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    outside = mask == 0
    for channel in range(3):
        assert np.array_equal(out[..., channel][outside], image[outside])
    assert not np.array_equal(out[mask == 1], np.repeat(image[mask == 1][:, None], 3, axis=1))


def test_fill_blends_the_class_colour_without_outline():
    out = overlay(_image(100), {3: _square(4, 12)}, outline=False, alpha=0.5)
    expected = np.rint(0.5 * 100 + 0.5 * np.asarray(CLASS_COLOURS[3]))
    assert np.array_equal(out[4:12, 4:12].reshape(-1, 3), np.tile(expected, (64, 1)))
    assert np.array_equal(out[0, 0], [100, 100, 100])


def test_outline_is_full_colour_on_the_mask_border_only():
    out = overlay(_image(100), {1: _square(4, 12)}, outline=True, alpha=0.35)
    colour = np.asarray(CLASS_COLOURS[1])
    assert np.array_equal(out[4, 6], colour)  # top edge
    assert np.array_equal(out[11, 6], colour)  # bottom edge
    assert not np.array_equal(out[8, 8], colour)  # interior is blended
    assert np.array_equal(out[3, 6], [100, 100, 100])  # just outside is untouched


def test_thick_outline_stays_inside_the_mask():
    mask = _square(4, 12)
    out = overlay(_image(100), {2: mask}, thickness=5)
    outside = mask == 0
    assert (out[outside] == 100).all()


def test_accepts_0_255_masks_and_empty_masks():
    a = overlay(_image(), {2: _square(2, 6) * 255})
    b = overlay(_image(), {2: _square(2, 6)})
    assert np.array_equal(a, b)
    empty = overlay(_image(), {1: np.zeros((20, 20), np.uint8)})
    assert (empty == 100).all()


def test_classes_have_distinct_fixed_colours_and_small_lesions_paint_on_top():
    assert sorted(CLASS_COLOURS) == [1, 2, 3]
    assert len(set(CLASS_COLOURS.values())) == 3
    out = overlay(_image(0), {1: _square(5, 10), 2: _square(0, 20)}, outline=True)
    assert np.array_equal(out[5, 7], CLASS_COLOURS[1])  # IRMA outline over NA


@pytest.mark.parametrize(
    ("image", "masks", "match"),
    [
        (np.zeros((4, 4, 3), np.uint8), {}, "uint8 image"),
        (np.zeros((4, 4), np.float32), {}, "uint8 image"),
        (np.zeros((4, 4), np.uint8), {2: np.zeros((5, 4), np.uint8)}, "shape"),
        (np.zeros((4, 4), np.uint8), {4: np.zeros((4, 4), np.uint8)}, "unknown class"),
    ],
)
def test_bad_input_is_reported(image, masks, match):
    with pytest.raises(DracInputError, match=match):
        overlay(image, masks)


def test_bad_alpha_is_reported():
    with pytest.raises(DracInputError, match="alpha"):
        overlay(_image(), {}, alpha=1.5)
