"""The DRAC2022 Task 1 release layout: finding its folders, listing cases, loading their masks.

Folders are found by their leading token ("A." / "A._", "1." / "1._", "a." / "b.", class folders
"1." / "2." / "3."), never by exact name, because re-extracted copies of the release spell them
differently and sometimes add one outer folder. Case names are integers ("086.png", "1299.png")
and are ordered by integer value everywhere, the order the organisers' submission stacks use.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.data.images import IMAGE_SUFFIXES, check_readable, image_size, read_mask_png

log = logging.getLogger(__name__)

SPLITS: dict[str, str] = {"train": "a", "test": "b"}  # split -> folder token
_TOKEN = re.compile(r"^\s*([A-Za-z0-9]+)\.(?=[\s_]|$)")  # "A. x", "A._x"; not "086.png"
_CASE_NAME = re.compile(r"\d+")
_IGNORED_DIRS = {"__MACOSX"}  # macOS zip residue beside the real folders in re-extracted copies


def folder_token(name: str) -> str | None:
    """Leading token of a DRAC folder name, lower-cased: "A._Segmentation" -> "a", else None."""
    match = _TOKEN.match(name)
    return match.group(1).lower() if match else None


def describe_folder(folder: Path, limit: int = 20) -> str:
    """A short listing of a folder's children for error messages."""
    if not folder.is_dir():
        return f"{folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
    children = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not children:
        return f"{folder} is empty"
    shown = ", ".join(children[:limit])
    more = f" ... and {len(children) - limit} more" if len(children) > limit else ""
    return f"{folder} holds: {shown}{more}"


def _child_dirs(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS
    )


def _with_token(folder: Path, token: str) -> list[Path]:
    return [p for p in _child_dirs(folder) if folder_token(p.name) == token]


def _pick(folder: Path, token: str, what: str, required: bool) -> Path | None:
    """The one child folder of ``folder`` whose name starts with ``token.``."""
    found = _with_token(folder, token)
    if len(found) > 1:
        names = ", ".join(repr(p.name) for p in found)
        raise DracInputError(f"ambiguous {what} in {folder}: {names} all start with '{token}.'")
    if not found:
        if required:
            raise DracInputError(
                f"no {what} (a folder starting '{token}.'): {describe_folder(folder)}"
            )
        return None
    return found[0]


def case_id(path: str | os.PathLike) -> int:
    """Integer case number of a file named like "086.png" or "1299.png"."""
    path = Path(path)
    stem = path.name.split(".", 1)[0]
    if not _CASE_NAME.fullmatch(stem):
        raise DracInputError(
            f"{path}: case name {stem!r} is not an integer (DRAC names look like 086.png, 1299.png)"
        )
    return int(stem)


def sort_cases(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths ordered by integer case number ("999.png" before "1000.png"); two files with the
    same number (e.g. "86.png" and "086.png") are an error."""
    by_id: dict[int, Path] = {}
    for path in map(Path, paths):
        cid = case_id(path)
        if cid in by_id:
            raise DracInputError(f"two files for case {cid}: {by_id[cid]} and {path}")
        by_id[cid] = path
    return [by_id[cid] for cid in sorted(by_id)]


# Image types a user may drop beside the cases that are not read (JPEG is lossy; the release
# is PNG): skipped with a warning, never silently.
UNREAD_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".jp2", ".nii", ".gz", ".nrrd")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Integer-sorted image files (.png, .mha, .tif, .tiff) of a plain folder.

    Hidden files (".DS_Store", "._086.png", in-progress atomic writes) and files of other types
    are skipped (image types that are not read, such as ``.jpg``, with a warning that names
    them); a non-integer image name is an error. The list may be empty: callers that need
    cases say so with :func:`describe_folder`.

    An entry with an image name that cannot be read (a dangling or looping symbolic link, a
    folder named ``086.png``, no read permission; :func:`drac_algo.data.images.check_readable`)
    is an error naming every such entry and why, never skipped: a skipped case is a case
    missing from the submission stacks, the scores or a training split, and for a medical
    tool a run that silently answers for fewer images than it was given is worse than one that
    stops and says which file to fix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DracInputError(f"image folder not found: {describe_folder(folder)}")
    named = [
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    problems = []
    for path in sorted(named):
        try:
            check_readable(path)
        except DracInputError as exc:
            problems.append(str(exc))
    if problems:
        shown = "\n  - ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DracInputError(
            f"{folder}: {len(problems)} image entr{'y' if len(problems) == 1 else 'ies'} cannot "
            f"be read, so their cases would be missing; fix or remove them:\n  - {shown}{more}"
        )
    files = named
    visible = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    unread = sorted(p.name for p in visible if p.suffix.lower() in UNREAD_IMAGE_SUFFIXES)
    if unread:
        log.warning(
            "%s: %d image file(s) of a type not read here are skipped, so their cases are "
            "missing (expected %s): %s%s",
            folder,
            len(unread),
            ", ".join(IMAGE_SUFFIXES),
            ", ".join(unread[:5]),
            " ..." if len(unread) > 5 else "",
        )
    return sort_cases(files)


@dataclass
class DracLayout:
    """Where the parts of a DRAC Task 1 tree are; None where the tree lacks that part.

    ``train_masks`` / ``test_masks`` are the folders holding the three class folders.
    """

    root: Path
    train_images: Path | None
    test_images: Path | None
    train_masks: Path | None
    test_masks: Path | None

    def images(self, split: str) -> Path | None:
        return getattr(self, f"{_check_split(split)}_images")

    def masks(self, split: str) -> Path | None:
        return getattr(self, f"{_check_split(split)}_masks")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DracInputError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split


def _find_segmentation_dir(root: Path) -> Path:
    """The "A. Segmentation" folder: ``root`` itself, a child of it, or a grandchild (one extra
    outer folder)."""
    if folder_token(root.name) == "a" and _with_token(root, "1"):
        return root
    direct = _with_token(root, "a")
    candidates = direct or [p for sub in _child_dirs(root) for p in _with_token(sub, "a")]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(str(p.relative_to(root)) for p in candidates)
        raise DracInputError(f"ambiguous DRAC root {root}: several 'A.' folders: {names}")
    raise DracInputError(
        f"no DRAC Task 1 folder ('A. Segmentation' or 'A._Segmentation') in {root} or in its "
        f"subfolders; {describe_folder(root)}"
    )


def class_folders(parent: str | os.PathLike) -> dict[int, Path]:
    """Class index -> class folder ("1. Intraretinal ...", ...) inside a ground-truth split
    folder such as ".../2. Groundtruths/b. Testing Set". All three must be there."""
    parent = Path(parent)
    if not parent.is_dir():
        raise DracInputError(f"ground-truth folder not found: {describe_folder(parent)}")
    return {
        c.index: _pick(parent, str(c.index), f"class folder for '{c.folder}'", required=True)
        for c in LESION_CLASSES
    }


def find_layout(root: str | os.PathLike) -> DracLayout:
    """Locate the image and ground-truth folders of a DRAC Task 1 tree under ``root``.

    ``root`` may be the release root, one folder above it, or the "A. Segmentation" folder.
    Raises :class:`DracInputError` (listing the folder's children) when the segmentation or
    original-images folder is missing, when neither split has images, when any level is
    ambiguous, or when a ground-truth split lacks one of the three class folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DracInputError(f"DRAC root not found: {describe_folder(root)}")
    seg = _find_segmentation_dir(root)
    images = _pick(seg, "1", "original-images folder ('1. Original Images')", required=True)
    truths = _pick(seg, "2", "ground-truth folder ('2. Groundtruths')", required=False)
    found: dict[str, Path | None] = {}
    for split, token in SPLITS.items():
        found[f"{split}_images"] = _pick(images, token, f"{split} image folder", required=False)
        found[f"{split}_masks"] = (
            _pick(truths, token, f"{split} ground-truth folder", required=False)
            if truths is not None
            else None
        )
    if found["train_images"] is None and found["test_images"] is None:
        raise DracInputError(
            "no image split folder ('a. Training Set' or 'b. Testing Set'): "
            + describe_folder(images)
        )
    for key in ("train_masks", "test_masks"):
        if found[key] is not None:
            class_folders(found[key])
    return DracLayout(root=root, **found)


@dataclass
class Case:
    """One image and its mask files; ``masks[class_index]`` is None where the image has no file
    for that class, which means an all-zero mask."""

    case_id: int
    image: Path
    masks: dict[int, Path | None]


def _mask_files(class_dir: Path, case_ids: set[int], images_where: Path | str) -> dict[int, Path]:
    """Case id -> mask file in one class folder; a mask whose image is missing is an error."""
    files = {case_id(p): p for p in list_images(class_dir)}
    orphans = sorted(set(files) - case_ids)
    if orphans:
        names = ", ".join(files[cid].name for cid in orphans[:10])
        more = f" ... ({len(orphans)} in all)" if len(orphans) > 10 else ""
        raise DracInputError(
            f"mask without an image: {names}{more} in {class_dir} have no image in {images_where}"
        )
    return files


def list_cases(layout: DracLayout, split: str) -> list[Case]:
    """Integer-sorted cases of one split ("train" or "test").

    The test split may lack ground truth (the real release has none): then every mask is None.
    The train split must have it. Errors: no images, a mask without an image, bad names.
    """
    images_dir = layout.images(split)
    if images_dir is None:
        raise DracInputError(f"no {split} image folder in DRAC tree {layout.root}")
    images = list_images(images_dir)
    if not images:
        raise DracInputError(f"no {split} images: {describe_folder(images_dir)}")
    masks_dir = layout.masks(split)
    if masks_dir is None and split == "train":
        raise DracInputError(
            f"no training ground truth ('2. Groundtruths/a. Training Set') in {layout.root}"
        )
    ids = [case_id(p) for p in images]
    per_class: dict[int, dict[int, Path]] = {}
    if masks_dir is not None:
        per_class = {
            index: _mask_files(folder, set(ids), images_dir)
            for index, folder in class_folders(masks_dir).items()
        }
    return [
        Case(
            case_id=cid,
            image=path,
            masks={c.index: per_class.get(c.index, {}).get(cid) for c in LESION_CLASSES},
        )
        for cid, path in zip(ids, images, strict=True)
    ]


def load_case_masks(case: Case, shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Class index -> (H, W) uint8 mask in {0, 1}; zeros where the case has no mask file.

    ``shape`` is the (H, W) of the case's image; a mask file of another size is an error.
    """
    return {
        index: (
            np.zeros(shape, np.uint8) if path is None else read_mask_png(path, expected_shape=shape)
        )
        for index, path in case.masks.items()
    }


def load_mask_stacks(
    class_parent: str | os.PathLike, images: Iterable[str | os.PathLike]
) -> dict[int, np.ndarray]:
    """Read a folder of three class folders of 0/255 PNG masks as submission-style stacks.

    ``images`` names the cases (sorted here by integer value) and gives each its size: a case
    without a mask file gets zeros. Returns class index -> (N, H, W) uint8 in {0, 1}. Errors:
    images of different sizes, a mask without an image, a mask of the wrong size or values.
    """
    class_parent = Path(class_parent)
    images = sort_cases(images)
    if not images:
        raise DracInputError(f"no cases given for the masks in {class_parent}")
    sizes = {path: image_size(path) for path in images}
    first = images[0]
    for path, size in sizes.items():
        if size != sizes[first]:
            raise DracInputError(
                f"images differ in size, so their masks cannot form one stack: {first} is "
                f"{sizes[first]} (H, W) but {path} is {size}"
            )
    shape = sizes[first]
    ids = [case_id(p) for p in images]
    where = first.parent if len({p.parent for p in images}) == 1 else "the given images"
    stacks = {}
    for index, folder in class_folders(class_parent).items():
        files = _mask_files(folder, set(ids), where)
        stack = np.zeros((len(ids), *shape), np.uint8)
        for slot, cid in enumerate(ids):
            if cid in files:
                stack[slot] = read_mask_png(files[cid], expected_shape=shape)
        stacks[index] = stack
    return stacks
