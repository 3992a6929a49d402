"""Turn the members of a training run into the model bundle that inference loads.

Reads ``RUN_DIR/<task>/<member>/{member.json,best.pt}`` for every member that finished and
writes ``RUN_DIR/model/`` (see :mod:`drac_algo.bundle.store`) with each member's verified ONNX
export for the CPU backend (:mod:`drac_algo.training.onnx_export`; on failure a warning, and the
bundle runs on torch). A class's decision threshold is the median of its members' tuned thresholds,
and its number of most confident components kept the median of theirs (keeping all counting as
the most; :func:`median_keep`); the other post-processing settings come from the task's config.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import torch

from drac_algo.bundle.manifest import Bundle, ClassEntry, MemberSpec
from drac_algo.bundle.store import save_bundle
from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.engine.onnx_backend import ADD_ONNX_COMMAND
from drac_algo.training.augment import invariant_views
from drac_algo.training.config import TrainConfig
from drac_algo.training.onnx_export import add_onnx
from drac_algo.training.run_layout import BEST_CHECKPOINT, MEMBER_SUMMARY, bundle_dir, task_dir

log = logging.getLogger(__name__)


def find_members(run_dir: Path) -> dict[str, list[Path]]:
    """Finished member folders (those with ``member.json`` and ``best.pt``) per task key."""
    found: dict[str, list[Path]] = {}
    for lesion in LESION_CLASSES:
        folder = task_dir(run_dir, lesion.key)
        if not folder.is_dir():
            continue
        members = sorted(
            d
            for d in folder.iterdir()
            if (d / MEMBER_SUMMARY).is_file() and (d / BEST_CHECKPOINT).is_file()
        )
        if members:
            found[lesion.key] = members
    return found


def median_keep(keeps: list[int]) -> int:
    """The members' component counts combined: their median, with 0 (keep all) counting as the
    largest and the higher of the two middle values on an even count, so a class cuts its masks
    only as far as most of its members chose."""
    ordered = sorted(keeps, key=lambda k: math.inf if k == 0 else k)
    return ordered[len(ordered) // 2]


def describe_keep(keep: int) -> str:
    return "every component kept" if keep == 0 else f"the {keep} most confident component(s) kept"


def export_bundle(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the bundle of every finished member in ``run_dir`` to ``out``
    (default ``run_dir/model``) and return its path."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else bundle_dir(run_dir)
    members_by_task = find_members(run_dir)
    if not members_by_task:
        tasks = ", ".join(c.key for c in LESION_CLASSES)
        raise DracInputError(
            f"no finished members in {run_dir}: expected {run_dir}/<task>/<member>/"
            f"{{{MEMBER_SUMMARY},{BEST_CHECKPOINT}}} with task one of {tasks}"
        )
    classes: dict[int, ClassEntry] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    trained_in: list[dict] = []  # the distinct environments the members were trained in
    for task, folders in members_by_task.items():
        members, thresholds, keeps = [], [], []
        for folder in folders:
            summary = json.loads((folder / MEMBER_SUMMARY).read_text(encoding="utf-8"))
            cfg = TrainConfig.from_dict(summary["config"], str(folder / MEMBER_SUMMARY))
            best = torch.load(folder / BEST_CHECKPOINT, map_location="cpu", weights_only=True)
            file = f"{task}_{folder.name}.pt"
            states[file] = best["model"]
            thresholds.append(float(summary["threshold"]))
            keeps.append(int(summary.get("keep_components", 0)))  # older members kept all
            if summary.get("environment") not in (None, *trained_in):
                trained_in.append(summary["environment"])
            members.append(
                MemberSpec(
                    file=file,
                    model=cfg.model,
                    input_size=cfg.input_size,
                    normalization=cfg.normalization,
                    tta=invariant_views(cfg.augment),
                    fold=summary["fold"],
                    seed=summary["seed"],
                    val_dice=summary["val_dice"],
                )
            )
        # Members of one task share the decision settings; the last one read supplies them.
        lesion = cfg.lesion
        classes[lesion.index] = ClassEntry(
            index=lesion.index,
            key=lesion.key,
            threshold=float(statistics.median(thresholds)),
            min_component_px=cfg.postprocess.min_component_px,
            fill_holes=cfg.postprocess.fill_holes,
            members=members,
            keep_components=median_keep(keeps),
        )
        log.info(
            "bundle: %s with %d member(s), threshold %.2f, %s",
            task,
            len(members),
            classes[lesion.index].threshold,
            describe_keep(classes[lesion.index].keep_components),
        )
    save_bundle(Bundle(classes, environment={"training": trained_in}), out, states)
    try:
        add_onnx(out)
    except DracInputError as exc:
        # The bundle is complete without them: torch runs it everywhere, only slower on CPUs.
        log.warning(
            "bundle written without ONNX files (%s); CPU inference runs on torch. "
            "Add them later with: %s",
            exc,
            ADD_ONNX_COMMAND.replace("BUNDLE", str(out)),
        )
    log.info("bundle written to %s", out)
    return out
