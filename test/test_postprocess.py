import numpy as np
import pytest

from drac_algo.common.errors import DracInputError
from drac_algo.engine.postprocess import (
    class_mask,
    fill_holes,
    keep_most_confident,
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


def test_keep_most_confident_keeps_the_components_of_highest_peak():
    mask = np.array([[1, 1, 0, 1, 0, 1]], np.uint8)  # three components (8-connected)
    prob = np.array([[0.6, 0.7, 0.0, 0.9, 0.0, 0.65]], np.float32)
    assert keep_most_confident(mask, prob, 1).tolist() == [[0, 0, 0, 1, 0, 0]]
    # Peak, not mean or size: the two-pixel component (peak 0.7) beats the single 0.65.
    assert keep_most_confident(mask, prob, 2).tolist() == [[1, 1, 0, 1, 0, 0]]
    assert keep_most_confident(mask, prob, 0).tolist() == mask.tolist()  # 0 keeps all
    assert keep_most_confident(mask, prob, 5).tolist() == mask.tolist()
    assert keep_most_confident(np.zeros_like(mask), prob, 1).sum() == 0
    # The order of the clean-up: threshold, clean-up, then the k most confident.
    prob = np.array([[0.9, 0.0, 0.6, 0.6, 0.0, 0.55]], np.float32)
    assert class_mask(prob, 0.5).tolist() == [[1, 0, 1, 1, 0, 1]]
    assert class_mask(prob, 0.5, keep_components=1).tolist() == [[1, 0, 0, 0, 0, 0]]
    # Components below min_component_px go first, then k counts among the rest.
    assert class_mask(prob, 0.5, 2, keep_components=1).tolist() == [[0, 0, 1, 1, 0, 0]]
    with pytest.raises(DracInputError, match="k must be >= 0"):
        keep_most_confident(mask, prob, -1)
