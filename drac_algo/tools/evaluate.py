"""Score a prediction against ground truth with the official DRAC2022 Task 1 metric.

    python -m drac_algo.evaluate --gt SUBMISSION_OR_PNG_DIR --pred SUBMISSION_OR_PNG_DIR \\
        [--images CASE_IMAGES_DIR] [--json scores.json] [--per-case cases.csv] [--plot cases.png] \\
        [--report report.html [--run RUN_DIR]]

Each side is either a submission folder (``1.nii.gz 2.nii.gz 3.nii.gz``) or PNG masks in the DRAC
ground-truth layout: a folder holding the three class folders (e.g. ``.../2. Groundtruths/b.
Testing Set``) or a whole DRAC root, where the test-set ground truth is used. PNG masks are 0/255
and a missing file means an empty mask, so the case list and image size come from ``--images``
(the integer-sorted images; the test images of a DRAC root are used when it is not given).

The table goes to stdout, followed by the worst-scored cases of each class. ``--json`` writes
``{"classes": {"1": {"dice", "iou", "n_scored"}, ...}, "mean_dice", "mean_iou", "cases": [...]}``
with null for NaN; ``--per-case`` writes the same per-case rows as CSV (:data:`CASE_FIELDS`:
one row per case and class; Dice and IoU empty where the case is not scored); ``--plot`` draws
each class's per-case Dice as a box with the cases as points. A case is named by its image file
when the case list is known, else by its 1-based slice number in the submission stacks
(``#1``, ``#2``, ...). ``--report`` writes the results on one page, worst cases first, with
thumbnails of true/false positives and false negatives (:mod:`drac_algo.tools.evaluate_report`;
``--run`` adds the members' training curves). See :mod:`drac_algo.data.metrics` for the
semantics.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.cli import tool_command
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_path, atomic_write_text, check_output_file
from drac_algo.data.metrics import COMPONENT_FIELDS, Scores, score
from drac_algo.data.release import (
    class_folders,
    describe_folder,
    find_layout,
    folder_token,
    list_images,
    load_mask_stacks,
)
from drac_algo.data.submission import SUBMISSION_FILES, read_submission

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


def _load(source: MaskSource, images: list[Path] | None, side: str) -> dict[int, np.ndarray]:
    if source.kind == "submission":
        return read_submission(source.path)
    stacks = load_mask_stacks(source.path, images or [])
    if side == "prediction":
        # A missing mask file means an empty mask, so a whole class folder without one is most
        # likely a wrong folder or a run that wrote nothing: it scores 0 wherever the lesion is.
        for index, folder in class_folders(source.path).items():
            if not any(f.suffix.lower() == ".png" for f in folder.iterdir()):
                log.warning(
                    "prediction class %d (%s) folder %s holds no mask file: every case counts "
                    "as an empty mask (Dice 0 wherever the ground truth has the lesion)",
                    index,
                    BY_INDEX[index].key,
                    folder,
                )
    return stacks


@dataclass
class LoadedCases:
    """Both sides' masks, class index -> (N, H, W) uint8 {0, 1} stacks in case order, the case
    names and, when known, the case images (in the same order)."""

    gt: dict[int, np.ndarray]
    pred: dict[int, np.ndarray]
    names: list[str]
    images: list[Path] | None


def evaluate_cases(
    gt: str | os.PathLike, pred: str | os.PathLike, images: str | os.PathLike | None = None
) -> tuple[Scores, list[str]]:
    """Load both sides (see module docstring), check that case counts and shapes agree, score.
    Returns the scores and the case names in stack order."""
    cases = load_cases(gt, pred, images)
    return score(cases.gt, cases.pred), cases.names


def load_cases(
    gt: str | os.PathLike, pred: str | os.PathLike, images: str | os.PathLike | None = None
) -> LoadedCases:
    """Load both sides (see module docstring) and check that case counts and shapes agree."""
    gt_source, pred_source = find_masks(gt), find_masks(pred)
    case_images = _case_images(gt_source, pred_source, Path(images) if images else None)
    if case_images is not None:
        log.info("case list: %d images from %s", len(case_images), case_images[0].parent)
    gt_stacks = _load(gt_source, case_images, "ground truth")
    pred_stacks = _load(pred_source, case_images, "prediction")
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
    if case_images is not None:
        names = [p.name for p in case_images]
    else:
        names = [f"#{i + 1}" for i in range(gt_shape[0])]
    return LoadedCases(gt_stacks, pred_stacks, names, case_images)


def evaluate_paths(
    gt: str | os.PathLike, pred: str | os.PathLike, images: str | os.PathLike | None = None
) -> Scores:
    """:func:`evaluate_cases` without the case names."""
    return evaluate_cases(gt, pred, images)[0]


CASE_FIELDS = (
    "case",
    "class",
    "lesion",
    "dice",
    "iou",
    "gt_pixels",
    "pred_pixels",
    "scored",
    "overlap_pixels",
    "precision",
    "recall",
    *COMPONENT_FIELDS,
)
RATIO_FIELDS = ("dice", "iou", "precision", "recall")


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def case_rows(scores: Scores, names: list[str]) -> list[dict]:
    """One row per case and class (case order, then class), fields :data:`CASE_FIELDS`; Dice
    and IoU are None where the case's ground truth has no lesion of that class (not scored),
    pixel precision where nothing is predicted, recall where there is no lesion. The component
    counts (:func:`drac_algo.data.metrics.match_components`) tell a missed lesion
    (``found_components`` below ``gt_components``) from a false detection
    (``false_components``)."""
    rows = []
    for i, name in enumerate(names):
        for index, c in sorted(scores.classes.items()):
            dice, iou = float(c.per_image_dice[i]), float(c.per_image_iou[i])
            scored = not math.isnan(dice)
            rows.append(
                {
                    "case": name,
                    "class": index,
                    "lesion": BY_INDEX[index].key,
                    "dice": dice if scored else None,
                    "iou": iou if scored else None,
                    "gt_pixels": int(c.gt_pixels[i]),
                    "pred_pixels": int(c.pred_pixels[i]),
                    "scored": scored,
                    "overlap_pixels": int(c.overlap_pixels[i]),
                    "precision": _ratio(int(c.overlap_pixels[i]), int(c.pred_pixels[i])),
                    "recall": _ratio(int(c.overlap_pixels[i]), int(c.gt_pixels[i])),
                    **dict(zip(COMPONENT_FIELDS, map(int, c.components[i]), strict=True)),
                }
            )
    return rows


def worst_cases(rows: list[dict], k: int = 3) -> str:
    """Lines naming the ``k`` lowest-Dice scored cases of each class."""
    lines = []
    for index in sorted({r["class"] for r in rows}):
        scored = sorted(
            (r for r in rows if r["class"] == index and r["scored"]), key=lambda r: r["dice"]
        )
        if scored:
            shown = ", ".join(f"{r['case']} {r['dice']:.3f}" for r in scored[:k])
            lines.append(f"worst {BY_INDEX[index].key}: {shown}")
    return "\n".join(lines)


def write_case_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CASE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = dict(row, scored="yes" if row["scored"] else "no")
        out.update({k: "" if row[k] is None else f"{row[k]:.6f}" for k in RATIO_FIELDS})
        writer.writerow(out)
    atomic_write_text(path, buf.getvalue())


def plot_cases(path: Path, rows: list[dict], title: str) -> None:
    """Per class, a box of the scored cases' Dice with every case as a point beside it."""
    # Imported here: matplotlib takes about a second and only the plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    indices = sorted({r["class"] for r in rows})
    values = [[r["dice"] for r in rows if r["class"] == i and r["scored"]] for i in indices]
    fig, ax = plt.subplots(figsize=(2.2 * len(indices) + 2, 4))
    positions = list(range(1, len(indices) + 1))
    ax.boxplot([v or [math.nan] for v in values], positions=positions, widths=0.5,
               showfliers=False)  # fmt: skip
    rng = np.random.default_rng(0)  # a fixed jitter: the same figure for the same scores
    for pos, vals in zip(positions, values, strict=True):
        ax.scatter(pos + rng.uniform(-0.15, 0.15, len(vals)), vals, s=14, alpha=0.7, zorder=3)
    labels = [f"{BY_INDEX[i].key}\n({len(v)} scored)" for i, v in zip(indices, values, strict=True)]
    ax.set_xticks(positions, labels)
    ax.set_ylabel("Dice per case")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


@tool_command("drac-evaluate")
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
    help="Also write the scores and the per-case rows as JSON (NaN as null).",
)
@click.option(
    "--per-case",
    "per_case",
    type=click.Path(path_type=Path),
    default=None,
    help="Write one CSV row per case and class (Dice, IoU, pixels, precision, recall, "
    "lesions found and false detections as components, scored).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a PNG of each class's per-case Dice (box and points).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE.html",
    help="Write the results on one page: per case and class Dice, IoU and a thumbnail of true "
    "positives, false positives and false negatives, worst cases first, the box plot; its "
    "images go into the folder FILE/ beside it.",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="With --report: the training run folder (python -m train --out) whose members' "
    "training curves and bundle the page shows.",
)
def main(
    gt: Path,
    pred: Path,
    images: Path | None,
    json_path: Path | None,
    per_case: Path | None,
    plot_path: Path | None,
    report_path: Path | None,
    run_dir: Path | None,
) -> None:
    """Score PRED against GT with the official DRAC2022 Task 1 Dice/IoU."""
    outputs = (
        ("--json", json_path),
        ("--per-case", per_case),
        ("--plot", plot_path),
        ("--report", report_path),
    )
    for option, path in outputs:
        if path is None:
            continue
        if not path.parent.is_dir():
            raise DracInputError(
                f"cannot write {path}: expected a writable folder {path.parent}; it does not exist"
            )
        check_output_file(path, option)
    given = [path.resolve() for _, path in outputs if path is not None]
    if len(set(given)) < len(given):
        raise DracInputError("--json, --per-case, --plot and --report must name different files")
    if run_dir is not None and report_path is None:
        raise DracInputError("--run names the training curves of --report FILE.html; give both")
    if report_path is not None:
        # Imported here: the report's modules are needed only for it.
        from drac_algo.serve.report_page import check_report_path
        from drac_algo.tools.evaluate_report import training_curves, write_scored_report

        check_report_path(report_path, "--report")
        if run_dir is not None:
            training_curves(run_dir)  # refused now rather than after the scoring
    cases = load_cases(gt, pred, images)
    scores = score(cases.gt, cases.pred)
    try:
        _write_outputs(scores, cases.names, gt, pred, json_path, per_case, plot_path)
        if report_path is not None:
            write_scored_report(report_path, scores, cases, gt=gt, pred=pred, run_dir=run_dir)
            click.echo(f"report: {report_path}")
    except OSError as exc:  # disk full, ...: the message names the file (OutputWriteError)
        raise DracInputError(str(exc)) from None


def _write_outputs(
    scores: Scores,
    names: list[str],
    gt: Path,
    pred: Path,
    json_path: Path | None,
    per_case: Path | None,
    plot_path: Path | None,
) -> None:
    """Print the table and the worst cases; write the files asked for, each atomically."""
    rows = case_rows(scores, names)
    click.echo(scores.table())
    worst = worst_cases(rows)
    if worst:
        click.echo(worst)
    if json_path is not None:
        payload = {**scores.to_json(), "cases": rows}
        atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    if per_case is not None:
        write_case_csv(per_case, rows)
    if plot_path is not None:
        plot_cases(plot_path, rows, f"{pred} against {gt}")


if __name__ == "__main__":
    main()
