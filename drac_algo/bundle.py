"""The model bundle: everything inference needs, in one folder, describing itself.

Layout (the folder is e.g. ``/opt/ml/model``)::

    manifest.json          format, version, classes with their decision settings and members
    <member file>.pt       one torch state dict per ensemble member (``torch.save``)
    <member>.onnx          optional: the member's ONNX export, for the CPU backend
                           (:mod:`drac_algo.onnx_backend`, :mod:`drac_algo.onnx_export`)

Manifest (``format: "drac-algo-bundle"``, ``version: 1``)::

    {"format": "drac-algo-bundle", "version": 1, "created": "<ISO 8601 UTC>",
     "drac_algo_version": "0.1.0",
     "classes": {"1": {"key": "irma", "threshold": 0.5, "min_component_px": 0,
                       "fill_holes": false,
                       "members": [{"file": "irma_f0_s0.pt", "sha256": "<hex>",
                                    "model": {ModelSpec.to_dict()}, "input_size": 1024,
                                    "normalization": {"mean": 0.5, "std": 0.25},
                                    "tta": ["identity", "hflip"], "fold": 0, "seed": 0,
                                    "val_dice": 0.61,
                                    "onnx": {"file": "irma_f0_s0.onnx", "sha256": "<hex>",
                                             "opset": 17}}]}}}

``onnx`` may be missing or null (a bundle without ONNX files runs on torch everywhere).

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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import drac_algo
from drac_algo.classes import BY_INDEX
from drac_algo.errors import DracInputError
from drac_algo.fsutil import atomic_dir
from drac_algo.models import ModelSpec, Normalization, build_network, input_multiple
from drac_algo.provenance import environment

FORMAT = "drac-algo-bundle"
VERSION = 1
MANIFEST = "manifest.json"
# The D4 group on the last two tensor dims: en-face OCTA has no preferred orientation.
TTA_NAMES = (
    "identity",
    "hflip",
    "vflip",
    "rot90",
    "rot180",
    "rot270",
    "transpose",
    "antitranspose",
)
_MEMBER_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.pt$")
_ONNX_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.onnx$")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Prefixes that torch.compile and DataParallel put in front of every state dict key.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass(frozen=True)
class OnnxFile:
    """A member's ONNX export in the bundle folder (float32 in, logits out, dynamic n/H/W)."""

    file: str
    sha256: str
    opset: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "opset": self.opset}


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member: its weights file (in the bundle folder) and how to run it."""

    file: str
    model: ModelSpec
    input_size: int
    normalization: Normalization = field(default_factory=Normalization)
    tta: tuple[str, ...] = ("identity",)
    fold: int | None = None
    seed: int = 0
    val_dice: float | None = None
    sha256: str = ""  # filled in by save_bundle
    onnx: OnnxFile | None = None  # added by drac_algo.onnx_export

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "model": self.model.to_dict(),
            "input_size": self.input_size,
            "normalization": self.normalization.to_dict(),
            "tta": list(self.tta),
            "fold": self.fold,
            "seed": self.seed,
            "val_dice": self.val_dice,
            "onnx": None if self.onnx is None else self.onnx.to_dict(),
        }


@dataclass(frozen=True)
class ClassEntry:
    """A lesion class's decision settings and its ensemble members."""

    index: int
    key: str
    threshold: float
    min_component_px: int
    fill_holes: bool
    members: list[MemberSpec]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "threshold": self.threshold,
            "min_component_px": self.min_component_px,
            "fill_holes": self.fill_holes,
            "members": [m.to_dict() for m in self.members],
        }


@dataclass(frozen=True)
class Bundle:
    """The manifest in memory: class index -> :class:`ClassEntry`."""

    classes: dict[int, ClassEntry]
    created: str = ""
    drac_algo_version: str = ""
    # What made it (optional; bundles before it have none): {"export": provenance.environment()
    # when it was written, "training": the distinct environments its members were trained in}.
    environment: dict[str, Any] | None = None
    # Set by load_bundle, not written: the manifest lists every file's checksum, so its own
    # hash names the exact weights (results.json's bundle id is its first 12 characters).
    manifest_sha256: str = dataclasses.field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "drac_algo_version": self.drac_algo_version,
            "classes": {str(i): self.classes[i].to_dict() for i in sorted(self.classes)},
        }
        if self.environment is not None:
            data["environment"] = self.environment
        return data

    def members(self) -> list[tuple[int, MemberSpec]]:
        """Every ``(class index, member)``, classes in index order."""
        return [(i, m) for i in sorted(self.classes) for m in self.classes[i].members]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(
    data: Mapping[str, Any],
    valid: list[str],
    where: str,
    problems: list[str],
    optional: tuple[str, ...] = (),
) -> bool:
    keys = set(data)
    missing = [k for k in valid if k not in keys and k not in optional]
    unknown = sorted(keys - set(valid))
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return not missing


def _parse_member(data: Any, where: str, problems: list[str]) -> MemberSpec | None:
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected an object, got {data!r}")
        return None
    valid = [f.name for f in dataclasses.fields(MemberSpec)]
    if not _check_keys(data, valid, where, problems, optional=("onnx",)):
        return None
    before = len(problems)
    model = norm = None
    try:
        model = ModelSpec.from_dict(data["model"])
    except (DracInputError, TypeError) as exc:
        problems.append(f"{where}: model: {exc}")
    try:
        norm = Normalization.from_dict(data["normalization"])
    except (DracInputError, TypeError) as exc:
        problems.append(f"{where}: normalization: {exc}")
    file = data["file"]
    if not isinstance(file, str) or not _MEMBER_FILE.match(file):
        problems.append(f"{where}: file must be a plain name ending in .pt; got {file!r}")
    if not isinstance(data["sha256"], str) or not _SHA256.fullmatch(data["sha256"]):
        problems.append(f"{where}: sha256 must be 64 lowercase hex digits")
    onnx = _parse_onnx(data.get("onnx"), f"{where} onnx", problems)
    size = data["input_size"]
    multiple = input_multiple(model) if model is not None else 1
    if not _is_int(size) or size < 1 or size % multiple:
        problems.append(
            f"{where}: input_size must be a positive multiple of {multiple}; got {size!r}"
        )
    tta = data["tta"]
    if not isinstance(tta, list) or not tta or any(t not in TTA_NAMES for t in tta):
        problems.append(
            f"{where}: tta must be a non-empty list of {', '.join(TTA_NAMES)}; got {tta!r}"
        )
    if data["fold"] is not None and not _is_int(data["fold"]):
        problems.append(f"{where}: fold must be an integer or null; got {data['fold']!r}")
    if not _is_int(data["seed"]):
        problems.append(f"{where}: seed must be an integer; got {data['seed']!r}")
    if data["val_dice"] is not None and not _is_number(data["val_dice"]):
        problems.append(f"{where}: val_dice must be a number or null; got {data['val_dice']!r}")
    if len(problems) > before:
        return None
    return MemberSpec(
        file=file,
        sha256=data["sha256"],
        model=model,
        input_size=size,
        normalization=norm,
        tta=tuple(tta),
        fold=data["fold"],
        seed=data["seed"],
        val_dice=data["val_dice"],
        onnx=onnx,
    )


def _parse_onnx(data: Any, where: str, problems: list[str]) -> OnnxFile | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected an object or null, got {data!r}")
        return None
    if not _check_keys(data, ["file", "sha256", "opset"], where, problems):
        return None
    if not isinstance(data["file"], str) or not _ONNX_FILE.match(data["file"]):
        problems.append(f"{where}: file must be a plain name ending in .onnx; got {data['file']!r}")
    if not isinstance(data["sha256"], str) or not _SHA256.fullmatch(data["sha256"]):
        problems.append(f"{where}: sha256 must be 64 lowercase hex digits")
    if not _is_int(data["opset"]) or data["opset"] < 1:
        problems.append(f"{where}: opset must be a positive integer; got {data['opset']!r}")
    return OnnxFile(data["file"], data["sha256"], data["opset"])


def _parse_class(key: str, data: Any, problems: list[str]) -> ClassEntry | None:
    where = f"class {key}"
    index = int(key) if key.isdigit() else None
    if index not in BY_INDEX:
        valid = ", ".join(f"{c.index} ({c.key})" for c in BY_INDEX.values())
        problems.append(f"unknown class {key!r}; valid: {valid}")
        return None
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected an object, got {data!r}")
        return None
    valid = ["key", "threshold", "min_component_px", "fill_holes", "members"]
    if not _check_keys(data, valid, where, problems):
        return None
    before = len(problems)
    if data["key"] != BY_INDEX[index].key:
        problems.append(f"{where}: key {data['key']!r} does not match {BY_INDEX[index].key!r}")
    if not _is_number(data["threshold"]) or not 0 < data["threshold"] < 1:
        problems.append(f"{where}: threshold must be in (0, 1); got {data['threshold']!r}")
    if not _is_int(data["min_component_px"]) or data["min_component_px"] < 0:
        problems.append(
            f"{where}: min_component_px must be an integer >= 0; got {data['min_component_px']!r}"
        )
    if not isinstance(data["fill_holes"], bool):
        problems.append(f"{where}: fill_holes must be true or false")
    raw_members = data["members"]
    if not isinstance(raw_members, list) or not raw_members:
        problems.append(f"{where}: members must be a non-empty list")
        return None
    members = [_parse_member(m, f"{where} member {i}", problems) for i, m in enumerate(raw_members)]
    if len(problems) > before:
        return None
    return ClassEntry(
        index=index,
        key=data["key"],
        threshold=float(data["threshold"]),
        min_component_px=data["min_component_px"],
        fill_holes=data["fill_holes"],
        members=members,
    )


def bundle_from_dict(data: Any, where: str = "manifest") -> Bundle:
    """Validate a manifest dict (no file checks); every problem is listed in one error."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise DracInputError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        problems.append(f"format must be {FORMAT!r}; got {data.get('format')!r}")
    if data.get("version") != VERSION:
        problems.append(f"version must be {VERSION}; got {data.get('version')!r}")
    _check_keys(
        data,
        ["format", "version", "created", "drac_algo_version", "classes", "environment"],
        "manifest",
        problems,
        optional=("environment",),
    )
    environment = data.get("environment")
    if environment is not None and not isinstance(environment, Mapping):
        problems.append(f"environment must be an object; got {type(environment).__name__}")
    classes: dict[int, ClassEntry] = {}
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, Mapping) or not raw_classes:
        problems.append("classes must be a non-empty object keyed by class index ('1'-'3')")
    else:
        for key, entry in raw_classes.items():
            parsed = _parse_class(str(key), entry, problems)
            if parsed is not None:
                classes[parsed.index] = parsed
    files = [f for _, m in Bundle(classes).members() for f in (m.file, m.onnx and m.onnx.file)]
    files = [f for f in files if f]
    duplicates = sorted({f for f in files if files.count(f) > 1})
    if duplicates:
        problems.append(f"member files used more than once: {', '.join(duplicates)}")
    if problems:
        raise DracInputError(
            f"{where} is not a valid model bundle:\n  - " + "\n  - ".join(problems)
        )
    return Bundle(
        classes=classes,
        created=str(data.get("created", "")),
        drac_algo_version=str(data.get("drac_algo_version", "")),
        environment=None if environment is None else dict(environment),
    )


def load_bundle(folder: str | Path) -> Bundle:
    """Read and check the bundle in ``folder``: manifest, member files, checksums.

    Raises :class:`DracInputError` listing every problem found (missing manifest, bad JSON,
    unknown class, missing member file, checksum mismatch, ...).
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
    try:
        raw = manifest.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DracInputError(f"{manifest} is not readable JSON: {exc}") from exc
    bundle = dataclasses.replace(
        bundle_from_dict(data, str(manifest)), manifest_sha256=hashlib.sha256(raw).hexdigest()
    )
    problems = []
    for index, member in bundle.members():
        files = [(member.file, member.sha256)]
        if member.onnx is not None:
            files.append((member.onnx.file, member.onnx.sha256))
        for name, sha256 in files:
            path = folder / name
            if not path.is_file():
                problems.append(f"class {index}: member file {name} missing")
            elif sha256_file(path) != sha256:
                problems.append(f"class {index}: member file {name} fails its sha256 check")
    if problems:
        raise DracInputError(
            f"model bundle {folder} is incomplete:\n  - " + "\n  - ".join(problems)
        )
    return bundle


def _strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = tensor.detach().cpu().contiguous()
    return out


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
    (:func:`drac_algo.onnx_export.add_onnx` adds them). An existing ``folder`` is replaced only if
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
        if not _MEMBER_FILE.match(name):
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
        _load_into(build_network(member.model), cleaned[member.file], f"state dict {member.file}")

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
    model = build_network(member.model)
    _load_into(model, state, f"bundle member {path}")
    return model.to(map_location).eval()


if __name__ == "__main__":
    # `python -m drac_algo.bundle check DIR`: the command lives in drac_algo.bundle_check (this
    # module defines the format), which imports this file again under its package name.
    from drac_algo.bundle_check import main

    main()
