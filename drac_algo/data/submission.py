"""The DRAC2022 Task 1 submission format: ``1.nii.gz`` (IRMA), ``2.nii.gz`` (NA), ``3.nii.gz`` (NV).

    python -m drac_algo.submission zip OUT_DIR TEAM.zip --team TEAM [--images TEST_IMAGES]

packs a ``process.py`` output folder's stacks as the challenge's upload zip (``TEAM/1.nii.gz``
...), after checking them against the case list: ``--images`` (the test images), else the
folder's ``results.json``.

Each file is one uint8 stack (N, H, W) of {0, 1} masks, slices in integer-sorted case order,
written like the organisers' example: ``SimpleITK.GetImageFromArray`` without transpose, so
SimpleITK reports size (W, H, N), spacing 1, origin 0 and identity direction.

Header check against the organisers' example files (SimpleITK 2.5.7 / ITK 5.4): size convention,
spacing, origin, direction, pixel type and every NIfTI header key agree except the size fields
``dim[1..3]`` and ``xyzt_units``, which is 10 here (mm + seconds) and 2 (mm) in the example. ITK
5.4 always sets the time-unit bits; older ITK left them 0. It has no effect on a 3D image
(dim[4] = 1, pixdim[4] = 0) and readers, the organisers' included, take only the array.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import SimpleITK as sitk

from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.cli import (
    Group,
    exits_on_bad_input,
    setup_logging,
    verbose_option,
    version_option,
)
from drac_algo.common.datafiles import read_json
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_path, check_output_file
from drac_algo.data.images import image_size
from drac_algo.data.metrics import check_binary
from drac_algo.data.release import describe_folder, list_images

SUBMISSION_FILES: dict[int, str] = {c.index: f"{c.index}.nii.gz" for c in LESION_CLASSES}
# A team name becomes the folder inside the zip, extracted on any system: ASCII letters, digits,
# '-', '_' and '.', 1 to 64 of them, not starting with '.' (hidden; '.' and '..').
TEAM_RULE = "1 to 64 ASCII letters, digits, '-', '_' or '.', not starting with '.'"
_TEAM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def check_team(team: str) -> str:
    """``team`` if it follows :data:`TEAM_RULE`, else :class:`DracInputError` naming the rule
    and the name found."""
    if not isinstance(team, str) or not _TEAM.fullmatch(team):
        raise DracInputError(
            f"team name {_short(team)}: expected {TEAM_RULE} (it names the folder in the zip)"
        )
    return team


def check_stack(stack: np.ndarray, where: str) -> None:
    """Raise :class:`DracInputError` unless ``stack`` is a non-empty (N, H, W) uint8 array of
    {0, 1}."""
    if not isinstance(stack, np.ndarray):
        raise DracInputError(f"{where}: expected a numpy array, got {type(stack).__name__}")
    if stack.ndim != 3 or 0 in stack.shape:
        raise DracInputError(f"{where}: expected a non-empty (N, H, W) stack, got {stack.shape}")
    if stack.dtype != np.uint8:
        raise DracInputError(f"{where}: expected dtype uint8, got {stack.dtype}")
    check_binary(stack, where)


def _check_classes(keys: set[int], where: str) -> None:
    expected = set(SUBMISSION_FILES)
    if keys != expected:
        raise DracInputError(
            f"{where}: expected classes {sorted(expected)}, got {sorted(keys)} "
            f"(missing {sorted(expected - keys)}, unknown {sorted(keys - expected)})"
        )


def _check_same_shape(shapes: dict[int, tuple[int, ...]], where: str) -> None:
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"class {i}: {s}" for i, s in sorted(shapes.items()))
        raise DracInputError(f"{where}: the three stacks must have one (N, H, W) shape; {listed}")


def write_submission(out_dir: str | os.PathLike, stacks: dict[int, np.ndarray]) -> list[Path]:
    """Write ``1.nii.gz``, ``2.nii.gz``, ``3.nii.gz`` into ``out_dir``, each atomically.

    stacks: class index (1, 2, 3) -> (N, H, W) uint8 in {0, 1}, one shape for all three, slices
    in integer-sorted case order. A 0/255 stack is an error (values must be {0, 1}). Returns the
    written paths in class order.
    """
    out_dir = Path(out_dir)
    _check_classes(set(stacks), "write_submission")
    for index, stack in stacks.items():
        check_stack(stack, f"submission class {index}")
    _check_same_shape({i: s.shape for i, s in stacks.items()}, "write_submission")
    written = []
    for index, name in sorted(SUBMISSION_FILES.items()):
        path = out_dir / name
        with atomic_path(path) as tmp:
            sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(stacks[index])), str(tmp))
        written.append(path)
    return written


def read_submission(folder: str | os.PathLike) -> dict[int, np.ndarray]:
    """Read a submission folder: class index -> (N, H, W) uint8 in {0, 1}.

    Stacks stored with another pixel type are accepted when their values are 0 and 1 (and
    returned as uint8). Errors name the file: missing files, unreadable files, not 3D, several
    components, values other than {0, 1}, stacks of different shapes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DracInputError(f"submission folder not found: {folder}")
    missing = [n for n in SUBMISSION_FILES.values() if not (folder / n).is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise DracInputError(
            f"submission folder {folder} lacks {', '.join(missing)}; it holds: "
            + (", ".join(present) or "nothing")
        )
    stacks = {}
    for index, name in sorted(SUBMISSION_FILES.items()):
        path = folder / name
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise DracInputError(f"{path}: unreadable or truncated NIfTI file") from None
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise DracInputError(
                f"{path}: expected a 3D one-component stack (size W, H, N), got dimension "
                f"{image.GetDimension()} with {image.GetNumberOfComponentsPerPixel()} components"
            )
        array = sitk.GetArrayFromImage(image)
        check_binary(array, str(path))
        stacks[index] = array.astype(np.uint8, copy=False)
    _check_same_shape({i: s.shape for i, s in stacks.items()}, f"submission {folder}")
    return stacks


def zip_submission(
    folder: str | os.PathLike,
    zip_path: str | os.PathLike,
    team: str,
    cases: list[tuple[str, tuple[int, int]]] | None = None,
) -> Path:
    """Package a checked submission folder as ``zip_path`` holding ``TEAM/1.nii.gz`` etc.

    The files are read and validated first, and against ``cases`` ((name, (H, W)) in stack
    order) when given: one slice per case, each of its case's size. The zip is written
    atomically and stored uncompressed (the NIfTI files are already gzip-compressed).
    """
    check_team(team)
    folder, zip_path = Path(folder), Path(zip_path)
    stacks = read_submission(folder)
    if cases is not None:
        n, h, w = stacks[1].shape
        if n != len(cases):
            raise DracInputError(
                f"submission {folder} holds {n} slices per class but the case list has "
                f"{len(cases)} cases ({cases[0][0] if cases else '-'} ... "
                f"{cases[-1][0] if cases else '-'})"
            )
        for name, shape in cases:
            if tuple(shape) != (h, w):
                raise DracInputError(
                    f"submission {folder} slices are {h} x {w} (H x W) but case {name} is "
                    f"{shape[0]} x {shape[1]}"
                )
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in SUBMISSION_FILES.values():
            zf.write(folder / name, arcname=f"{team}/{name}")
    return zip_path


@dataclass
class NiftiHeader:
    """What SimpleITK reports about a file without reading its pixels.

    size: (x, y, z) = (W, H, N) for a submission stack; metadata: the NIfTI header keys.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_type: str
    components: int
    metadata: dict[str, str]


def read_header(path: str | os.PathLike) -> NiftiHeader:
    """Header of an image file as SimpleITK sees it (pixels are not decoded)."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DracInputError(f"{path}: unreadable image header") from None
    return NiftiHeader(
        size=tuple(reader.GetSize()),
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        components=int(reader.GetNumberOfComponents()),
        metadata={k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()},
    )


# --- command line ------------------------------------------------------------------------------


def case_list(folder: Path, images: Path | None) -> tuple[list[tuple[str, tuple[int, int]]], str]:
    """(name, (H, W)) per case in stack order, and where the list came from: the ``images``
    folder, else ``folder/results.json`` of a batch run."""
    if images is not None:
        found = list_images(images)
        if not found:
            raise DracInputError(f"no case images: {describe_folder(images)}")
        return [(p.name, image_size(p)) for p in found], str(images)
    results = folder / "results.json"
    if not results.exists() and not results.is_symlink():
        raise DracInputError(
            f"{folder} has no results.json to take the case list from; pass --images with the "
            "test images the stacks were made from"
        )
    return results_case_list(read_json(results, "results file"), str(results)), str(results)


def results_case_list(data: dict, where: str) -> list[tuple[str, tuple[int, int]]]:
    """(name, (H, W)) per case of a batch run's ``results.json`` document ``data``; anything
    else (another run mode, a case without a file name or an (H, W) of two positive
    integers) raises :class:`DracInputError` naming ``where``."""
    if "mode" in data and data["mode"] != "batch":
        raise DracInputError(f"{where} is from a {_short(data['mode'])} run, not a batch run")
    cases = data.get("cases")
    if not isinstance(cases, list) or "mode" not in data:
        raise DracInputError(f"{where}: not a process.py results.json (no 'mode' and 'cases')")
    found = []
    for i, case in enumerate(cases):
        name = case.get("file") if isinstance(case, dict) else None
        shape = case.get("shape") if isinstance(case, dict) else None
        if (
            not isinstance(name, str)
            or not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise DracInputError(
                f"{where}: case {i} is not {{'file': NAME, 'shape': [H, W]}} with a text name "
                f"and two positive integers; found {_short(case)}"
            )
        found.append((name, (shape[0], shape[1])))
    return found


def _short(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@click.group(cls=Group)
@version_option("drac-submission")
def main() -> None:
    """DRAC2022 Task 1 submission files (1.nii.gz 2.nii.gz 3.nii.gz)."""


@main.command("zip")
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("zip_path", metavar="TEAM_ZIP", type=click.Path(path_type=Path))
@click.option("--team", required=True, help="Team name: the folder inside the zip.")
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="The test images the stacks were made from (the case list). Default: FOLDER's "
    "results.json.",
)
@verbose_option
@exits_on_bad_input
def zip_command(
    folder: Path, zip_path: Path, team: str, images: Path | None, verbose: bool
) -> None:
    """Check FOLDER's stacks against the case list and pack them as TEAM_ZIP."""
    setup_logging(verbose)
    check_team(team)
    check_output_file(zip_path, "TEAM_ZIP")
    cases, source = case_list(folder, images)
    try:
        written = zip_submission(folder, zip_path, team, cases)
    except OSError as exc:  # disk full, ...: the message names the file (OutputWriteError)
        raise DracInputError(str(exc)) from None
    click.echo(f"{written}: {team}/1.nii.gz 2.nii.gz 3.nii.gz, {len(cases)} cases ({source})")


if __name__ == "__main__":
    main()
