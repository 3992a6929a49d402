"""The model bundle's manifest in memory (:class:`Bundle`, :class:`ClassEntry`,
:class:`MemberSpec`, :class:`OnnxFile`), its constants and the ranges below; its validation
(:func:`drac_algo.bundle.validation.bundle_from_dict`, which lists every problem in one error)
applies them. The folder (reading, checksums, writing, rebuilding a
member's network) is :mod:`drac_algo.bundle.store`'s; the format is described there.

Every value has a stated range, checked with an error naming the field, the class and member,
what was found and what is valid. Numbers are JSON numbers (``true``/``false`` never count as 0
or 1), booleans real ``true``/``false`` (never 0, 1 or ``"yes"``):

=========================================  ===================================================
field                                      valid
=========================================  ===================================================
``format``                                 ``"drac-algo-bundle"``
``version``                                the integer 1, 2 or 3 (:data:`VERSION` is written)
``created``, ``drac_algo_version``         strings
class key (``"classes"``)                  exactly ``"1"``, ``"2"`` or ``"3"`` (no ``"01"``,
                                           ``" 1"``, ``"1.0"`` or non-ASCII digits), each once
``key``                                    the class's name: ``irma`` (1), ``na`` (2), ``nv`` (3)
``threshold``                              a number in (0, 1): 0 or 1 would make every pixel
                                           positive, or none
``min_component_px``                       an integer in [0, :data:`MAX_COMPONENT_PX`]
``fill_holes``                             ``true`` or ``false``
``keep_components``                        an integer in [0, :data:`MAX_KEEP_COMPONENTS`]: each
                                           mask keeps only its k components of highest peak
                                           probability, 0 keeps all (version 3; absent before)
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

Version 3 added ``keep_components`` to each class, chosen on validation images in training
(:func:`drac_algo.engine.postprocess.keep_most_confident`). It is required from version 3 on and
refused as an unknown key before, so that a bundle always says whether its masks are cut to their
most confident components; a version 1 or 2 manifest keeps every component, as it always did.
A program that reads only versions 1 and 2 refuses a version 3 bundle by its version, rather than
running it without the rule and writing other masks than the bundle's validation chose.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from drac_algo.common.classes import BY_INDEX
from drac_algo.networks.spec import ModelSpec, Normalization

FORMAT = "drac-algo-bundle"
VERSION = 3  # written; 1 and 2 are still read (see above)
READABLE_VERSIONS = (1, 2, 3)
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
ONNX_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.onnx$")
SHA256 = re.compile(r"[0-9a-f]{64}")
# The class keys, exactly as written: "01", " 1" or a non-ASCII digit would name a class by
# accident (int() accepts all of them) and could collide with the canonical key.
CLASS_KEYS = tuple(str(index) for index in sorted(BY_INDEX))
MAX_COMPONENT_PX = 1 << 24  # a 4096 x 4096 image
MAX_KEEP_COMPONENTS = 1000
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
    keep_components: int = 0  # the k most confident components of each mask; 0 keeps all

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "threshold": self.threshold,
            "min_component_px": self.min_component_px,
            "fill_holes": self.fill_holes,
            "keep_components": self.keep_components,
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
