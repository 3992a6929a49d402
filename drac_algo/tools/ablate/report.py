"""The ablation's table: per row, per-class and mean challenge Dice (mean and spread over seeds)
and training time; as markdown, JSON and a bar plot."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drac_algo.common.fsutil import atomic_path, atomic_write_text
from drac_algo.data.metrics import Scores

CLASS_KEYS = {1: "IRMA", 2: "NA", 3: "NV"}


@dataclass
class Row:
    """One row: its scores per seed (one entry for a seed ensemble) and training seconds."""

    name: str
    scores: list[Scores]
    seconds: list[float]
    note: str = ""

    def values(self, index: int | None) -> np.ndarray:
        """Per-seed Dice of class ``index`` (``None``: the challenge mean)."""
        if index is None:
            return np.array([s.mean_dice for s in self.scores])
        return np.array([s.classes[index].dice for s in self.scores])


def _cell(values: np.ndarray) -> str:
    if len(values) == 0 or np.all(np.isnan(values)):
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"


def verdict(row: Row, reference: Row) -> str:
    """Whether ``row``'s mean Dice differs from ``reference``'s beyond the spread over seeds:
    'helps'/'hurts' name what the row's change does relative to the reference (the change is
    the row's, so a lower row means the component it removes helped)."""
    a, b = row.values(None), reference.values(None)
    if len(a) < 2 or len(b) < 2:
        return "one value: no spread"
    diff = float(np.mean(a) - np.mean(b))
    noise = float(np.std(a) + np.std(b))
    if abs(diff) <= noise:
        return f"within noise ({diff:+.3f})"
    return f"{'higher' if diff > 0 else 'lower'} ({diff:+.3f})"


def markdown(rows: Sequence[Row], reference: str, caption: str) -> str:
    ref = next(r for r in rows if r.name == reference)
    lines = [
        caption,
        "",
        f"| row | IRMA | NA | NV | mean Dice | train min | vs {reference} | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        minutes = _cell(np.array(row.seconds) / 60) if row.seconds else "-"
        against = "-" if row is ref else verdict(row, ref)
        cells = [_cell(row.values(i)) for i in (1, 2, 3)] + [_cell(row.values(None))]
        lines.append(f"| {row.name} | {' | '.join(cells)} | {minutes} | {against} | {row.note} |")
    return "\n".join(lines) + "\n"


def diagnosis(row: Row) -> str:
    """What the row's errors are, per class over its scored images and seeds: pixel precision
    and recall, lesions (8-connected ground-truth components) found, predicted components that
    touch no lesion, and images scored 0. Dice alone does not tell a missed lesion from a false
    detection or a lesion broken into pieces."""
    lines = [
        f"**Where {row.name} errs** (test split, scored images, all seeds together):",
        "",
        "| class | images scored | Dice 0 | pixel precision | pixel recall | lesions found "
        "| predicted components | of them false |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index in (1, 2, 3):
        scored = n_zero = overlap = pred = gt = 0
        comps = np.zeros(4, np.int64)
        for s in row.scores:
            c = s.classes.get(index)
            if c is None:
                continue
            mask = ~np.isnan(c.per_image_dice)
            scored += int(mask.sum())
            n_zero += int((c.per_image_dice[mask] == 0).sum())
            overlap += int(c.overlap_pixels[mask].sum())
            pred += int(c.pred_pixels[mask].sum())
            gt += int(c.gt_pixels[mask].sum())
            comps += c.components[mask].sum(axis=0)
        if not scored:
            continue
        precision = f"{overlap / pred:.3f}" if pred else "n/a"
        recall = f"{overlap / gt:.3f}" if gt else "n/a"
        lines.append(
            f"| {CLASS_KEYS[index]} | {scored} | {n_zero} | {precision} | {recall} | "
            f"{comps[2]} of {comps[0]} | {comps[1]} | {comps[3]} |"
        )
    return "\n".join(lines) + "\n"


def to_json(rows: Sequence[Row], meta: dict) -> dict:
    def floats(values: np.ndarray) -> list[float | None]:
        return [None if math.isnan(v) else float(v) for v in values]

    return {
        **meta,
        "rows": [
            {
                "name": r.name,
                "note": r.note,
                "dice": {CLASS_KEYS[i]: floats(r.values(i)) for i in (1, 2, 3)},
                "mean_dice": floats(r.values(None)),
                "train_seconds": [round(s, 1) for s in r.seconds],
            }
            for r in rows
        ],
    }


def write_report(folder: Path, rows: Sequence[Row], reference: str, caption: str, meta: dict):
    """``ablation.md``, ``ablation.json`` and ``ablation.png`` in ``folder``; returns the
    markdown."""
    text = markdown(rows, reference, caption)
    ref = next((r for r in rows if r.name == reference), None)
    if ref is not None:
        text += "\n" + diagnosis(ref)
    atomic_write_text(folder / "ablation.md", text)
    atomic_write_text(folder / "ablation.json", json.dumps(to_json(rows, meta), indent=2) + "\n")
    # The caption's bold first part (data and seeds), wrapped: the whole caption overflows.
    title = caption.split("**")[1] if caption.count("**") >= 2 else caption.splitlines()[0]
    plot(folder / "ablation.png", rows, textwrap.fill(title.strip("# *"), 110))
    return text


def plot(path: Path, rows: Sequence[Row], title: str) -> None:
    """Grouped bars: per row, the three classes and the mean, with the spread over seeds."""
    # Imported here: matplotlib takes about a second and only the plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(CLASS_KEYS[i], i) for i in (1, 2, 3)] + [("mean", None)]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.8))
    y = np.arange(len(rows))
    height = 0.8 / len(groups)
    for k, (label, index) in enumerate(groups):
        means = [np.nanmean(r.values(index)) for r in rows]
        spread = [np.nanstd(r.values(index)) if len(r.scores) > 1 else 0.0 for r in rows]
        ax.barh(y + k * height, means, height, xerr=spread, label=label, capsize=2)
    ax.set_yticks(y + 0.4 - height / 2, [r.name for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("challenge Dice (mean over seeds; bars: spread)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
