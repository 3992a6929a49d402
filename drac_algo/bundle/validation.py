"""A manifest document (parsed JSON) checked into a :class:`~drac_algo.bundle.manifest.Bundle`:
every value against the ranges stated in :mod:`drac_algo.bundle.manifest`, every problem listed
in one :class:`~drac_algo.common.errors.DracInputError` naming the field, the class and member,
what was found and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from drac_algo.bundle.manifest import (
    CLASS_KEYS,
    FORMAT,
    MAX_COMPONENT_PX,
    MAX_FOLD,
    MAX_INPUT_SIZE,
    MAX_KEEP_COMPONENTS,
    MAX_OPSET,
    MAX_SEED,
    MEMBER_FILE,
    ONNX_FILE,
    READABLE_VERSIONS,
    SHA256,
    TTA_NAMES,
    VERSION,
    Bundle,
    ClassEntry,
    MemberSpec,
    OnnxFile,
)
from drac_algo.common.classes import BY_INDEX
from drac_algo.common.errors import DracInputError
from drac_algo.networks.spec import ModelSpec, Normalization, input_multiple


def _is_number(value: Any) -> bool:
    """A finite JSON number (never a bool, NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(value: Any, low: int, high: int) -> bool:
    return _is_int(value) and low <= value <= high


def _check_keys(
    data: Mapping[str, Any],
    valid: list[str],
    where: str,
    problems: list[str],
    optional: tuple[str, ...] = (),
) -> bool:
    keys = set(data)
    missing = [k for k in valid if k not in keys and k not in optional]
    unknown = sorted(map(repr, keys - set(valid)))
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return not missing


def _parse_member(data: Any, where: str, version: int, problems: list[str]) -> MemberSpec | None:
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
    sha256 = data["sha256"]
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
        problems.append(f"{where}: sha256 must be 64 lowercase hex digits")
    onnx = _parse_onnx(data.get("onnx"), f"{where} onnx", version, problems)
    size = data["input_size"]
    multiple = input_multiple(model) if model is not None else 1
    if not _int_in(size, multiple, MAX_INPUT_SIZE) or size % multiple:
        problems.append(
            f"{where}: input_size must be a multiple of {multiple} in [{multiple}, "
            f"{MAX_INPUT_SIZE}]; got {size!r}"
        )
    tta = data["tta"]
    if (
        not isinstance(tta, list)
        or not tta
        or any(not isinstance(t, str) or t not in TTA_NAMES for t in tta)
        or len(set(tta)) != len(tta)
    ):
        problems.append(
            f"{where}: tta must be a non-empty list of {', '.join(TTA_NAMES)}, each at most "
            f"once; got {tta!r}"
        )
    if data["fold"] is not None and not _int_in(data["fold"], 0, MAX_FOLD):
        problems.append(
            f"{where}: fold must be null or an integer in [0, {MAX_FOLD}]; got {data['fold']!r}"
        )
    if not _int_in(data["seed"], 0, MAX_SEED):
        problems.append(f"{where}: seed must be an integer in [0, 2**63 - 1]; got {data['seed']!r}")
    dice = data["val_dice"]
    if dice is not None and not (_is_number(dice) and 0 <= dice <= 1):
        problems.append(f"{where}: val_dice must be null or a number in [0, 1]; got {dice!r}")
    if len(problems) > before:
        return None
    return MemberSpec(
        file=file,
        sha256=sha256,
        model=model,
        input_size=size,
        normalization=norm,
        tta=tuple(tta),
        fold=data["fold"],
        seed=data["seed"],
        val_dice=dice,
        onnx=onnx,
    )


def _parse_onnx(data: Any, where: str, version: int, problems: list[str]) -> OnnxFile | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected an object or null, got {data!r}")
        return None
    # Version 1 wrote no source_sha256; version 2 requires it.
    valid = (
        ["file", "sha256", "source_sha256", "opset"]
        if version >= 2
        else ["file", "sha256", "opset"]
    )
    if not _check_keys(data, valid, where, problems):
        return None
    before = len(problems)
    if not isinstance(data["file"], str) or not ONNX_FILE.match(data["file"]):
        problems.append(f"{where}: file must be a plain name ending in .onnx; got {data['file']!r}")
    for key in ("sha256", "source_sha256"):
        if key in data and not (isinstance(data[key], str) and SHA256.fullmatch(data[key])):
            problems.append(f"{where}: {key} must be 64 lowercase hex digits; got {data[key]!r}")
    if not _int_in(data["opset"], 1, MAX_OPSET):
        problems.append(
            f"{where}: opset must be an integer in [1, {MAX_OPSET}]; got {data['opset']!r}"
        )
    if len(problems) > before:
        return None
    return OnnxFile(data["file"], data["sha256"], data["opset"], data.get("source_sha256"))


def _parse_class(key: Any, data: Any, version: int, problems: list[str]) -> ClassEntry | None:
    if key not in CLASS_KEYS:
        valid = ", ".join(f"{c.index} ({c.key})" for c in BY_INDEX.values())
        problems.append(
            f"unknown class {key!r}; valid: {valid}; class keys are written exactly "
            f"{', '.join(map(repr, CLASS_KEYS))}"
        )
        return None
    index = int(key)
    where = f"class {key}"
    if not isinstance(data, Mapping):
        problems.append(f"{where}: expected an object, got {data!r}")
        return None
    valid = ["key", "threshold", "min_component_px", "fill_holes", "members"]
    if version >= 3:  # version 3 added keep_components (required from then on)
        valid.insert(4, "keep_components")
    if not _check_keys(data, valid, where, problems):
        return None
    before = len(problems)
    if data["key"] != BY_INDEX[index].key:
        problems.append(f"{where}: key {data['key']!r} does not match {BY_INDEX[index].key!r}")
    if not _is_number(data["threshold"]) or not 0 < data["threshold"] < 1:
        problems.append(f"{where}: threshold must be in (0, 1); got {data['threshold']!r}")
    if not _int_in(data["min_component_px"], 0, MAX_COMPONENT_PX):
        problems.append(
            f"{where}: min_component_px must be an integer in [0, {MAX_COMPONENT_PX}]; "
            f"got {data['min_component_px']!r}"
        )
    if not isinstance(data["fill_holes"], bool):
        problems.append(f"{where}: fill_holes must be true or false; got {data['fill_holes']!r}")
    keep = data.get("keep_components", 0)
    if not _int_in(keep, 0, MAX_KEEP_COMPONENTS):
        problems.append(
            f"{where}: keep_components must be an integer in [0, {MAX_KEEP_COMPONENTS}] "
            f"(0 keeps every component); got {keep!r}"
        )
    raw_members = data["members"]
    if not isinstance(raw_members, list) or not raw_members:
        problems.append(f"{where}: members must be a non-empty list")
        return None
    members = [
        _parse_member(m, f"{where} member {i}", version, problems)
        for i, m in enumerate(raw_members)
    ]
    if len(problems) > before:
        return None
    return ClassEntry(
        index=index,
        key=data["key"],
        threshold=float(data["threshold"]),
        min_component_px=data["min_component_px"],
        fill_holes=data["fill_holes"],
        members=members,
        keep_components=keep,
    )


def bundle_from_dict(data: Any, where: str = "manifest") -> Bundle:
    """Validate a manifest dict (no file checks); every problem is listed in one error."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise DracInputError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        problems.append(f"format must be {FORMAT!r}; got {data.get('format')!r}")
    version = data.get("version")
    if not _is_int(version) or version not in READABLE_VERSIONS:
        problems.append(
            f"version must be one of {', '.join(map(str, READABLE_VERSIONS))}; got {version!r}"
        )
        version = VERSION
    _check_keys(
        data,
        ["format", "version", "created", "drac_algo_version", "classes", "environment"],
        "manifest",
        problems,
        optional=("environment",),
    )
    for key in ("created", "drac_algo_version"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key} must be a string; got {data[key]!r}")
    environment = data.get("environment")
    if environment is not None and not isinstance(environment, Mapping):
        problems.append(f"environment must be an object; got {type(environment).__name__}")
    classes: dict[int, ClassEntry] = {}
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, Mapping) or not raw_classes:
        problems.append(
            f"classes must be a non-empty object keyed by class index ({', '.join(CLASS_KEYS)})"
        )
    else:
        for key, entry in raw_classes.items():
            parsed = _parse_class(key, entry, version, problems)
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
