"""Grand Challenge job I/O: which input image a job holds, and where each class mask goes.

The platform runs the container once per job with::

    /input/inputs.json                  a JSON list of socket values (written by the platform)
    /input/<relative_path>/<name>.mha   the image of each image socket (.mha or .tif/.tiff)
    /output/                            where the algorithm writes its output sockets

Each socket value in ``inputs.json`` looks like this (the platform's older name for a socket is
"interface"; both keys are accepted)::

    {"pk": 1, "file": null, "value": null,
     "image": {"pk": "<uuid>", "name": "the uploaded file name"},
     "interface": {"slug": "uw-octa-image", "kind": "Image", "super_kind": "Image",
                   "relative_path": "images/uw-octa-image", ...}}

Rule for the input image (the Grand Challenge templates glob the folder and take the first file,
which hides configuration mistakes): the job must hold exactly one socket whose ``super_kind`` is
``Image`` (``--input-slug`` picks one when there are several), and that socket's folder must
hold exactly one ``.mha``/``.tif``/``.tiff`` file. Anything else is a :class:`DracInputError`
that lists what was found.

Outputs follow the templates: an image output socket with relative path ``images/<slug>`` gets
one file ``/output/images/<slug>/output.mha`` (which sockets: :mod:`drac_algo.serve.job_settings`).
Masks are 2D uint8 {0, 1} with the input image's spacing, origin and direction, so they overlay
the input in the platform's viewer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drac_algo.common.datafiles import read_json
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_path
from drac_algo.data.images import IMAGE_SUFFIXES, LoadedImage, check_readable
from drac_algo.data.release import describe_folder

INPUTS_JSON = "inputs.json"
OUTPUT_FILENAME = "output.mha"
# The platform converts uploads to these; PNG is accepted too for local test folders.
GC_IMAGE_SUFFIXES = IMAGE_SUFFIXES


@dataclass(frozen=True)
class SocketValue:
    """One entry of ``inputs.json``: the socket's slug, kinds, relative path and, for image
    sockets, the name the image was uploaded under (``None`` when not given)."""

    slug: str
    kind: str
    super_kind: str
    relative_path: str
    image_name: str | None = None

    @property
    def is_image(self) -> bool:
        return self.super_kind.lower() == "image"


def is_grand_challenge_job(input_dir: str | os.PathLike) -> bool:
    """True when ``input_dir`` holds the platform's ``inputs.json``."""
    return (Path(input_dir) / INPUTS_JSON).is_file()


def _parse_socket_value(entry: Any, where: str) -> SocketValue:
    if not isinstance(entry, Mapping):
        raise DracInputError(f"{where}: expected an object, found {type(entry).__name__}")
    socket = entry.get("socket", entry.get("interface"))
    if not isinstance(socket, Mapping):
        raise DracInputError(
            f"{where}: no 'interface' (or 'socket') object; the entry has keys "
            f"{', '.join(sorted(map(str, entry))) or 'none'}"
        )
    missing = [k for k in ("slug", "relative_path") if not isinstance(socket.get(k), str)]
    if missing:
        raise DracInputError(f"{where}: interface lacks the text field(s) {', '.join(missing)}")
    relative = socket["relative_path"]
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise DracInputError(
            f"{where}: relative_path {relative!r} must stay inside the input folder"
        )
    super_kind = socket.get("super_kind")
    if not isinstance(super_kind, str):
        # Older files may lack super_kind: an image value is then the only sign of an image.
        super_kind = "Image" if isinstance(entry.get("image"), Mapping) else ""
    image = entry.get("image")
    name = image.get("name") if isinstance(image, Mapping) else None
    return SocketValue(
        slug=socket["slug"],
        kind=str(socket.get("kind", "")),
        super_kind=super_kind,
        relative_path=relative,
        image_name=name if isinstance(name, str) else None,
    )


def read_inputs_json(input_dir: str | os.PathLike) -> list[SocketValue]:
    """Parse ``<input_dir>/inputs.json``; a malformed file raises :class:`DracInputError`
    naming it and the entry at fault."""
    path = Path(input_dir) / INPUTS_JSON
    if not path.exists() and not path.is_symlink():
        raise DracInputError(f"{path}: no such file ({describe_folder(path.parent)})")
    data = read_json(path, INPUTS_JSON, expect=None)
    if not isinstance(data, list):
        raise DracInputError(
            f"{path}: expected a JSON list of socket values, found {type(data).__name__}"
        )
    return [_parse_socket_value(entry, f"{path} entry {i}") for i, entry in enumerate(data)]


def _describe(sockets: Iterable[SocketValue]) -> str:
    shown = [f"{s.slug} ({s.super_kind or s.kind or 'unknown kind'})" for s in sockets]
    return ", ".join(shown) or "no sockets"


def choose_image_socket(
    sockets: list[SocketValue], slug: str | None = None, where: str | os.PathLike = INPUTS_JSON
) -> SocketValue:
    """The socket whose image the job is about.

    With ``slug``: that socket, which must exist and be an image socket. Without: the only
    image socket; none or several raise :class:`DracInputError` listing the sockets.
    """
    if slug is not None:
        found = [s for s in sockets if s.slug == slug]
        if not found:
            raise DracInputError(f"{where}: no socket {slug!r}; it holds {_describe(sockets)}")
        if not found[0].is_image:
            raise DracInputError(
                f"{where}: socket {slug!r} is not an image socket (super_kind "
                f"{found[0].super_kind!r})"
            )
        return found[0]
    images = [s for s in sockets if s.is_image]
    if not images:
        raise DracInputError(f"{where} names no image socket; it holds {_describe(sockets)}")
    if len(images) > 1:
        raise DracInputError(
            f"{where} names {len(images)} image sockets ({', '.join(s.slug for s in images)}); "
            "choose one with --input-slug"
        )
    return images[0]


def socket_image_file(input_dir: str | os.PathLike, socket: SocketValue) -> Path:
    """The one image file in ``<input_dir>/<relative_path>/`` (hidden files skipped); an
    entry with an image name that cannot be read (a dangling link, a folder) is named in the
    error, not passed over."""
    folder = Path(input_dir) / socket.relative_path
    if not folder.is_dir():
        raise DracInputError(
            f"socket {socket.slug!r}: image folder {folder} missing; "
            f"{describe_folder(folder.parent)}"
        )
    files = sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in GC_IMAGE_SUFFIXES
    )
    for path in files:
        check_readable(path)
    if len(files) != 1:
        what = "no image file" if not files else f"{len(files)} image files"
        raise DracInputError(
            f"socket {socket.slug!r}: expected one image file "
            f"({', '.join(GC_IMAGE_SUFFIXES)}) in {folder}, found {what}; "
            f"{describe_folder(folder)}"
        )
    return files[0]


def find_job_image(
    input_dir: str | os.PathLike, slug: str | None = None
) -> tuple[SocketValue, Path]:
    """Read ``inputs.json`` in ``input_dir`` and return the chosen image socket and its file."""
    sockets = read_inputs_json(input_dir)
    socket = choose_image_socket(sockets, slug, Path(input_dir) / INPUTS_JSON)
    return socket, socket_image_file(input_dir, socket)


# --------------------------------------------------------------------------------------------
# Output sockets


def write_mask_mha(path: str | os.PathLike, mask: np.ndarray, like: LoadedImage) -> Path:
    """Write an (H, W) uint8 {0, 1} mask as a compressed 2D ``.mha`` with ``like``'s spacing,
    origin and direction, atomically."""
    path = Path(path)
    if mask.ndim != 2 or mask.dtype != np.uint8 or mask.shape != like.pixels.shape:
        raise DracInputError(
            f"{path}: expected a {like.pixels.shape} uint8 mask, got {mask.shape} {mask.dtype}"
        )
    if mask.size and mask.max() > 1:
        raise DracInputError(f"{path}: mask values must be 0 or 1, found up to {mask.max()}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask))
    image.SetSpacing(like.spacing)
    image.SetOrigin(like.origin)
    image.SetDirection(like.direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path
