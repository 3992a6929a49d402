"""Atomic file and folder writes: a reader never sees a half-written file under its final name."""

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from drac_algo.common.errors import DracInputError


class OutputWriteError(OSError):
    """Writing an output file failed (disk full, a read-only folder, a folder in the way): the
    message names the output's final path, never only the temporary beside it. Still an
    :class:`OSError` (same ``errno``), so callers that sort by type are unaffected."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.path = path
        detail = cause.strerror or str(cause)
        if cause.filename not in (None, str(path)) and ".partial" not in str(cause.filename):
            detail = str(cause)  # about another file: keep its name too
        self.message = f"cannot write {path}: {detail}"

    def __str__(self) -> str:
        return self.message


def _names_output(exc: OSError, tmp: Path | None) -> bool:
    """Whether ``exc`` is about writing the output (the temporary, its folder, the rename),
    not about some input read inside the block."""
    names = {None, str(tmp)} if tmp is not None else {None}
    return exc.filename in names or (tmp is not None and exc.filename == str(tmp.parent))


def _default_mode(mode: int) -> int:
    """``mode`` less the process umask: what ``open`` or ``mkdir`` would have created."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.png``) so that writers that pick
    a format from the extension still work. On error the temporary file is removed.
    """
    path = Path(path)
    suffix = "".join(path.suffixes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent
        )
    except OSError as exc:
        raise OutputWriteError(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; outputs are read by other users (a container's uid, the platform).
    os.chmod(tmp_path, _default_mode(0o666))
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        ours = isinstance(exc, OSError) and not isinstance(exc, OutputWriteError)
        if ours and _names_output(exc, tmp_path):
            raise OutputWriteError(path, exc) from exc
        raise


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, an output file path that cannot be written: an existing folder,
    or a folder (the nearest one that exists) where no file can be created, as probed by
    creating and removing one (this catches read-only mounts, and is right for root too).
    ``what`` names the option in the :class:`DracInputError`, e.g. "--json"."""
    path = Path(path)
    if path.is_dir():
        raise DracInputError(f"{what} {path}: is a folder; expected the name of a file to write")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DracInputError(f"{what} {path}: cannot write there: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise DracInputError(
            f"{what} {path}: cannot write in {folder}: {exc.strerror or exc}"
        ) from None
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an existing
    folder there is removed first); on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    # mkdtemp creates 0700; a bundle folder is mounted read-only into a container as another uid.
    os.chmod(tmp, _default_mode(0o777))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# What atomic_path / atomic_dir name their temporaries: ".<name>.<random>.partial<suffixes>".
_PARTIAL = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.partial(?P<suffix>(\.[^.]+)*)")


def remove_stale_partials_within(folder: str | os.PathLike) -> list[Path]:
    """Remove what interrupted :func:`atomic_path` / :func:`atomic_dir` calls left anywhere
    inside ``folder`` (a run that writes case by case into its final folders, killed mid-case);
    only names of exactly that form are touched. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    stale = []
    for path in folder.rglob(".*.partial*"):
        match = _PARTIAL.fullmatch(path.name)
        if match and match["suffix"] == "".join(Path(match["name"]).suffixes):
            stale.append(path)
    # A stale folder's stale contents (later in sorted order) go before the folder.
    return _remove(sorted(stale, reverse=True))[::-1]


def _remove(paths: list[Path]) -> list[Path]:
    """Delete each path (a folder with its contents, never through a link); returns them."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return paths


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted :func:`atomic_path` / :func:`atomic_dir` for ``path`` left
    beside it (``.<name>.*.partial*``: a killed process runs no cleanup); returns what was
    removed. Only for outputs one process writes at a time."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return _remove(sorted(path.parent.glob(f".{path.name}.*.partial*")))
