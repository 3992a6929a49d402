"""What a member's training depends on, recorded in ``last.pt`` so that ``--resume`` continues
only the run it interrupted.

A resumed member restores its weights, optimiser and schedule from ``last.pt`` and trains on
from there. If the recipe or the training images changed in between, the result would silently
mix two runs: epochs trained under one setting and scored under another, a best epoch chosen on
other validation images. :func:`check_resume` refuses that and names what changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from drac_algo.common.errors import DracInputError
from drac_algo.training.config import TrainConfig
from drac_algo.training.dataset import Sample

# Config fields that do not change what a member learns or how it is scored: how the work is
# run (data-loader workers, memory layout, autocast on this machine), the seeds of the other
# members and which fold runs now (a member's own split is in its data), and the starting
# weights, which a resumed member does not load.
RUNTIME_FIELDS = ("num_workers", "channels_last", "amp", "seeds", "init_from", "val.fold")


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _digest(sample: Sample) -> str:
    h = hashlib.sha256()
    for array in (sample.image, sample.mask):
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:16]


def member_fingerprint(
    cfg: TrainConfig, train: Sequence[Sample], val: Sequence[Sample]
) -> dict[str, Any]:
    """The member's config (without :data:`RUNTIME_FIELDS`) and a digest of every training and
    validation image with its mask, by case."""
    config = {k: v for k, v in _flat(cfg.to_dict()).items() if k not in RUNTIME_FIELDS}
    return {
        "config": config,
        "train": {str(s.case_id): _digest(s) for s in train},
        "val": {str(s.case_id): _digest(s) for s in val},
    }


def _data_changes(what: str, before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    changed = [c for c in before if c in now and before[c] != now[c]]
    gone = [c for c in before if c not in now]
    new = [c for c in now if c not in before]
    parts = []
    for label, cases in (("changed", changed), ("gone", gone), ("new", new)):
        if cases:
            shown = ", ".join(sorted(cases, key=lambda c: (len(c), c))[:5])
            more = f" and {len(cases) - 5} more" if len(cases) > 5 else ""
            parts.append(f"{what} case(s) {label}: {shown}{more}")
    return parts


def check_resume(stored: Mapping[str, Any] | None, current: Mapping[str, Any], where: str) -> bool:
    """Raise :class:`DracInputError` naming every difference between the fingerprint ``stored``
    in ``last.pt`` and the ``current`` one. Returns False (nothing to compare) for a ``last.pt``
    written before fingerprints were recorded, True when they match."""
    if stored is None:
        return False
    before, now = stored.get("config", {}), current["config"]
    problems = [
        f"{key} {before.get(key, '(unset)')!r} -> {now.get(key, '(unset)')!r}"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    for what in ("train", "val"):
        problems += _data_changes(what, stored.get(what, {}), current[what])
    if problems:
        raise DracInputError(
            f"{where}: cannot resume: expected the config and images this run started with, "
            f"found {len(problems)} difference(s): {'; '.join(problems)}. Resume with the same "
            "recipe, overrides and data, or train into a new --out"
        )
    return True
