"""Score a prediction against ground truth with the official DRAC2022 Task 1 metric.

    python -m drac_algo.evaluate --gt SUBMISSION_OR_PNG_DIR --pred SUBMISSION_OR_PNG_DIR \\
        [--images CASE_IMAGES_DIR] [--json scores.json]

Each side is either a submission folder (``1.nii.gz 2.nii.gz 3.nii.gz``) or PNG masks in the DRAC
ground-truth layout: a folder holding the three class folders (e.g. ``.../2. Groundtruths/b.
Testing Set``) or a whole DRAC root, where the test-set ground truth is used. PNG masks are 0/255
and a missing file means an empty mask, so the case list and image size come from ``--images``
(the integer-sorted images; the test images of a DRAC root are used when it is not given).
The table goes to stdout; ``--json`` writes ``{"classes": {"1": {"dice", "iou", "n_scored"},
...}, "mean_dice", "mean_iou"}`` with null for NaN. See :mod:`drac_algo.metrics` for semantics.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from drac_algo.cli import exits_on_bad_input, setup_logging
from drac_algo.data import (
    describe_folder,
    find_layout,
    folder_token,
    list_images,
    load_mask_stacks,
)
from drac_algo.errors import DracInputError
from drac_algo.fsutil import atomic_write_text
from drac_algo.metrics import Scores, score
from drac_algo.submission import SUBMISSION_FILES, read_submission

log = logging.getLogger(__name__)


@dataclass
class MaskSource:
    """Where one side's masks are: ``kind`` "submission" (``path`` holds the .nii.gz files) or
    "png" (``path`` holds the three class folders); ``images`` is the test-image folder when the
    side was given as a whole DRAC root."""

    kind: str
    path: Path
    images: Path | None = None


def find_masks(path: str | os.PathLike) -> MaskSource:
    """Decide what kind of mask folder ``path`` is; an error lists its children otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise DracInputError(f"expected a mask folder: {describe_folder(path)}")
    present = [n for n in SUBMISSION_FILES.values() if (path / n).is_file()]
    if present:
        return MaskSource("submission", path)  # read_submission names any missing file
    tokens = {folder_token(p.name) for p in path.iterdir() if p.is_dir()}
    if {"1", "2", "3"} <= tokens:
        return MaskSource("png", path)
    try:
        layout = find_layout(path)
    except DracInputError as exc:
        raise DracInputError(
            f"{path} is neither a submission folder ({', '.join(SUBMISSION_FILES.values())}), "
            f"nor a folder of the three class folders ('1. ...', '2. ...', '3. ...'), nor a "
            f"DRAC root: {exc}"
        ) from None
    if layout.test_masks is None:
        raise DracInputError(
            f"DRAC root {path} has no test-set ground truth ('2. Groundtruths/b. Testing Set'); "
            "pass the class-folder parent or a submission folder instead"
        )
    return MaskSource("png", layout.test_masks, images=layout.test_images)


def _case_images(gt: MaskSource, pred: MaskSource, images: Path | None) -> list[Path] | None:
    if images is None:
        images = gt.images or pred.images
    if images is None:
        if "png" in (gt.kind, pred.kind):
            png = gt.path if gt.kind == "png" else pred.path
            raise DracInputError(
                f"--images is needed to score PNG masks in {png}: a missing mask file means an "
                "empty mask, so the case list and image size come from the images folder"
            )
        return None
    found = list_images(images)
    if not found:
        raise DracInputError(f"no case images: {describe_folder(images)}")
    return found


def _load(source: MaskSource, images: list[Path] | None) -> dict[int, np.ndarray]:
    if source.kind == "submission":
        return read_submission(source.path)
    return load_mask_stacks(source.path, images or [])


def evaluate_paths(
    gt: str | os.PathLike, pred: str | os.PathLike, images: str | os.PathLike | None = None
) -> Scores:
    """Load both sides (see module docstring), check that case counts and shapes agree, score."""
    gt_source, pred_source = find_masks(gt), find_masks(pred)
    case_images = _case_images(gt_source, pred_source, Path(images) if images else None)
    if case_images is not None:
        log.info("case list: %d images from %s", len(case_images), case_images[0].parent)
    gt_stacks, pred_stacks = _load(gt_source, case_images), _load(pred_source, case_images)
    gt_shape, pred_shape = gt_stacks[1].shape, pred_stacks[1].shape
    if gt_shape != pred_shape:
        raise DracInputError(
            f"ground truth and prediction differ in (cases, H, W): gt {gt_source.path} has "
            f"{gt_shape}, pred {pred_source.path} has {pred_shape}"
        )
    if case_images is not None and gt_shape[0] != len(case_images):
        raise DracInputError(
            f"the stacks hold {gt_shape[0]} cases but {case_images[0].parent} has "
            f"{len(case_images)} images"
        )
    return score(gt_stacks, pred_stacks)


@click.command()
@click.option("--gt", "gt", required=True, type=click.Path(path_type=Path), help="Ground truth.")
@click.option("--pred", "pred", required=True, type=click.Path(path_type=Path), help="Prediction.")
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of the case images (integer-sorted): the case list for PNG masks.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the scores as JSON (NaN as null).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@exits_on_bad_input
def main(gt: Path, pred: Path, images: Path | None, json_path: Path | None, verbose: bool) -> None:
    """Score PRED against GT with the official DRAC2022 Task 1 Dice/IoU."""
    setup_logging(verbose)
    scores = evaluate_paths(gt, pred, images)
    click.echo(scores.table())
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(scores.to_json(), indent=2) + "\n")


if __name__ == "__main__":
    main()
