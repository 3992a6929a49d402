"""The model bundle's manifest in memory (:class:`Bundle`, :class:`ClassEntry`,
:class:`MemberSpec`, :class:`OnnxFile`) and its validation (:func:`bundle_from_dict`, which
lists every problem in one error). The folder (reading, checksums, writing, rebuilding a
member's network) is :mod:`drac_algo.bundle.store`'s; the format is described there.

Every value has a stated range, checked with an error naming the field, the class and member,
what was found and what is valid. Numbers are JSON numbers (``true``/``false`` never count as 0
or 1), booleans real ``true``/``false`` (never 0, 1 or ``"yes"``):

=========================================  ===================================================
field                                      valid
=========================================  ===================================================
``format``                                 ``"drac-algo-bundle"``
``version``                                the integer 1 or 2 (:data:`VERSION` is written)
``created``, ``drac_algo_version``         strings
class key (``"classes"``)                  exactly ``"1"``, ``"2"`` or ``"3"`` (no ``"01"``,
                                           ``" 1"``, ``"1.0"`` or non-ASCII digits), each once
``key``                                    the class's name: ``irma`` (1), ``na`` (2), ``nv`` (3)
``threshold``                              a number in (0, 1): 0 or 1 would make every pixel
                                           positive, or none
``min_component_px``                       an integer in [0, :data:`MAX_COMPONENT_PX`]
``fill_holes``                             ``true`` or ``false``
``members``                                a non-empty list
member ``file``                            a plain name ending in ``.pt``, each file used once
``sha256`` (of ``file``; of the ONNX file)  64 lowercase hex digits
``model``                                  :class:`~drac_algo.networks.models.ModelSpec` (its
                                           own checks: known arch, encoder, attention, depth
                                           3-5, positive decoder widths)
``input_size``                             an integer multiple of ``2 ** encoder_depth`` (32 at
                                           the default depth 5) in [that multiple,
                                           :data:`MAX_INPUT_SIZE`]
``normalization``                          ``mean`` a finite number, ``std`` a finite number > 0
``tta``                                    a non-empty list of distinct :data:`TTA_NAMES`
``fold``                                   ``null`` or an integer in [0, :data:`MAX_FOLD`]
``seed``                                   an integer in [0, :data:`MAX_SEED`]
``val_dice``                               ``null`` or a number in [0, 1]
``onnx``                                   ``null`` or ``{file, sha256, source_sha256, opset}``
``onnx.file``                              a plain name ending in ``.onnx``, used once
``onnx.source_sha256``                     the ``sha256`` of the weights it was exported from,
                                           which must be the member's ``sha256`` (version 2)
``onnx.opset``                             an integer in [1, :data:`MAX_OPSET`]
=========================================  ===================================================

Version 2 added ``onnx.source_sha256``, which ties each ONNX file to the weights it was exported
from: an ONNX file whose source is not the member's current weights (the weights were retrained
or replaced, the ONNX file left as it was) is refused, naming the member and both hashes, so that
the torch and ONNX Runtime backends can never give two answers for one bundle. A version 1
manifest records no source: its ONNX files cannot be tied to the weights. It still loads, because
a user's old bundle should keep working and its weights are checked as before, but its ONNX files
are marked untied (:attr:`OnnxFile.source_sha256` ``None``) and never run: inference uses torch
and says so in a warning, ``--backend onnxruntime`` is refused, and :data:`REEXPORT_COMMAND`
re-exports them with the source recorded. A wrong answer is never silent: what runs is always
the weights the manifest's checksums name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.errors import DracInputError
from drac_algo.networks.models import ModelSpec, Normalization, input_multiple

FORMAT = "drac-algo-bundle"
VERSION = 2  # written; 1 is still read (its ONNX files untied, see above)
READABLE_VERSIONS = (1, 2)
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
# The class keys, exactly as written: "01", " 1" or a non-ASCII digit would name a class by
# accident (int() accepts all of them) and could collide with the canonical key.
CLASS_KEYS = tuple(str(index) for index in sorted(BY_INDEX))
MAX_COMPONENT_PX = 1 << 24  # a 4096 x 4096 image
MAX_INPUT_SIZE = 4096
MAX_FOLD = 999
MAX_SEED = 2**63 - 1
MAX_OPSET = 64
# How to give a bundle's members ONNX files tied to their current weights.
REEXPORT_COMMAND = "python -m drac_algo.onnx_export BUNDLE --force"


@dataclass(frozen=True)
class OnnxFile:
    """A member's ONNX export in the bundle folder (float32 in, logits out, dynamic n/H/W).

    ``source_sha256`` is the sha256 of the weights file it was exported from; ``None`` only for
    a version 1 manifest, which did not record it: such a file is *untied* and never runs.
    """

    file: str
    sha256: str
    opset: int
    source_sha256: str | None = None

    @property
    def tied(self) -> bool:
        return self.source_sha256 is not None

    def to_dict(self) -> dict[str, Any]:
        data = {"file": self.file, "sha256": self.sha256, "opset": self.opset}
        if self.source_sha256 is not None:
            data["source_sha256"] = self.source_sha256
        return data


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

    def stale_onnx(self) -> list[str]:
        """One line per member whose ONNX file was exported from other weights than the
        member's current ones (its recorded source is not the member's sha256)."""
        return [
            f"class {index} member {m.file}: its ONNX file {m.onnx.file} was exported from "
            f"weights with sha256 {m.onnx.source_sha256}, but the member's weights {m.file} have "
            f"sha256 {m.sha256}: the ONNX file would not run these weights; re-export it with: "
            f"{REEXPORT_COMMAND}"
            for index, m in self.members()
            if m.onnx is not None and m.onnx.tied and m.onnx.source_sha256 != m.sha256
        ]

    def untied_onnx(self) -> list[str]:
        """The member files whose ONNX file is untied (a version 1 manifest): never run."""
        return [m.file for _, m in self.members() if m.onnx is not None and not m.onnx.tied]


def untied_onnx_warning(folder: Any, files: list[str]) -> str:
    """What a version 1 bundle's ONNX files mean: not tied to the weights, hence not used."""
    return (
        f"{folder}: the ONNX files of {', '.join(files)} are not tied to their weights (a "
        f"version 1 manifest records no source_sha256), so they are not used: torch runs these "
        f"members. Re-export them with: {REEXPORT_COMMAND.replace('BUNDLE', str(folder))}"
    )


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
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
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
    if not isinstance(data["file"], str) or not _ONNX_FILE.match(data["file"]):
        problems.append(f"{where}: file must be a plain name ending in .onnx; got {data['file']!r}")
    for key in ("sha256", "source_sha256"):
        if key in data and not (isinstance(data[key], str) and _SHA256.fullmatch(data[key])):
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
