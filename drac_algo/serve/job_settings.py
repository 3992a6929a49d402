"""Per-deployment settings that a Grand Challenge job cannot pass as arguments: the input
socket, the three output sockets (slug and relative path) and whether the GPU is required.

Each is resolved from, in order of precedence:

1. the command line (``--input-slug``, ``--output-slug CLASS=SLUG[:RELATIVE_PATH]``,
   ``--require-gpu/--no-require-gpu``);
2. environment variables: ``DRAC_INPUT_SOCKET``, ``DRAC_OUTPUT_SOCKETS`` (the same
   ``CLASS=SLUG[:RELATIVE_PATH]`` specs, comma-separated), ``DRAC_REQUIRE_GPU`` (1/0);
3. ``platform.json`` in the model folder, so that a new ``model.tar.gz`` retargets the same
   image to a phase whose sockets are named differently (no rebuild, no re-upload of the image)::

       {"input_socket": "uw-octa-image",
        "output_sockets": {"irma": "my-irma-mask",
                           "nv": {"slug": "my-nv-mask", "relative_path": "images/my-nv-mask"}},
        "require_gpu": true}

4. the defaults: the slugs of :mod:`drac_algo.common.classes`, relative path
   ``images/<slug>`` (where the platform puts an image output socket), the only image socket of
   the job, GPU optional.

Output sockets merge per class: a layer that names only ``nv`` keeps the others' values from the
layers below. The platform writes an output socket's file to ``/output/<relative_path>/``; the
algorithm writes ``output.mha`` there. Unknown classes or keys, two classes on one slug or one
path, and paths that leave the output folder are :class:`DracInputError` naming the source.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from drac_algo.common.classes import LESION_CLASSES, lesion_class
from drac_algo.common.datafiles import read_json
from drac_algo.common.errors import DracInputError
from drac_algo.engine.gpu import REQUIRE_GPU_ENV, env_truthy
from drac_algo.serve.gc_io import OUTPUT_FILENAME

PLATFORM_FILE = "platform.json"
INPUT_SOCKET_ENV = "DRAC_INPUT_SOCKET"
OUTPUT_SOCKETS_ENV = "DRAC_OUTPUT_SOCKETS"
_FILE_KEYS = ("input_socket", "output_sockets", "require_gpu")
_SLUG_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
_PATH_CHARS = _SLUG_CHARS | set("/.")
DEFAULT = "default"
COMMAND_LINE = "command line"


@dataclass(frozen=True)
class OutputSocket:
    """Where one class's mask goes: ``<output>/<relative_path>/output.mha``."""

    slug: str
    relative_path: str

    def mask_path(self, output_dir: str | os.PathLike) -> Path:
        return Path(output_dir, *PurePosixPath(self.relative_path).parts, OUTPUT_FILENAME)

    def to_json(self) -> dict[str, str]:
        return {"slug": self.slug, "relative_path": self.relative_path}


def default_output_sockets() -> dict[int, OutputSocket]:
    """Class index -> the default socket (:attr:`drac_algo.common.classes.LesionClass.slug`)."""
    return {c.index: OutputSocket(c.slug, f"images/{c.slug}") for c in LESION_CLASSES}


@dataclass
class JobSettings:
    """The resolved settings and where each came from (for the log and ``results.json``)."""

    input_slug: str | None = None
    output_sockets: dict[int, OutputSocket] = field(default_factory=default_output_sockets)
    require_gpu: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "input_socket": self.input_slug,
            "output_sockets": {str(i): s.to_json() for i, s in sorted(self.output_sockets.items())},
            "require_gpu": self.require_gpu,
            "sources": dict(sorted(self.sources.items())),
        }


def _check_slug(slug: Any, where: str) -> str:
    if not isinstance(slug, str) or not slug or not set(slug) <= _SLUG_CHARS:
        raise DracInputError(
            f"{where}: socket slug {slug!r}: expected lower-case letters, digits, '-' and '_'"
        )
    return slug


def _check_relative_path(path: Any, where: str) -> str:
    """A normalised POSIX path inside the output folder (no leading '/', no '..', not empty)."""
    if not isinstance(path, str) or not path.strip("/") or not set(path) <= _PATH_CHARS:
        raise DracInputError(
            f"{where}: relative path {path!r}: expected a path such as images/<slug> made of "
            "lower-case letters, digits, '-', '_', '.' and '/'"
        )
    parts = path.rstrip("/").split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DracInputError(
            f"{where}: relative path {path!r} is not a plain path below the output folder (no "
            "leading '/', no '.', '..' or empty parts); expected e.g. images/<slug>"
        )
    return "/".join(parts)


def parse_output_specs(specs: Iterable[str], where: str) -> dict[int, OutputSocket]:
    """``CLASS=SLUG[:RELATIVE_PATH]`` specs (class as key or index) -> class index -> socket;
    the path defaults to ``images/<slug>``. A class given twice is an error."""
    sockets: dict[int, OutputSocket] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DracInputError(
                f"{where}: output socket {spec!r}: expected CLASS=SLUG or "
                "CLASS=SLUG:RELATIVE_PATH, e.g. irma=my-irma-mask"
            )
        index = _class_index(key.strip(), where)
        if index in sockets:
            raise DracInputError(f"{where}: output socket for class {key.strip()!r} given twice")
        slug, _, path = value.strip().partition(":")
        slug = _check_slug(slug, where)
        sockets[index] = OutputSocket(slug, _check_relative_path(path or f"images/{slug}", where))
    return sockets


def _class_index(key: str, where: str) -> int:
    try:
        return lesion_class(key).index
    except (DracInputError, KeyError, ValueError) as exc:
        raise DracInputError(f"{where}: {exc}") from None


def _file_output_sockets(value: Any, where: str) -> dict[int, OutputSocket]:
    if not isinstance(value, Mapping):
        raise DracInputError(
            f"{where}: output_sockets must be an object keyed by class (irma, na, nv or 1-3), "
            f"found {type(value).__name__}"
        )
    sockets = {}
    for key, entry in value.items():
        index = _class_index(str(key), where)
        if index in sockets:
            raise DracInputError(f"{where}: output socket for class {key!r} given twice")
        if isinstance(entry, str):
            slug, path = entry, None
        elif isinstance(entry, Mapping) and set(entry) <= {"slug", "relative_path"}:
            slug, path = entry.get("slug"), entry.get("relative_path")
        else:
            raise DracInputError(
                f"{where}: output socket for {key!r}: expected a slug or an object with 'slug' "
                f"and optionally 'relative_path', found {entry!r}"
            )
        slug = _check_slug(slug, where)
        sockets[index] = OutputSocket(slug, _check_relative_path(path or f"images/{slug}", where))
    return sockets


def read_platform_file(
    model_dir: str | os.PathLike, path: str | os.PathLike | None = None
) -> tuple[dict[str, Any], str] | None:
    """``(settings, source name)`` from ``path``, by default ``<model_dir>/platform.json``;
    None when absent. One that is there but cannot be read (a folder, a dangling link, no
    permission) is an error, never taken for absent: the job would run with the defaults."""
    path = Path(model_dir) / PLATFORM_FILE if path is None else Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    data = read_json(path, "platform settings")
    unknown = sorted(set(data) - set(_FILE_KEYS))
    if unknown:
        raise DracInputError(
            f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(_FILE_KEYS)}"
        )
    where = str(path)
    settings: dict[str, Any] = {}
    if data.get("input_socket") is not None:
        settings["input_slug"] = _check_slug(data["input_socket"], where)
    if data.get("output_sockets") is not None:
        settings["output_sockets"] = _file_output_sockets(data["output_sockets"], where)
    if data.get("require_gpu") is not None:
        if not isinstance(data["require_gpu"], bool):
            raise DracInputError(
                f"{where}: require_gpu must be true or false, found {data['require_gpu']!r}"
            )
        settings["require_gpu"] = data["require_gpu"]
    return settings, where


def _environment_layer(environ: Mapping[str, str]) -> list[tuple[dict[str, Any], str]]:
    layers = []
    if environ.get(INPUT_SOCKET_ENV):
        where = f"environment {INPUT_SOCKET_ENV}"
        layers.append(({"input_slug": _check_slug(environ[INPUT_SOCKET_ENV], where)}, where))
    if environ.get(OUTPUT_SOCKETS_ENV):
        where = f"environment {OUTPUT_SOCKETS_ENV}"
        specs = [s.strip() for s in environ[OUTPUT_SOCKETS_ENV].split(",") if s.strip()]
        layers.append(({"output_sockets": parse_output_specs(specs, where)}, where))
    if environ.get(REQUIRE_GPU_ENV) is not None:
        where = f"environment {REQUIRE_GPU_ENV}"
        try:
            layers.append(({"require_gpu": env_truthy(environ[REQUIRE_GPU_ENV])}, where))
        except ValueError as exc:
            raise DracInputError(f"{where}: {exc}") from None
    return layers


def resolve_job_settings(
    model_dir: str | os.PathLike,
    input_slug: str | None = None,
    output_specs: Iterable[str] = (),
    require_gpu: bool | None = None,
    environ: Mapping[str, str] | None = None,
    platform_file: str | os.PathLike | None = None,
) -> JobSettings:
    """The settings from the command-line values given here (None / empty: not given), the
    environment and ``<model_dir>/platform.json``, by the precedence in the module docstring.
    ``platform_file`` is read instead of ``<model_dir>/platform.json`` (``./export.sh
    --platform FILE`` puts FILE into the model tarball under that name)."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[dict[str, Any], str]] = []  # lowest precedence first
    from_file = read_platform_file(model_dir, platform_file)
    if from_file is not None:
        layers.append(from_file)
    layers.extend(_environment_layer(environ))
    cli: dict[str, Any] = {}
    if input_slug is not None:
        cli["input_slug"] = _check_slug(input_slug, "--input-slug")
    specs = list(output_specs)
    if specs:
        cli["output_sockets"] = parse_output_specs(specs, "--output-slug")
    if require_gpu is not None:
        cli["require_gpu"] = require_gpu
    layers.append((cli, COMMAND_LINE))

    settings = JobSettings()
    sources = {"input_socket": DEFAULT, "require_gpu": DEFAULT}
    sources.update({f"output_socket_{c.key}": DEFAULT for c in LESION_CLASSES})
    for values, where in layers:
        if "input_slug" in values:
            settings.input_slug, sources["input_socket"] = values["input_slug"], where
        if "require_gpu" in values:
            settings.require_gpu, sources["require_gpu"] = values["require_gpu"], where
        for index, socket in values.get("output_sockets", {}).items():
            settings.output_sockets[index] = socket
            sources[f"output_socket_{lesion_class(index).key}"] = where
    settings.sources = sources
    _check_distinct(settings.output_sockets, sources)
    return settings


def _check_distinct(sockets: Mapping[int, OutputSocket], sources: Mapping[str, str]) -> None:
    for attribute in ("slug", "relative_path"):
        seen: dict[str, int] = {}
        for index, socket in sorted(sockets.items()):
            value = getattr(socket, attribute)
            if value in seen:
                a, b = lesion_class(seen[value]).key, lesion_class(index).key
                raise DracInputError(
                    f"output sockets: classes {a} ({sources[f'output_socket_{a}']}) and {b} "
                    f"({sources[f'output_socket_{b}']}) share the {attribute.replace('_', ' ')} "
                    f"{value!r}; each class needs its own"
                )
            seen[value] = index
