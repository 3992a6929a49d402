"""The model bundle: everything inference needs, in one folder, describing itself. This module
reads (:func:`load_bundle`: manifest, files, checksums), writes (:func:`save_bundle`) and
rebuilds members (:func:`build_member`); the manifest's types and their validation are
:mod:`drac_algo.bundle.manifest`'s.

Layout (the folder is e.g. ``/opt/ml/model``)::

    manifest.json          format, version, classes with their decision settings and members
    <member file>.pt       one torch state dict per ensemble member (``torch.save``)
    <member>.onnx          optional: the member's ONNX export, for the CPU backend
                           (:mod:`drac_algo.engine.onnx_backend`,
                           :mod:`drac_algo.training.onnx_export`)

Manifest (``format: "drac-algo-bundle"``, ``version: 3``)::

    {"format": "drac-algo-bundle", "version": 3, "created": "<ISO 8601 UTC>",
     "drac_algo_version": "0.1.0",
     "classes": {"1": {"key": "irma", "threshold": 0.5, "min_component_px": 0,
                       "fill_holes": false, "keep_components": 2,
                       "members": [{"file": "irma_f0_s0.pt", "sha256": "<hex>",
                                    "model": {ModelSpec.to_dict()}, "input_size": 1024,
                                    "normalization": {"mean": 0.5, "std": 0.25},
                                    "tta": ["identity", "hflip"], "fold": 0, "seed": 0,
                                    "val_dice": 0.61,
                                    "onnx": {"file": "irma_f0_s0.onnx", "sha256": "<hex>",
                                             "source_sha256": "<the member's sha256>",
                                             "opset": 17}}]}}}

``onnx`` may be missing or null (a bundle without ONNX files runs on torch everywhere). Its
``source_sha256`` is the sha256 of the weights it was exported from and must equal the member's
``sha256``; version 1 manifests lack it and their ONNX files are not used (the value ranges and
the reasons: :mod:`drac_algo.bundle.manifest`).

A bundle holds one to three classes; what to do about a missing class is inference's call.
Each member's probabilities are computed on the image resized to ``input_size`` and normalised
with its ``normalization``; ``tta`` lists the test-time transforms valid for it (names of the D4
group, :data:`TTA_NAMES`). Members are rebuilt from the manifest alone
(:func:`build_member`): no encoder download, weights loaded with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

import drac_algo
from drac_algo.bundle.manifest import (
    MANIFEST,
    MEMBER_FILE,
    TTA_NAMES,
    Bundle,
    MemberSpec,
    untied_onnx_warning,
)
from drac_algo.bundle.validation import bundle_from_dict
from drac_algo.common.classes import BY_INDEX
from drac_algo.common.datafiles import parse_json, read_bytes
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_dir
from drac_algo.common.hardware import cpu_threads
from drac_algo.common.provenance import environment

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(
    folder: str | Path, *, ignore_onnx: bool = False, warn_untied: bool = True
) -> Bundle:
    """Read and check the bundle in ``folder``: manifest, member files, checksums, and each
    ONNX file's tie to its member's weights.

    Raises :class:`DracInputError` listing every problem found (missing manifest, bad JSON,
    unknown class, missing member file, checksum mismatch, an ONNX file exported from other
    weights, ...). A version 1 manifest's ONNX files are untied: logged as a warning, and
    never run (:mod:`drac_algo.bundle.manifest`); ``warn_untied=False`` leaves the warning to
    the caller. ``ignore_onnx`` reads the bundle as if it had no ONNX files (for the exporter,
    which replaces them).
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise DracInputError(f"no model bundle at {folder}: no such folder")
    if not manifest.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
        raise DracInputError(
            f"no model bundle at {folder}: {MANIFEST} missing (the folder holds: {found})"
        )
    raw = read_bytes(manifest, "bundle manifest")
    data = parse_json(raw, f"bundle manifest {manifest}")
    if ignore_onnx and isinstance(data, dict) and isinstance(data.get("classes"), dict):
        for entry in data["classes"].values():
            for member in entry.get("members", []) if isinstance(entry, dict) else []:
                if isinstance(member, dict):
                    member.pop("onnx", None)
    bundle = dataclasses.replace(
        bundle_from_dict(data, str(manifest)), manifest_sha256=hashlib.sha256(raw).hexdigest()
    )
    files = []
    for index, member in bundle.members():
        files.append((index, member.file, member.sha256))
        if member.onnx is not None:
            files.append((index, member.onnx.file, member.onnx.sha256))
    present = [folder / name for _, name, _ in files if (folder / name).is_file()]
    # Every file's checksum, several at once: hashlib lets other threads run while it hashes,
    # and a default bundle is about 3 GB (half the model load on 2 CPUs, one file at a time).
    with ThreadPoolExecutor(max(1, min(cpu_threads(), len(present)))) as pool:
        digests = dict(zip(present, pool.map(sha256_file, present), strict=True))
    problems = []
    for index, name, sha256 in files:
        path = folder / name
        if path not in digests:
            problems.append(f"class {index}: member file {name} missing")
        elif digests[path] != sha256:
            problems.append(f"class {index}: member file {name} fails its sha256 check")
    problems += [
        line.replace("BUNDLE", str(folder)) for line in bundle.stale_onnx()
    ]  # whatever backend would run: the check, torch and ONNX Runtime give one answer
    if problems:
        raise DracInputError(
            f"model bundle {folder} is incomplete or inconsistent:\n  - " + "\n  - ".join(problems)
        )
    untied = bundle.untied_onnx()
    if untied and warn_untied:
        log.warning("%s", untied_onnx_warning(folder, untied))
    return bundle


def _networks():
    """:mod:`drac_algo.networks.models`, imported when a network is first built: reading and
    checking a bundle needs neither it nor segmentation-models-pytorch, whose import (timm,
    torchvision, torch._dynamo behind it) was most of the ONNX Runtime path's cold start."""
    from drac_algo.networks import models

    return models


def _strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from drac_algo.networks.models import unwrapped_key  # see _networks

    return {unwrapped_key(k): t.detach().cpu().contiguous() for k, t in state.items()}


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DracInputError(f"{what} does not match its model spec: {exc}") from exc


def save_bundle(
    bundle: Bundle, folder: str | Path, state_dicts: Mapping[str, Mapping[str, torch.Tensor]]
) -> Bundle:
    """Write ``bundle`` to ``folder``, replacing it as a whole (atomically).

    ``state_dicts`` maps each member's ``file`` to its model's ``state_dict()`` (prefixes
    added by ``torch.compile`` / DataParallel are removed). Each state dict is checked against
    its member's spec before anything is written. Returns the bundle as written: checksums,
    ``created`` and ``drac_algo_version`` filled in, no ONNX files
    (:func:`drac_algo.training.onnx_export.add_onnx` adds them). An existing ``folder`` is replaced
    only if
    it is empty or holds a bundle manifest, so a wrong path cannot wipe unrelated files.
    """
    folder = Path(folder)
    if folder.exists() and (
        not folder.is_dir() or (any(folder.iterdir()) and not (folder / MANIFEST).is_file())
    ):
        raise DracInputError(
            f"refusing to replace {folder}: it exists and is not a model bundle "
            f"(no {MANIFEST}); choose an empty or new folder"
        )
    members = bundle.members()
    files = [m.file for _, m in members]
    problems = []
    if not members:
        problems.append("the bundle has no members")
    for name in sorted(set(files)):
        if files.count(name) > 1:
            problems.append(f"member file {name} is used more than once")
        if not MEMBER_FILE.match(name):
            problems.append(f"member file {name!r} must be a plain name ending in .pt")
    for index, entry in bundle.classes.items():
        if index not in BY_INDEX or BY_INDEX[index].key != entry.key:
            problems.append(f"class {index} ({entry.key}) is not a DRAC lesion class")
        for m in entry.members:
            if any(t not in TTA_NAMES for t in m.tta) or not m.tta:
                problems.append(f"{m.file}: tta {list(m.tta)} not in {', '.join(TTA_NAMES)}")
    missing = sorted(set(files) - set(state_dicts))
    if missing:
        problems.append(f"no state dict given for {', '.join(missing)}")
    extra = sorted(set(state_dicts) - set(files))
    if extra:
        problems.append(f"state dicts given for files no member uses: {', '.join(extra)}")
    if problems:
        raise DracInputError("cannot save model bundle:\n  - " + "\n  - ".join(problems))
    # Everything load_bundle checks in the manifest, checked before any file is written.
    draft = Bundle(
        classes={
            index: dataclasses.replace(
                entry, members=[dataclasses.replace(m, sha256="0" * 64) for m in entry.members]
            )
            for index, entry in bundle.classes.items()
        }
    )
    bundle_from_dict(draft.to_dict(), "bundle to save")

    cleaned = {name: _strip_wrapper_prefixes(state) for name, state in state_dicts.items()}
    for _, member in members:
        network = _networks().build_network(member.model)
        _load_into(network, cleaned[member.file], f"state dict {member.file}")

    with atomic_dir(folder) as tmp:
        written: dict[str, str] = {}
        for name, state in cleaned.items():
            torch.save(state, tmp / name)
            written[name] = sha256_file(tmp / name)
        final = Bundle(
            classes={
                index: dataclasses.replace(
                    entry,
                    members=[
                        dataclasses.replace(m, sha256=written[m.file], onnx=None)
                        for m in entry.members
                    ],
                )
                for index, entry in bundle.classes.items()
            },
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            drac_algo_version=drac_algo.__version__,
            environment={**(bundle.environment or {}), "export": environment()},
        )
        (tmp / MANIFEST).write_text(json.dumps(final.to_dict(), indent=2) + "\n", encoding="utf-8")
    return final


def build_member(
    folder: str | Path, member: MemberSpec, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild one member from the bundle alone: network from its spec (no encoder weights),
    state dict loaded strictly with ``weights_only=True``, moved to ``map_location``, eval mode.

    The module maps ``(N, 1, H, W)`` float (normalised with ``member.normalization``) to
    ``(N, 1, H, W)`` logits.
    """
    path = Path(folder) / member.file
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise DracInputError(f"model bundle member {path} missing") from exc
    except Exception as exc:
        raise DracInputError(f"cannot read model bundle member {path}: {exc}") from exc
    model = _networks().build_network(member.model)
    _load_into(model, state, f"bundle member {path}")
    return model.to(map_location).eval()
