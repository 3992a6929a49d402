"""Image file I/O: one-channel uint8 pixels from PNG/MHA/TIFF, binary masks from PNG, PNG writing.

Every reader turns a bad file into a :class:`DracInputError` that names the file and the problem,
so a broken copy of the data set fails loudly instead of training or scoring on garbage:
an entry that cannot be read (:func:`check_readable`: a dangling or looping link, a folder, no
permission), an image larger than :data:`MAX_IMAGE_SIDE` per side or :data:`MAX_IMAGE_PIXELS`
in all (checked on the header, before anything is decoded), an undecodable file. A file whose
content is another format than its suffix says (a JPEG named ``.png``) is read, with a warning
naming it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".mha", ".tif", ".tiff")

# The largest image read: 16384 per side (16 times a DRAC image's 1024) and 2^28 pixels in all
# (256 MiB as uint8; the engine holds several float32 copies of an image). Beyond these a
# header is a corrupt or hostile file, and decoding it would exhaust memory or fail inside
# OpenCV (whose resize takes at most 32767 per side).
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 2**28

# Leading bytes -> format, to notice a file whose content is not what its suffix says.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"\x1f\x8b", "gzip"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)
_SUFFIX_FORMAT = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".mha": "MetaImage"}
_HEAD_BYTES = 32


@dataclass
class LoadedImage:
    """One 2D image as a single channel.

    pixels: (H, W) uint8 in [0, 255]. spacing and origin: (x, y) as SimpleITK reports them;
    direction: the 2x2 direction matrix, row-major (4 values). converted: what was done to reach
    one uint8 channel (e.g. "RGB converted to grayscale"), None when the file already was that.
    """

    pixels: np.ndarray
    spacing: tuple[float, float]
    origin: tuple[float, float]
    direction: tuple[float, ...]
    converted: str | None = None


def _opencv() -> Any:
    """The cv2 module, imported on first use: the evaluation and submission commands import this
    module, and their ``--help`` should not wait for OpenCV."""
    import cv2  # heavy (OpenCV); see the docstring

    return cv2


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DracInputError(
            f"{path}: unsupported image type {path.suffix!r}; expected one of "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )


def check_readable(path: str | os.PathLike) -> bytes:
    """The first bytes of the file ``path``, or :class:`DracInputError` naming it and why it
    cannot be read: missing, a symbolic link to nothing or one that loops, a folder or another
    non-regular entry (a FIFO would block the reader), no read permission."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "a symbolic link that loops"
        elif path.is_symlink():
            reason = f"a symbolic link to {os.readlink(path)!r}, which does not exist"
        elif isinstance(exc, FileNotFoundError):
            reason = "no such file"
        else:
            reason = exc.strerror or str(exc)
        raise DracInputError(f"{path}: cannot read this image file: {reason}") from None
    if stat.S_ISDIR(info.st_mode):
        raise DracInputError(f"{path}: cannot read this image file: it is a folder")
    if not stat.S_ISREG(info.st_mode):
        raise DracInputError(
            f"{path}: cannot read this image file: not a regular file (a FIFO, socket or device)"
        )
    try:
        with open(path, "rb") as fh:
            return fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise DracInputError(
            f"{path}: cannot read this image file: {exc.strerror or exc}"
        ) from None


def sniff_format(head: bytes) -> str | None:
    """The format whose signature ``head`` (a file's first bytes) starts with, else None."""
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _warn_on_mismatch(path: Path, head: bytes) -> None:
    found, expected = sniff_format(head), _SUFFIX_FORMAT.get(path.suffix.lower())
    if found is not None and expected is not None and found != expected:
        lossy = " (lossy: its pixels are not the original's)" if found == "JPEG" else ""
        log.warning(
            "%s: named %s but its content is a %s file%s; reading it as %s",
            path,
            path.suffix,
            found,
            lossy,
            found,
        )


def check_size(path: str | os.PathLike, size: tuple[int, ...]) -> None:
    """Refuse an image whose header ``size`` ((W, H) or (W, H, D), SimpleITK's order) exceeds
    :data:`MAX_IMAGE_SIDE` per side or :data:`MAX_IMAGE_PIXELS` in all."""
    pixels = 1
    for s in size:
        pixels *= int(s)
    if max(int(s) for s in size[:2]) > MAX_IMAGE_SIDE or pixels > MAX_IMAGE_PIXELS:
        shown = " x ".join(str(int(s)) for s in size)
        raise DracInputError(
            f"{path}: image size {shown} ({'W x H x D' if len(size) > 2 else 'W x H'}) exceeds "
            f"the bound of {MAX_IMAGE_SIDE} pixels per side and {MAX_IMAGE_PIXELS} (2^28) "
            "pixels in all; not decoded"
        )


def _png_size(head: bytes) -> tuple[int, int] | None:
    """(W, H) from a PNG's IHDR chunk, None when ``head`` is not a PNG's start."""
    if sniff_format(head) != "PNG" or len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _read_pixels(path: Path) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """Decoded pixels, (H, W) or (H, W, C) with colour in RGB(A) order, and the 2D spacing,
    origin and direction (4 values). The size is checked on the header first
    (:func:`check_size`)."""
    head = check_readable(path)
    _warn_on_mismatch(path, head)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        # ITK's message is long and ends in a stack of file names; keep its last line.
        png_size = _png_size(head)
        if png_size is not None:
            check_size(path, png_size)
        return _read_opencv(path, str(exc).strip().splitlines()[-1] if str(exc).strip() else "")
    check_size(path, reader.GetSize())
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        return _read_opencv(path, str(exc).strip().splitlines()[-1] if str(exc).strip() else "")
    arr = sitk.GetArrayFromImage(image)
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if image.GetDimension() == 3:
        if image.GetSize()[2] != 1:
            raise DracInputError(
                f"{path}: expected a 2D image, found a 3D volume of size {image.GetSize()} "
                "(x, y, z) with more than one slice"
            )
        # A single-slice volume: keep the in-plane geometry (upper-left 2x2 of the 3x3 direction).
        arr = arr[0]
        direction = (direction[0], direction[1], direction[3], direction[4])
    elif image.GetDimension() != 2:
        raise DracInputError(f"{path}: expected a 2D image, found {image.GetDimension()}D")
    return arr, spacing[:2], origin[:2], direction


def _read_opencv(path: Path, itk_detail: str) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """Second chance for PNG/TIFF layouts SimpleITK has no pixel type for (e.g. gray + alpha).
    OpenCV returns None for truncated or corrupt files, so those still fail here."""
    arr = None
    if path.suffix.lower() in (".png", ".tif", ".tiff"):
        cv2 = _opencv()
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DracInputError(f"{path}: unreadable or truncated image file ({itk_detail})")
    if arr.ndim == 3 and arr.shape[2] >= 3:
        arr = arr[..., [2, 1, 0, *range(3, arr.shape[2])]]  # OpenCV's BGR(A) -> RGB(A)
    return arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)


def _to_one_channel(arr: np.ndarray, path: Path) -> tuple[np.ndarray, str | None]:
    """(H, W) or (H, W, C) array -> (H, W) array and a note of what was done."""
    if arr.ndim == 2:
        return arr, None
    notes = []
    if arr.shape[2] in (2, 4):
        # The last channel is alpha; the UW-OCTA content is in the colour/gray channels.
        arr = arr[..., :-1]
        notes.append("alpha channel dropped")
    if arr.shape[2] == 1:
        gray = arr[..., 0]
    elif arr.shape[2] != 3:
        raise DracInputError(f"{path}: expected 1 to 4 channels, found {arr.shape[2]}")
    elif np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        # Gray content stored as RGB (some DRAC copies): take it exactly, no weighting round-off.
        gray = arr[..., 0]
        notes.append("RGB converted to grayscale (identical channels)")
    else:
        cv2 = _opencv()
        gray = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
        notes.append("RGB converted to grayscale (luminance)")
    return gray, "; ".join(notes)


def _to_uint8(arr: np.ndarray, path: Path) -> tuple[np.ndarray, str | None]:
    """Any numeric (H, W) array -> uint8, or an error when the mapping would be a guess."""
    if arr.dtype == np.uint8:
        return arr, None
    if arr.dtype == np.uint16:
        # Scanners often store 10- or 12-bit data in a 16-bit file; dividing those by 257 would
        # leave a nearly black image. The data's own range picks the depth: the smallest of
        # 8, 10, 12, 14 or 16 bits that holds the largest value (so a 16-bit image darker than
        # 1/16 of its range reads as 12-bit: the note says which depth was used).
        top = int(arr.max()) if arr.size else 0
        bits = next((b for b in (8, 10, 12, 14) if top < 2**b), 16)
        scaled = np.round(arr.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)
        if bits == 16:
            return scaled, "16-bit scaled to 8-bit"
        return scaled, f"16-bit file holding {bits}-bit data (largest value {top}) scaled to 8-bit"
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255, "boolean mapped to {0, 255}"
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 255 and np.array_equal(arr, np.round(arr)):
        return arr.astype(np.uint8), f"{arr.dtype} with values in [0, 255] cast to uint8"
    raise DracInputError(
        f"{path}: pixel type {arr.dtype} with values in [{lo:g}, {hi:g}] has no unambiguous "
        "8-bit mapping; expected uint8 (or uint16, or integral values within [0, 255])"
    )


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read a 2D image file (.png, .mha, .tif, .tiff) as one uint8 channel.

    RGB(A) is reduced to gray (exactly when the channels are identical); a 3D file with more than
    one slice, an unreadable or truncated file, or a pixel type without an unambiguous 8-bit
    mapping raises :class:`DracInputError` naming the file.
    """
    path = Path(path)
    _check_suffix(path)
    arr, spacing, origin, direction = _read_pixels(path)
    notes = []
    arr, note = _to_one_channel(arr, path)
    notes.append(note)
    arr, note = _to_uint8(arr, path)
    notes.append(note)
    converted = "; ".join(n for n in notes if n) or None
    return LoadedImage(
        pixels=np.ascontiguousarray(arr),
        spacing=(float(spacing[0]), float(spacing[1])),
        origin=(float(origin[0]), float(origin[1])),
        direction=tuple(float(d) for d in direction),
        converted=converted,
    )


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of a 2D image file, from its header alone where SimpleITK can read it.

    Used to size the all-zero masks of images without a mask file. Raises
    :class:`DracInputError` for an unreadable file or a volume with more than one slice.
    """
    path = Path(path)
    _check_suffix(path)
    check_readable(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return load_image(path).pixels.shape  # decodes, or names the file in its error
    size = reader.GetSize()
    check_size(path, size)
    if len(size) == 3 and size[2] != 1:
        raise DracInputError(f"{path}: expected a 2D image, found a volume of size {size}")
    return int(size[1]), int(size[0])


def read_mask_png(
    path: str | os.PathLike, expected_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a lesion mask stored as 0/255 (or 0/1) and return it as (H, W) uint8 in {0, 1}.

    Raises :class:`DracInputError` naming the file when its values are anything else or its
    (H, W) differs from ``expected_shape`` (the size of the image it belongs to).
    """
    path = Path(path)
    _check_suffix(path)
    # Values are checked on the decoded pixels, before any 8-bit rescaling, so that a 16-bit
    # 0/1 mask is not silently scaled to all zeros.
    mask, converted = _to_one_channel(_read_pixels(path)[0], path)
    if expected_shape is not None and mask.shape != tuple(expected_shape):
        raise DracInputError(
            f"{path}: mask size (H, W) = {mask.shape} differs from its image's "
            f"{tuple(expected_shape)}"
        )
    if mask.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))  # cheap unique
    else:
        values = np.unique(mask)
    found = set(values.tolist())
    if not (found <= {0, 255} or found <= {0, 1}):
        shown = ", ".join(f"{v:g}" for v in values[:10].tolist()) + (
            " ..." if values.size > 10 else ""
        )
        raise DracInputError(
            f"{path}: mask values must be {{0, 255}} (or {{0, 1}}); found {{{shown}}}"
            + (f" after {converted}" if converted else "")
        )
    return (mask > 0).astype(np.uint8)


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write (H, W) uint8 gray or (H, W, 3) uint8 RGB as PNG, atomically."""
    path = Path(path)
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise DracInputError(f"{path}: write_png needs a uint8 array, got {found}")
    cv2 = _opencv()
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)  # OpenCV stores BGR order
    elif array.ndim != 2:
        raise DracInputError(
            f"{path}: write_png needs (H, W) or (H, W, 3), got shape {array.shape}"
        )
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise DracInputError(f"{path}: PNG encoding failed for array of shape {array.shape}")
    atomic_write_bytes(path, encoded.tobytes())
