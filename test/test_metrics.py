import json
import logging
import math

import numpy as np
import pytest

from drac_algo.common.errors import DracInputError
from drac_algo.data.metrics import dice_iou, match_components, score


def _mask(rows, cols, shape=(8, 8)):
    mask = np.zeros(shape, np.uint8)
    mask[rows, cols] = 1
    return mask


def test_dice_iou_hand_computed():
    gt = _mask(slice(0, 2), slice(0, 2))  # 4 pixels
    pred = _mask(slice(0, 1), slice(0, 3))  # 3 pixels, 2 of them on gt
    dice, iou = dice_iou(gt, pred)
    assert dice == pytest.approx(2 * 2 / (4 + 3))
    assert iou == pytest.approx(2 / (4 + 3 - 2))


def test_empty_ground_truth_is_nan_whatever_the_prediction():
    empty = np.zeros((8, 8), np.uint8)
    assert all(math.isnan(v) for v in dice_iou(empty, _mask(0, 0)))
    assert all(math.isnan(v) for v in dice_iou(empty, empty))


def test_missed_lesion_scores_zero():
    assert dice_iou(_mask(0, 0), np.zeros((8, 8), np.uint8)) == (0.0, 0.0)


def test_0_255_prediction_is_an_error_not_a_near_zero_score():
    with pytest.raises(DracInputError, match=r"prediction: values must be \{0, 1\}.*0/255"):
        dice_iou(_mask(0, 0), _mask(0, 0) * 255)
    with pytest.raises(DracInputError, match="class 2 prediction"):
        gt = {i: _mask(0, 0)[None] for i in (1, 2, 3)}
        score(gt, {1: gt[1], 2: gt[2] * 255, 3: gt[3]})


def test_non_uint8_binary_arrays_are_accepted():
    gt = _mask(slice(0, 2), 0)
    assert dice_iou(gt.astype(bool), gt.astype(np.float32)) == (1.0, 1.0)
    with pytest.raises(DracInputError, match=r"found \{0, 0.5\}"):
        dice_iou(gt, gt * np.float32(0.5))


def _stacks():
    """3 images; hand-computed scores in the test below."""
    z = np.zeros((8, 8), np.uint8)
    gt = {
        1: np.stack([_mask(slice(0, 2), slice(0, 2)), z, _mask(5, 5)]),
        2: np.stack([z, _mask(slice(0, 4), slice(0, 4)), z]),
        3: np.stack([z, z, z]),  # no lesion anywhere: class score NaN
    }
    pred = {
        # image 0: 4 gt, 2 pred both on gt -> dice 4/6, iou 2/4; image 1: FP ignored; image 2: 0
        1: np.stack([_mask(0, slice(0, 2)), _mask(7, 7), z]),
        # image 1 exact -> 1, 1; image 0's FP ignored
        2: np.stack([_mask(0, 0), _mask(slice(0, 4), slice(0, 4)), z]),
        3: np.stack([_mask(1, 1), z, z]),
    }
    return gt, pred


def test_score_hand_computed_with_empty_ground_truth(caplog):
    gt, pred = _stacks()
    with caplog.at_level(logging.WARNING, logger="drac_algo.data.metrics"):
        scores = score(gt, pred)
    c1, c2, c3 = scores.classes[1], scores.classes[2], scores.classes[3]
    assert c1.dice == pytest.approx((4 / 6 + 0) / 2) and c1.iou == pytest.approx((2 / 4 + 0) / 2)
    assert (c1.n_scored, c1.n_images) == (2, 3)
    assert math.isnan(c1.per_image_dice[1])
    assert (c2.dice, c2.iou, c2.n_scored) == (1.0, 1.0, 1)
    assert math.isnan(c3.dice) and math.isnan(c3.iou) and c3.n_scored == 0
    # nanmean over the classes: the class without any scored image is left out
    assert scores.mean_dice == pytest.approx((1 / 3 + 1) / 2)
    assert scores.mean_iou == pytest.approx((1 / 4 + 1) / 2)
    assert "class 3 (Neovascularization): no image has a ground-truth lesion" in caplog.text


def test_to_json_has_exactly_the_keys_and_null_for_nan():
    scores = score(*_stacks())
    data = scores.to_json()
    assert set(data) == {"classes", "mean_dice", "mean_iou"}
    assert list(data["classes"]) == ["1", "2", "3"]
    for entry in data["classes"].values():
        assert set(entry) == {"dice", "iou", "n_scored"}
    assert data["classes"]["3"] == {"dice": None, "iou": None, "n_scored": 0}
    assert data["classes"]["2"] == {"dice": 1.0, "iou": 1.0, "n_scored": 1}
    text = json.dumps(data, allow_nan=False)  # valid JSON: no NaN tokens
    assert json.loads(text)["mean_dice"] == pytest.approx(2 / 3)


def test_all_classes_unscored_gives_nan_mean():
    empty = {i: np.zeros((2, 4, 4), np.uint8) for i in (1, 2, 3)}
    scores = score(empty, empty)
    assert math.isnan(scores.mean_dice) and math.isnan(scores.mean_iou)
    assert scores.to_json()["mean_dice"] is None


def test_table_lists_classes_and_mean():
    table = score(*_stacks()).table()
    lines = table.splitlines()
    assert lines[0].split() == ["class", "Dice", "IoU", "scored"]
    assert lines[1].startswith("1 Intraretinal Microvascular Abnormalities")
    assert lines[1].split()[-3:] == ["0.3333", "0.2500", "2/3"]
    assert lines[3].split()[-3:] == ["n/a", "n/a", "0/3"]
    assert lines[4].startswith("mean over classes")
    assert lines[4].split()[-2:] == ["0.6667", "0.6250"]
    assert "class 3 has no image" in table


def test_score_rejects_mismatched_inputs():
    gt, pred = _stacks()
    with pytest.raises(DracInputError, match="same classes"):
        score(gt, {1: pred[1], 2: pred[2]})
    with pytest.raises(DracInputError, match=r"class 1: .*\(3, 8, 8\).*\(2, 8, 8\)"):
        score(gt, {**pred, 1: pred[1][:2]})
    with pytest.raises(DracInputError, match="unknown class"):
        score({4: gt[1]}, {4: pred[1]})


def test_match_components_tells_missed_false_and_broken_lesions():
    gt = np.zeros((20, 20), np.uint8)
    gt[1:4, 1:12] = 1  # lesion A: found, in two predicted pieces
    gt[10:12, 10:12] = 1  # lesion B: missed
    gt[15, 15] = 1
    gt[16, 16] = 1  # lesion C: one 8-connected component (diagonal), missed
    pred = np.zeros_like(gt)
    pred[2, 1:5] = 1
    pred[2, 7:11] = 1
    pred[18, 1:3] = 1  # a false detection
    assert match_components(gt, pred) == (3, 3, 1, 1)
    assert match_components(gt, np.zeros_like(gt)) == (3, 0, 0, 0)
    assert match_components(np.zeros_like(gt), pred) == (0, 3, 0, 3)


def test_scores_carry_overlap_and_component_counts_per_image():
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[0, :2, :2] = 1
    pred = np.zeros_like(gt)
    pred[0, :1, :2] = 1
    pred[1, 5:, 5:] = 1
    c = score({1: gt}, {1: pred}).classes[1]
    assert c.overlap_pixels.tolist() == [2, 0]
    assert c.components.tolist() == [[1, 1, 1, 0], [0, 1, 0, 1]]
