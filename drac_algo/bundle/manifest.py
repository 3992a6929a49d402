"""The model bundle's manifest in memory (:class:`Bundle`, :class:`ClassEntry`,
:class:`MemberSpec`, :class:`OnnxFile`) and its validation (:func:`bundle_from_dict`, which
lists every problem in one error). The folder (reading, checksums, writing, rebuilding a
member's network) is :mod:`drac_algo.bundle.store`'s; the format is described there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.errors import DracInputError
from drac_algo.networks.models import ModelSpec, Normalization, input_multiple

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
MEMBER_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.pt$")
_ONNX_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.onnx$")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    onnx: OnnxFile | None = None  # added by drac_algo.training.onnx_export

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
    if not isinstance(file, str) or not MEMBER_FILE.match(file):
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
