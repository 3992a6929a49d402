"""The official DRAC2022 Task 1 metric (the organisers' ``evaluation/metric_segmentation.py``).

Per class and per image: Dice = 2|GT ∩ P| / (|GT| + |P|) and IoU = |GT ∩ P| / |GT ∪ P|, computed
on sums of the {0, 1} arrays; an image whose ground truth is empty for that class is skipped
(NaN). A class score is the NaN-ignoring mean over its images; the challenge score is the mean
of the class scores. A class with no scored image at all has score NaN, and the challenge mean
is then taken over the remaining classes (nanmean) with a logged warning, so one absent class
does not turn the whole score into NaN. In JSON, NaN is written as null (JSON has no NaN).

The organisers sum the raw arrays, so a 0/255 prediction would score nearly 0 there; here any
value other than 0 and 1 is an error instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.errors import DracInputError

log = logging.getLogger(__name__)


def check_binary(array: np.ndarray, what: str) -> None:
    """Raise :class:`DracInputError` unless every value of ``array`` is 0 or 1."""
    if array.dtype == np.bool_:
        return
    if array.dtype == np.uint8:
        bad = bool(array.size) and int(array.max()) > 1
    else:
        bad = bool(np.any((array != 0) & (array != 1)))
    if bad:
        values = np.unique(array)
        shown = ", ".join(f"{v:g}" for v in values[:10].tolist())
        more = " ..." if values.size > 10 else ""
        raise DracInputError(
            f"{what}: values must be {{0, 1}}; found {{{shown}{more}}}"
            + (" (a 0/255 mask: map 255 to 1 first)" if 255 in values else "")
        )


def _dice_iou(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Both arrays uint8 in {0, 1} (checked by the callers)."""
    gt_sum = int(gt.sum(dtype=np.int64))
    if gt_sum == 0:
        return math.nan, math.nan
    pred_sum = int(pred.sum(dtype=np.int64))
    inter = int((gt * pred).sum(dtype=np.int64))  # 0/1 products fit in uint8
    return 2.0 * inter / (gt_sum + pred_sum), inter / (gt_sum + pred_sum - inter)


def dice_iou(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of one image's masks: (H, W) arrays of equal shape with values in {0, 1}.

    Returns (nan, nan) when ``gt`` is empty (the organisers skip such images), whatever
    ``pred`` holds.
    """
    if gt.shape != pred.shape:
        raise DracInputError(f"mask shapes differ: gt {gt.shape}, pred {pred.shape}")
    check_binary(gt, "ground truth")
    check_binary(pred, "prediction")
    return _dice_iou(gt.astype(np.uint8, copy=False), pred.astype(np.uint8, copy=False))


@dataclass
class ClassScore:
    """One class: ``dice``/``iou`` are NaN-ignoring means over ``per_image_*`` ((N,) float64,
    NaN where the image's ground truth is empty); NaN when ``n_scored`` is 0. ``gt_pixels`` and
    ``pred_pixels``: (N,) int64 lesion pixels per image on each side, ``overlap_pixels`` those on
    both. ``components``: (N, 4) int64 per image, :func:`match_components`' counts (lesions in
    the ground truth, in the prediction, ground-truth lesions the prediction touches, predicted
    components that touch no ground-truth lesion): whether a class is missed, smeared or broken
    into pieces, which Dice alone does not tell."""

    index: int
    dice: float
    iou: float
    n_scored: int
    n_images: int
    per_image_dice: np.ndarray
    per_image_iou: np.ndarray
    gt_pixels: np.ndarray
    pred_pixels: np.ndarray
    overlap_pixels: np.ndarray
    components: np.ndarray


COMPONENT_FIELDS = ("gt_components", "pred_components", "found_components", "false_components")


def match_components(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """One image's lesions as 8-connected components (the post-processing's connectivity):
    (ground-truth components, predicted components, ground-truth components that share at least
    one pixel with the prediction, predicted components that share none with the ground
    truth). Both arrays (H, W) uint8 in {0, 1}."""
    # Imported here: OpenCV takes a while to import and --help of evaluate/submission must not.
    import cv2

    n_gt, gt_labels = cv2.connectedComponents(gt, connectivity=8)
    n_pred, pred_labels = cv2.connectedComponents(pred, connectivity=8)
    both = (gt > 0) & (pred > 0)
    found = np.unique(gt_labels[both]).size
    touching = np.unique(pred_labels[both]).size
    return n_gt - 1, n_pred - 1, int(found), n_pred - 1 - int(touching)


def _nanmean(values: list[float] | np.ndarray) -> float:
    finite = [float(v) for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass
class Scores:
    """Per-class scores and the challenge means (nanmean over classes; see module docstring)."""

    classes: dict[int, ClassScore]
    mean_dice: float
    mean_iou: float

    def to_json(self) -> dict:
        """``{"classes": {"1": {"dice", "iou", "n_scored"}, ...}, "mean_dice", "mean_iou"}``
        with NaN written as None (null in JSON)."""
        return {
            "classes": {
                str(index): {
                    "dice": _json_float(c.dice),
                    "iou": _json_float(c.iou),
                    "n_scored": int(c.n_scored),
                }
                for index, c in sorted(self.classes.items())
            },
            "mean_dice": _json_float(self.mean_dice),
            "mean_iou": _json_float(self.mean_iou),
        }

    def table(self) -> str:
        """A fixed-width table: one row per class (Dice, IoU, scored/total images), a mean row."""

        def num(value: float) -> str:
            return f"{'n/a':>7}" if math.isnan(value) else f"{value:7.4f}"

        width = max(len(f"{i} {BY_INDEX[i].name}") for i in self.classes)
        width = max(width, len("mean over classes"))
        lines = [f"{'class':<{width}}  {'Dice':>7}  {'IoU':>7}  {'scored':>7}"]
        for index, c in sorted(self.classes.items()):
            label = f"{index} {BY_INDEX[index].name}"
            scored = f"{c.n_scored}/{c.n_images}"
            lines.append(f"{label:<{width}}  {num(c.dice)}  {num(c.iou)}  {scored:>7}")
        lines.append(f"{'mean over classes':<{width}}  {num(self.mean_dice)}  {num(self.mean_iou)}")
        unscored = [i for i, c in sorted(self.classes.items()) if c.n_scored == 0]
        if unscored:
            lines.append(
                f"note: class {', '.join(map(str, unscored))} has no image with ground-truth "
                "lesion (score n/a); the mean is over the other classes"
            )
        return "\n".join(lines)


def score(gt: dict[int, np.ndarray], pred: dict[int, np.ndarray]) -> Scores:
    """Score predictions against ground truth with the official semantics.

    gt, pred: class index (1, 2, 3) -> (N, H, W) stack of {0, 1} masks (any numeric dtype),
    slices in the same case order. Key sets and per-class shapes must match.
    """
    if set(gt) != set(pred) or not gt:
        raise DracInputError(
            f"ground truth and prediction must hold the same classes; gt has {sorted(gt)}, "
            f"pred has {sorted(pred)}"
        )
    unknown = sorted(set(gt) - set(BY_INDEX))
    if unknown:
        raise DracInputError(f"unknown class index {unknown}; valid: {sorted(BY_INDEX)}")
    classes: dict[int, ClassScore] = {}
    for index in sorted(gt):
        g, p = np.asarray(gt[index]), np.asarray(pred[index])
        if g.ndim != 3 or g.shape != p.shape:
            raise DracInputError(
                f"class {index}: expected two (N, H, W) stacks of one shape; gt has {g.shape}, "
                f"pred has {p.shape}"
            )
        check_binary(g, f"class {index} ground truth")
        check_binary(p, f"class {index} prediction")
        g, p = g.astype(np.uint8, copy=False), p.astype(np.uint8, copy=False)
        pairs = [_dice_iou(g[i], p[i]) for i in range(g.shape[0])]
        dice = np.array([d for d, _ in pairs], np.float64)
        iou = np.array([j for _, j in pairs], np.float64)
        classes[index] = ClassScore(
            index=index,
            dice=_nanmean(dice),
            iou=_nanmean(iou),
            n_scored=int(np.count_nonzero(~np.isnan(dice))),
            n_images=int(g.shape[0]),
            per_image_dice=dice,
            per_image_iou=iou,
            gt_pixels=g.reshape(g.shape[0], -1).sum(axis=1, dtype=np.int64),
            pred_pixels=p.reshape(p.shape[0], -1).sum(axis=1, dtype=np.int64),
            overlap_pixels=(g & p).reshape(g.shape[0], -1).sum(axis=1, dtype=np.int64),
            components=np.array(
                [match_components(g[i], p[i]) for i in range(g.shape[0])], np.int64
            ).reshape(-1, 4),
        )
    for c in classes.values():
        if c.n_scored == 0:
            log.warning(
                "class %d (%s): no image has a ground-truth lesion, so its score is NaN; the "
                "challenge mean is taken over the other classes",
                c.index,
                BY_INDEX[c.index].name,
            )
    return Scores(
        classes=classes,
        mean_dice=_nanmean([c.dice for c in classes.values()]),
        mean_iou=_nanmean([c.iou for c in classes.values()]),
    )
