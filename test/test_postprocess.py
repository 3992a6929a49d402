import numpy as np
import pytest

from drac_algo.common.errors import DracInputError
from drac_algo.engine.postprocess import (
    fill_holes,
    postprocess_mask,
    remove_small_components,
    threshold_probability,
)


def test_threshold_is_inclusive_and_gives_uint8():
    p = np.array([[0.0, 0.49], [0.5, 1.0]], dtype=np.float32)
    mask = threshold_probability(p, 0.5)
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[0, 0], [1, 1]]
    assert threshold_probability(p, 0.0).tolist() == [[1, 1], [1, 1]]
    with pytest.raises(DracInputError, match=r"\[0, 1\]"):
        threshold_probability(p, 1.5)
    with pytest.raises(DracInputError, match="2D"):
        threshold_probability(p[None], 0.5)


def test_small_components_use_8_connectivity():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = 1  # one diagonal component of 3 pixels
    mask[6, 6] = mask[6, 7] = 1  # a component of 2 pixels
    out = remove_small_components(mask, 3)
    assert out.dtype == np.uint8
    assert out[0, 0] == out[1, 1] == out[2, 2] == 1
    assert out[6].sum() == 0
    assert remove_small_components(mask, 4).sum() == 0
    assert np.array_equal(remove_small_components(mask, 0), mask)


def test_small_components_accept_0_255_and_bool():
    mask = np.zeros((5, 5), dtype=np.uint8)
    mask[:2, :2] = 255
    mask[4, 4] = 255
    expected = np.zeros((5, 5), dtype=np.uint8)
    expected[:2, :2] = 1
    assert np.array_equal(remove_small_components(mask, 2), expected)
    assert np.array_equal(remove_small_components(mask.astype(bool), 2), expected)


def test_fill_holes_fills_enclosed_background_only():
    ring = np.zeros((7, 7), dtype=np.uint8)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0
    filled = fill_holes(ring)
    assert filled[1:6, 1:6].all() and filled.sum() == 25
    # A gap at the border: the inside is connected to the outside and stays background.
    open_ring = ring.copy()
    open_ring[3, 5] = 0
    assert np.array_equal(fill_holes(open_ring), open_ring)


def test_postprocess_fills_then_removes():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[0:4, 0:4] = 1
    mask[1:3, 1:3] = 0  # hole of 4: ring of 12, 16 when filled
    mask[8, 8] = 1
    out = postprocess_mask(mask, min_component_px=14, holes=True)
    assert out[0:4, 0:4].all() and out.sum() == 16
    assert postprocess_mask(mask, min_component_px=14, holes=False).sum() == 0
    assert np.array_equal(postprocess_mask(mask), mask)
