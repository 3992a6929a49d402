"""``python -m drac_algo.evaluate --gt GT --pred PRED --report FILE.html [--run RUN_DIR]``: the
scored report, on the page :mod:`drac_algo.serve.report_page` lays out (``FILE.html`` plus its
images in the folder ``FILE/`` beside it).

Per case and class: Dice, IoU, ground-truth and predicted pixels, and a thumbnail of true
positives, false positives and false negatives in three colours (over the case image when the
case list is known, else over black); a click opens the same picture at full size (JPEG: a
full-size PNG of a textured image costs three times the space and ten times the time). Rows come
worst first: by the case's mean Dice over the classes it is scored in (cases scored in none
last). Above them: the per-class summary, the box plot of per-case Dice that ``--plot`` draws
and, with ``--run``, every member's training curves (``<task>/<member>/curves.png``). The
header names the run when PRED is a ``process.py`` output folder (its ``results.json``: bundle,
settings, device, timings, environment) and the bundle of ``RUN_DIR/model`` with ``--run``.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import drac_algo
from drac_algo.common.classes import BY_INDEX
from drac_algo.common.datafiles import read_json
from drac_algo.common.errors import DracInputError
from drac_algo.data.images import load_image
from drac_algo.data.metrics import Scores
from drac_algo.data.release import describe_folder
from drac_algo.serve.report import run_facts
from drac_algo.serve.report_page import (
    OUTCOME_COLOURS,
    THUMB_SIDE,
    Assets,
    CaseRow,
    Column,
    ReportPage,
    Thumb,
    outcome_rgb,
    shrink_image,
    shrink_mask,
    thumb_shape,
    write_page,
)
from drac_algo.serve.results import RESULTS_FILE, read_results
from drac_algo.tools.evaluate import LoadedCases, case_rows, plot_cases
from drac_algo.training.run_layout import BUNDLE_DIR, CURVES_PNG

BOX_PLOT = "dice_per_case.png"


def training_curves(run_dir: Path) -> list[Path]:
    """Every member's ``curves.png`` in the training run folder ``run_dir`` (sorted), or
    :class:`DracInputError` when it holds none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DracInputError(f"--run: expected a training run folder: {describe_folder(run_dir)}")
    curves = sorted(run_dir.glob(f"*/*/{CURVES_PNG}"))
    if not curves:
        raise DracInputError(
            f"--run {run_dir}: no training curves (<task>/<member>/{CURVES_PNG}) in it; expected "
            "the --out folder of python -m train"
        )
    return curves


def find_run_results(pred: Path) -> dict[str, Any] | None:
    """The ``results.json`` of the ``process.py`` run that wrote ``pred`` (its output folder, or
    the ``masks/`` folder in it), or None."""
    for folder in (Path(pred), Path(pred).parent):
        results = read_results(folder / RESULTS_FILE)
        if results is not None:
            return results
    return None


def _bundle_facts(run_dir: Path) -> list[tuple[str, str]]:
    """The training run's bundle (``RUN_DIR/model/manifest.json``) in a few lines."""
    manifest_path = run_dir / BUNDLE_DIR / "manifest.json"
    facts = [("run folder", str(run_dir))]
    if not manifest_path.is_file():
        return [*facts, ("bundle", f"none at {manifest_path}")]
    manifest = read_json(manifest_path, "model bundle manifest")
    for index, entry in sorted((manifest.get("classes") or {}).items()):
        if not isinstance(entry, dict):
            continue
        members = []
        for m in entry.get("members") or []:
            model = m.get("model") or {}
            dice = m.get("val_dice")
            members.append(
                f"{m.get('file')} ({model.get('arch')} {model.get('encoder')}, attention "
                f"{model.get('attention')}, fold {m.get('fold')} seed {m.get('seed')}, "
                f"validation Dice {'n/a' if dice is None else f'{dice:.3f}'})"
            )
        facts.append(
            (
                f"class {index} {entry.get('key')}",
                f"threshold {entry.get('threshold')}; " + "; ".join(members),
            )
        )
    return facts


def _mean_scored(values: list[float]) -> float | None:
    scored = [v for v in values if not math.isnan(v)]
    return sum(scored) / len(scored) if scored else None


def _summary(scores: Scores, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    def num(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.4f}"

    body = []
    for index, c in sorted(scores.classes.items()):
        worst = sorted(
            (r for r in rows if r["class"] == index and r["scored"]), key=lambda r: r["dice"]
        )[:3]
        body.append(
            [
                f"{index} {BY_INDEX[index].name} ({BY_INDEX[index].key})",
                num(c.dice),
                num(c.iou),
                f"{c.n_scored} of {c.n_images}",
                ", ".join(f"{r['case']} {r['dice']:.3f}" for r in worst) or "-",
            ]
        )
    body.append(["mean over classes", num(scores.mean_dice), num(scores.mean_iou), "", ""])
    return ["class", "Dice", "IoU", "cases scored", "worst cases (Dice)"], body


def build_scored_page(
    assets: Assets,
    scores: Scores,
    cases: LoadedCases,
    *,
    gt: Path,
    pred: Path,
    run_dir: Path | None,
    side: int = THUMB_SIDE,
) -> ReportPage:
    """The page of a scored prediction; writes its images into ``assets``."""
    classes = sorted(scores.classes)
    columns = [
        Column("case", "text"),
        Column("mean Dice", digits=3, title="mean over the classes this case is scored in"),
    ]
    for index in classes:
        group = f"{index} {BY_INDEX[index].key}"
        unscored = "not scored: no lesion of this class in the ground truth"
        columns += [
            Column("Dice", group=group, digits=3, title=unscored),
            Column("IoU", group=group, digits=3, title=unscored),
            Column("GT px", group=group, title="ground-truth lesion pixels"),
            Column("pred px", group=group, title="predicted lesion pixels"),
            Column("TP / FP / FN", "image", group=group),
        ]
    rows = []
    for slot, name in enumerate(cases.names):
        image = None if cases.images is None else load_image(cases.images[slot]).pixels
        shape = cases.gt[classes[0]].shape[1:]
        small_shape = thumb_shape(shape, side)
        small = None if image is None else shrink_image(image, small_shape)
        dices, values = [], []
        for index in classes:
            c = scores.classes[index]
            gt_mask, pred_mask = cases.gt[index][slot], cases.pred[index][slot]
            stem = assets.file_name(f"{name.split('.', 1)[0]}_{BY_INDEX[index].key}")
            small_gt = shrink_mask(gt_mask, small_shape)
            small_pred = shrink_mask(pred_mask, small_shape)
            src = assets.add_image(stem, outcome_rgb(small, small_gt, small_pred))
            full = f"full/{stem.removesuffix('.png')}.jpg"
            href = assets.add_image(full, outcome_rgb(image, gt_mask, pred_mask))
            dice, iou = float(c.per_image_dice[slot]), float(c.per_image_iou[slot])
            dices.append(dice)
            alt = f"{name} {BY_INDEX[index].key}: true/false positives, false negatives"
            values += [
                None if math.isnan(dice) else dice,
                None if math.isnan(iou) else iou,
                int(c.gt_pixels[slot]),
                int(c.pred_pixels[slot]),
                Thumb(src, href, alt, small_shape[1], small_shape[0]),
            ]
        rows.append(CaseRow(name, [name, _mean_scored(dices), *values]))
    # Worst first; cases scored in no class (mean Dice None) last, in case order.
    rows.sort(key=lambda r: (r.values[1] is None, r.values[1] or 0.0))
    flat = case_rows(scores, cases.names)
    figures = []
    plot_cases(assets.folder / BOX_PLOT, flat, f"{pred} against {gt}")
    figures.append(("Dice per case (box: quartiles; points: cases)", assets.url(BOX_PLOT)))
    if run_dir is not None:
        for path in training_curves(run_dir):
            member, task = path.parent.name, path.parent.parent.name
            src = assets.add_copy(f"curves/{assets.file_name(f'{task}_{member}')}", path)
            figures.append((f"training curves: {task} {member}", src))
    evaluation = [
        ("ground truth", str(gt)),
        ("prediction", str(pred)),
        ("case images", str(cases.images[0].parent) if cases.images else "not given"),
        ("cases", str(len(cases.names))),
        ("mean Dice", "n/a" if math.isnan(scores.mean_dice) else f"{scores.mean_dice:.4f}"),
        ("mean IoU", "n/a" if math.isnan(scores.mean_iou) else f"{scores.mean_iou:.4f}"),
        ("evaluated", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")),
        ("drac-algo", drac_algo.__version__),
    ]
    facts = [("Evaluation", evaluation)]
    results = find_run_results(pred)
    if results is not None:
        facts += run_facts(results)
    if run_dir is not None:
        facts.append(("Training run", _bundle_facts(run_dir)))
    notes = []
    if cases.images is None:
        notes.append("No case images (--images): the thumbnails are drawn over black.")
    return ReportPage(
        title=f"drac-algo evaluation: {Path(pred).name}",
        subtitle=(
            f"{pred} against the ground truth {gt}: {len(cases.names)} case(s), worst first "
            "(by the mean Dice over the classes each case is scored in)"
        ),
        facts=facts,
        summary=_summary(scores, flat),
        columns=columns,
        rows=rows,
        legend=list(OUTCOME_COLOURS.items()),
        sorted_by=1,
        figures=figures,
        notes=notes,
    )


def write_scored_report(
    path: Path,
    scores: Scores,
    cases: LoadedCases,
    *,
    gt: Path,
    pred: Path,
    run_dir: Path | None = None,
) -> Path:
    """Write the scored report ``path`` (``*.html``) and its image folder, atomically."""

    def build(assets: Assets) -> ReportPage:
        return build_scored_page(assets, scores, cases, gt=gt, pred=pred, run_dir=run_dir)

    return write_page(path, build)
