"""Losses against hand-computed values."""

import math

import pytest
import torch

from drac_algo.common.errors import DracInputError
from drac_algo.training.losses import (
    LOSSES,
    DiceLoss,
    PositiveDiceLoss,
    build_loss,
    focal_loss,
    skeleton,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def batch(probs: list[list[float]], targets: list[list[float]]):
    """Images of 1 x 2 x 2 pixels from flat lists of 4 probabilities / targets each."""
    logits = torch.tensor([[logit(p) for p in image] for image in probs]).reshape(-1, 1, 2, 2)
    target = torch.tensor(targets, dtype=torch.float32).reshape(-1, 1, 2, 2)
    return logits, target


def test_dice_is_one_coefficient_over_the_whole_batch():
    logits, target = batch(
        [[0.8, 0.6, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]], [[1, 1, 0, 0], [0, 0, 0, 1]]
    )
    # intersection 0.8 + 0.6 + 0.5 = 1.9; sum p = 1.7 + 2.0 = 3.7; sum t = 3
    expected = 1 - (2 * 1.9 + 1) / (3.7 + 3 + 1)
    assert DiceLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)
    # smooth = 0: 1 - 3.8 / 6.7
    assert DiceLoss(smooth=0)(logits, target).item() == pytest.approx(1 - 3.8 / 6.7, abs=1e-6)


def test_dice_on_empty_batch_pushes_probabilities_down():
    logits, target = batch([[0.5] * 4], [[0, 0, 0, 0]])
    assert DiceLoss()(logits, target).item() == pytest.approx(1 - 1 / 3, abs=1e-6)
    logits.requires_grad_(True)
    DiceLoss()(logits, target).backward()
    assert (logits.grad > 0).all()


def test_positive_dice_skips_empty_images_and_adds_bce():
    probs = [[0.8, 0.6, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]]
    targets = [[1, 1, 0, 0], [0, 0, 0, 0]]
    logits, target = batch(probs, targets)
    dice_first = (2 * 1.4 + 1) / (1.7 + 2 + 1)
    # p given to the true label: 0.8, 0.6, 0.8, 0.9 on the first image, 0.5 x 4 on the second.
    bce = -(math.log(0.8) + math.log(0.6) + math.log(0.8) + math.log(0.9) + 4 * math.log(0.5)) / 8
    loss = PositiveDiceLoss("bce", aux_weight=0.5)(logits, target)
    assert loss.item() == pytest.approx((1 - dice_first) + 0.5 * bce, abs=1e-6)


def test_positive_dice_averages_per_image():
    logits, target = batch(
        [[0.9, 0.9, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5]], [[1, 1, 0, 0], [0, 0, 1, 0]]
    )
    d1 = (2 * 1.8 + 1) / (2.0 + 2 + 1)
    d2 = (2 * 0.5 + 1) / (2.0 + 1 + 1)
    loss = PositiveDiceLoss("bce", aux_weight=0.0)(logits, target)
    assert loss.item() == pytest.approx(((1 - d1) + (1 - d2)) / 2, abs=1e-6)


@pytest.mark.parametrize("aux", ["bce", "focal"])
def test_batch_without_positive_image_keeps_only_the_aux_term(aux):
    logits, target = batch([[0.5] * 4, [0.5] * 4], [[0] * 4, [0] * 4])
    logits.requires_grad_(True)
    loss = PositiveDiceLoss(aux, aux_weight=2.0, gamma=2.0)(logits, target)
    per_pixel = math.log(2) * (0.25 if aux == "focal" else 1.0)  # focal: (1 - 0.5) ** 2
    assert loss.item() == pytest.approx(2.0 * per_pixel, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad > 0).all()


def test_focal_loss_values():
    logits, target = batch([[0.9, 0.2, 0.5, 0.7]], [[1, 0, 1, 0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), bce)
    p_t = [0.9, 0.8, 0.5, 0.3]
    expected = sum(-((1 - p) ** 2) * math.log(p) for p in p_t) / 4
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected, abs=1e-6)
    weights = [0.25, 0.75, 0.25, 0.75]
    expected_alpha = (
        sum(-w * (1 - p) ** 2 * math.log(p) for w, p in zip(weights, p_t, strict=True)) / 4
    )
    assert focal_loss(logits, target, 2.0, alpha=0.25).item() == pytest.approx(
        expected_alpha, abs=1e-6
    )


def test_losses_return_float32_for_low_precision_logits():
    logits, target = batch([[0.8, 0.6, 0.2, 0.1]], [[1, 1, 0, 0]])
    for name in LOSSES:
        loss = build_loss(name)(logits.to(torch.bfloat16), target)
        assert loss.dtype == torch.float32 and loss.ndim == 0


def test_build_loss_registry_errors():
    assert isinstance(build_loss("dice", smooth=0.5), DiceLoss)
    focal = build_loss("positive_dice_focal", gamma=1.0, aux_weight=0.3)
    assert (focal.aux, focal.gamma, focal.aux_weight) == ("focal", 1.0, 0.3)
    with pytest.raises(
        DracInputError,
        match="valid: dice, positive_dice_bce, positive_dice_focal, dice_skeleton_recall",
    ):
        build_loss("tversky")
    with pytest.raises(DracInputError, match="valid: aux_weight, smooth"):
        build_loss("positive_dice_bce", gamma=2.0)
    with pytest.raises(DracInputError, match="smooth must be a number >= 0"):
        build_loss("dice", smooth=-1)
    with pytest.raises(DracInputError, match="alpha"):
        build_loss("positive_dice_focal", alpha=1.5)


def test_shape_mismatch_is_reported():
    with pytest.raises(DracInputError, match=r"\(N, 1, H, W\)"):
        DiceLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))


def _scene() -> torch.Tensor:
    """A 64 x 64 target: a 24 x 24 blob and a 3 px wide, 40 px long segment."""
    target = torch.zeros(1, 1, 64, 64)
    target[0, 0, 4:28, 4:28] = 1
    target[0, 0, 40:43, 10:50] = 1
    return target


def test_skeleton_is_the_thickened_centre_line_inside_the_target():
    target = _scene()
    skel = skeleton(target)
    assert set(skel.unique().tolist()) == {0.0, 1.0}
    assert bool((skel <= target).all())  # never outside the structure
    # The 3 px segment's skeleton is its centre row, thickened back to the full width, along
    # (nearly) its whole length; the blob keeps only a thin cross-section of itself.
    segment = skel[0, 0, 40:43, 10:50]
    assert segment[1].sum() >= 36
    assert skel[0, 0, 4:28, 4:28].sum() < 0.25 * 24 * 24
    # Every component keeps some skeleton: both structures are represented.
    assert skel[0, 0, 4:28, 4:28].sum() > 0 and segment.sum() > 0


def test_skeleton_recall_weighs_a_missed_thin_segment_more_than_dice_does():
    target = _scene()
    # Two predictions that each miss the same number of pixels: the whole thin segment, or the
    # same area shaved off the blob's edge.
    miss_segment = target.clone()
    miss_segment[0, 0, 40:43, 10:50] = 0
    miss_blob = target.clone()
    miss_blob[0, 0, 4:9, 4:28] = 0  # 120 px, as the segment
    assert miss_segment.sum() == miss_blob.sum()

    def loss(name: str, pred: torch.Tensor) -> float:
        logits = (pred * 2 - 1) * 20.0  # near-binary probabilities
        return float(build_loss(name)(logits, target))

    assert loss("dice", miss_segment) == pytest.approx(loss("dice", miss_blob), abs=1e-4)
    assert (
        loss("dice_skeleton_recall", miss_segment) > loss("dice_skeleton_recall", miss_blob) + 0.2
    )
    assert loss("dice_skeleton_recall", target) == pytest.approx(0.0, abs=1e-4)


def test_skeleton_recall_parameters_are_checked():
    assert build_loss("dice_skeleton_recall", weight=0.5).weight == 0.5
    with pytest.raises(DracInputError, match="iterations must be an int >= 1"):
        build_loss("dice_skeleton_recall", iterations=0)
    with pytest.raises(DracInputError, match="weight must be a number >= 0"):
        build_loss("dice_skeleton_recall", weight=-1)
