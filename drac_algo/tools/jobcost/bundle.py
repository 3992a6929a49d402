"""The model bundle a job-cost run loads: the default recipes' ensemble with seeded random weights,
written exactly as a trained bundle is (:func:`drac_algo.bundle.store.save_bundle`, then each
member's verified ONNX export by :func:`drac_algo.training.onnx_export.add_onnx`), and cached by
its parameters so that a second run reuses it; or a real bundle (``--bundle``), described."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drac_algo.bundle.manifest import MANIFEST, Bundle, ClassEntry, MemberSpec
from drac_algo.bundle.store import save_bundle
from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.networks.models import build_network
from drac_algo.training.augment import invariant_views
from drac_algo.training.config import TrainConfig, load_config
from drac_algo.training.onnx_export import add_onnx
from drac_algo.training.run_layout import member_name

log = logging.getLogger(__name__)

# --quick's networks: bench's tiny variant of the recipes' (resnet18, narrow decoder).
QUICK_MODEL = {"encoder": "resnet18", "decoder_channels": (32, 32, 16, 16, 16)}


def default_members_per_class() -> int:
    """Members per class that ``python -m train`` makes with the default recipes: each class's
    ``val.folds`` x ``len(seeds)`` (:attr:`TrainConfig.n_members`; 5 folds x 1 seed = 5). The
    classes' recipes agree on it; a disagreement is a recipe change this tool must hear about."""
    counts = {lesion.key: load_config(lesion.key).n_members for lesion in LESION_CLASSES}
    if len(set(counts.values())) != 1:
        raise DracInputError(
            f"the default recipes train different member counts per class ({counts}); "
            "pass --members N"
        )
    return next(iter(counts.values()))


def recipe_manifest(
    members_per_class: int, side: int, model_changes: dict[str, Any] | None = None
) -> Bundle:
    """The manifest ``python -m train`` + export would write for the default recipes (``side``
    the input size instead of the recipe's when they differ), before its checksums: per class the
    recipe's network, normalisation, post-processing and TTA views, ``members_per_class`` members
    named as the export names them (``<task>_fold<k>-seed<s>.pt``, folds first, then seeds), and
    threshold 0.5 (a trained bundle's is its members' tuned median)."""
    classes = {}
    for lesion in LESION_CLASSES:
        recipe: TrainConfig = load_config(lesion.key)
        model = dataclasses.replace(recipe.model, **(model_changes or {}))
        folds = recipe.val.folds
        members = [
            MemberSpec(
                file=f"{lesion.key}_{member_name(i % folds, i // folds)}.pt",
                model=model,
                input_size=side,
                normalization=recipe.normalization,
                tta=invariant_views(recipe.augment),
                fold=i % folds,
                seed=i // folds,
            )
            for i in range(members_per_class)
        ]
        classes[lesion.index] = ClassEntry(
            index=lesion.index,
            key=lesion.key,
            threshold=0.5,
            min_component_px=recipe.postprocess.min_component_px,
            fill_holes=recipe.postprocess.fill_holes,
            members=members,
        )
    return Bundle(classes)


# Side of the random batch that sets the BatchNorm statistics (a multiple of every recipe
# encoder's stride; small, so that calibrating a member takes seconds).
CALIBRATION_SIDE = 256


def calibrated_network(model: Any, seed: int) -> nn.Module:
    """The network for ``model`` with random weights from ``torch.manual_seed(seed)`` and each
    BatchNorm's running statistics set from one forward pass of a seeded random (2, 1, 256, 256)
    batch, as training would have set them. Fresh statistics (mean 0, variance 1) let the
    activations of a deep random network grow layer after layer, until float32 rounding alone
    moves its probabilities by 3e-3 between torch and ONNX Runtime, and ``add_onnx`` rightly
    refuses such an export (it allows 1e-4). The cost of a job does not depend on the values."""
    torch.manual_seed(seed)
    network = build_network(model)
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one pass, that batch's statistics
    generator = torch.Generator().manual_seed(seed)
    network.train()
    with torch.no_grad():
        network(torch.randn(2, 1, CALIBRATION_SIDE, CALIBRATION_SIDE, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return network.eval()


def make_bundle(
    folder: str | Path,
    members_per_class: int,
    seed: int,
    side: int,
    model_changes: dict[str, Any] | None = None,
) -> Path:
    """Write the default recipes' ensemble (:func:`recipe_manifest`) with random weights to
    ``folder``: member ``i`` of class ``c`` from seed ``seed * 1000 + 100 * i + c``
    (:func:`calibrated_network`), no encoder weights (nothing is downloaded), saved by
    ``save_bundle`` and given its ONNX files by ``add_onnx``, as ``train.export`` does.
    Returns ``folder``."""
    if members_per_class < 1:
        raise DracInputError(f"--members must be >= 1, found {members_per_class}")
    bundle = recipe_manifest(members_per_class, side, model_changes)
    states: dict[str, dict[str, torch.Tensor]] = {}
    for index, entry in bundle.classes.items():
        for i, member in enumerate(entry.members):
            network = calibrated_network(member.model, seed * 1000 + 100 * i + index)
            states[member.file] = network.state_dict()
    folder = Path(folder)
    log.info("writing %d random-weight member(s) to %s", len(states), folder)
    save_bundle(bundle, folder, states)
    del states
    log.info("exporting each member to ONNX (as train.export does)")
    add_onnx(folder)
    return folder


def cache_key(members_per_class: int, seed: int, side: int, model_changes: dict | None) -> str:
    """The cache folder's name: the parameters, and a hash of the manifest they give (so a
    changed recipe makes a new bundle instead of reusing a stale one)."""
    manifest = recipe_manifest(members_per_class, side, model_changes).to_dict()
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]
    return f"random-m{members_per_class}-side{side}-seed{seed}-{digest}"


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole cached bundle: its manifest, and an ONNX file for every
    member (``add_onnx`` runs after ``save_bundle``: an interrupted build lacks them)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        members = [m for c in manifest["classes"].values() for m in c["members"]]
    except (OSError, ValueError, KeyError, AttributeError):
        return False
    return bool(members) and all(
        m.get("onnx") and (folder / m["file"]).is_file() and (folder / m["onnx"]["file"]).is_file()
        for m in members
    )


def cached_bundle(
    cache: Path,
    members_per_class: int,
    seed: int,
    side: int,
    model_changes: dict[str, Any] | None = None,
) -> tuple[Path, bool]:
    """The random-weight bundle for these parameters under ``cache``, built on first use;
    returns ``(folder, reused)``."""
    folder = Path(cache) / cache_key(members_per_class, seed, side, model_changes)
    if is_complete(folder):
        log.info("reusing the cached bundle %s", folder)
        return folder, True
    make_bundle(folder, members_per_class, seed, side, model_changes)
    return folder, False


def describe_bundle(folder: Path) -> dict[str, Any]:
    """What the report says about a bundle: its folder, members per class, architectures, input
    size, whether every member has an ONNX file, and its size on disk (every file in it).
    Refuses a folder without a readable manifest before any job runs."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        classes = manifest["classes"]
        members = {key: entry["members"] for key, entry in classes.items()}
    except FileNotFoundError:
        raise DracInputError(
            f"--bundle {folder}: no {MANIFEST} there; expected a model bundle folder "
            "(python -m drac_algo.bundle check DIR says what is wrong with one)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DracInputError(f"--bundle {folder}: cannot read {MANIFEST}: {exc}") from None
    architectures = sorted(
        {
            f"{m['model']['arch']}"
            f"{'+' + m['model']['attention'] if m['model'].get('attention') else ''} "
            f"{m['model']['encoder']}"
            for ms in members.values()
            for m in ms
        }
    )
    return {
        "folder": str(folder),
        "members": {key: len(ms) for key, ms in members.items()},
        "members_total": sum(len(ms) for ms in members.values()),
        "architectures": architectures,
        "input_sizes": sorted({m["input_size"] for ms in members.values() for m in ms}),
        "onnx": all(m.get("onnx") for ms in members.values() for m in ms),
        "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
    }
