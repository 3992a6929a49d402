"""Atomic file and folder writes: a reader never sees a half-written file under its final name.
Also what keeps a writer inside its folder: one writer at a time (:class:`FolderLock`), no
writes through links (:func:`find_links`), and a folder pruned to what it should hold
(:func:`remove_all_but`)."""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def create_dir_holding(path: str | os.PathLike, files: dict[str, str]) -> bool:
    """Create the folder ``path`` holding ``files`` (name -> text) in one step, for writers that
    run side by side: it is built beside and renamed into place, so nobody ever sees it holding
    only part of ``files``. An empty folder there is replaced. Returns False, and changes
    nothing, when ``path`` already holds something (another writer got there first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        os.chmod(tmp, _default_mode(0o777))
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        try:
            os.rename(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not path.is_dir():
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# What atomic_path / atomic_dir / create_dir_holding name their temporaries:
# ".<name>.<random>.partial<suffixes>".
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
    """Remove what an interrupted :func:`atomic_path`, :func:`atomic_dir` or
    :func:`create_dir_holding` for ``path`` left beside it (``.<name>.*.partial*``: a killed
    process runs no cleanup); returns what was removed. Only for outputs one process writes at
    a time."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return _remove(sorted(path.parent.glob(f".{path.name}.*.partial*")))


def find_links(root: str | os.PathLike, names: list[str]) -> list[Path]:
    """The symbolic links a writer of ``root/<name>`` (``names``: paths relative to ``root``)
    would go through: a link at any step of the way from ``root`` to it, or anywhere inside it
    when it is a folder. Links are reported, never followed; sorted, each once."""
    root = Path(root)
    found: set[Path] = set()
    for name in names:
        path = root
        for part in Path(name).parts:
            path = path / part
            if path.is_symlink():
                found.add(path)
                break
            if not path.exists():
                break
        else:
            if path.is_dir():
                for folder, dirs, files in os.walk(path):  # never into a linked folder
                    found.update(
                        p for p in (Path(folder) / n for n in dirs + files) if p.is_symlink()
                    )
    return sorted(found)


def remove_all_but(folder: str | os.PathLike, keep: set[Path]) -> list[Path]:
    """Remove every file (and link) below ``folder`` that is not in ``keep``, then the folders
    left empty (not ``folder`` itself); never follows a link. Returns what was removed, files
    first. For a folder written file by file that must end holding exactly ``keep``."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    removed = []
    for parent, dirs, files in os.walk(folder, topdown=False):
        base = Path(parent)
        for entry in sorted(files) + sorted(d for d in dirs if (base / d).is_symlink()):
            if base / entry not in keep:
                (base / entry).unlink()
                removed.append(base / entry)
        if base != folder and not any(base.iterdir()):
            base.rmdir()
            removed.append(base)
    return removed


class FolderBusy(Exception):
    """:meth:`FolderLock.acquire` found the lock held; ``holder`` is what the holder wrote in
    the lock file (``pid``, ``started``, ...; empty when it could not be read)."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.path = path
        self.holder = holder


class FolderLock:
    """One writer per folder: an advisory ``flock(2)`` on the lock file ``folder/name``, taken by
    :meth:`acquire` (or ``with``), which never waits, and held until :meth:`release`.

    - The kernel drops a flock when its process ends, however it ends (``kill -9``, a lost
      container): there is no stale lock to detect or break. A lock file left behind is only a
      file; the next taker locks it.
    - The file says who holds it: JSON with ``pid``, ``started`` (ISO 8601 with the offset) and
      whatever :meth:`acquire` is given, for the message of a refused taker (:class:`FolderBusy`).
    - :meth:`release` removes the file when it is the last holder, so a finished run leaves
      nothing. A taker that opened the file just before it was removed holds a lock on a file
      no longer in the folder: :meth:`acquire` checks that the file it locked is the one at the
      path, and retries otherwise.
    - The lock file is opened without following a link (a link there is an ``OSError``).
    - Advisory: it excludes only programs that take it. flock works on local file systems and on
      NFS (Linux maps it onto NFS byte-range locks).

    - Shared (``acquire(shared=True)``, ``fcntl.LOCK_SH``): for a sharded run, several
      processes writing one folder's per-case records, then one assembler. The shards hold it
      shared, the assembler and every plain run exclusive, so a plain run still excludes every
      shard and the other way round. The file is written only under the exclusive lock: the
      first shared taker, finding it free, writes its ``info`` (and ``"shared": true``) and then
      downgrades; a later shared taker reads what the first wrote into :attr:`holder` (what the
      holders share, e.g. how many shards there are) and leaves the file as it is. Shared
      takers starting together (torchrun's ranks) wait out each other's exclusive moment
      (:meth:`_join_shared`) instead of refusing each other.
    """

    RETRIES = 5
    SHARED_WAIT = 5.0  # seconds a shared taker waits out another shared taker's exclusive moment

    def __init__(self, folder: str | os.PathLike, name: str) -> None:
        self.path = Path(folder) / name
        self.holder: dict[str, Any] = {}
        self._fd: int | None = None

    def acquire(self, shared: bool = False, **info: Any) -> "FolderLock":
        """Take the lock (exclusive, or ``shared`` with other shared holders) and, when no one
        else holds it, write ``pid``, ``started`` and ``info`` into the file; :attr:`holder` is
        then what the file says. Raises :class:`FolderBusy` when another open file holds it in a
        mode that excludes this one (another process, or another ``FolderLock`` in this one)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(self.RETRIES):
            fd = os.open(self.path, flags, 0o666)
            try:
                alone = self._lock(fd, fcntl.LOCK_EX, quiet=shared)
                if not alone:  # shared, and others hold it
                    self._join_shared(fd)
            except BaseException:
                os.close(fd)
                raise
            if self._is_at_path(fd):
                break
            os.close(fd)  # removed by its last holder between our open and flock: anew
        else:
            raise OSError(f"could not lock {self.path}: the file keeps being replaced")
        if alone:
            self.holder = {
                "pid": os.getpid(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                **({"shared": True} if shared else {}),
                **info,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self.holder) + "\n").encode("utf-8"), 0)
            if shared:
                try:
                    # A downgrade is no atomic step: a taker may slip in (and be excluded by,
                    # or exclude, this one); what the file says afterwards is what counts.
                    self._lock(fd, fcntl.LOCK_SH)
                except BaseException:
                    os.close(fd)
                    raise
        if shared:
            self.holder = _read_holder(fd)
        self._fd = fd
        return self

    def _lock(self, fd: int, mode: int, quiet: bool = False) -> bool:
        """flock ``fd`` in ``mode`` without waiting: True when taken; when held elsewhere,
        False if ``quiet``, else :class:`FolderBusy` with what the file says."""
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if quiet:
                return False
            raise FolderBusy(self.path, _read_holder(fd)) from None
        return True

    def _join_shared(self, fd: int) -> None:
        """flock ``fd`` shared, beside the holders already there. A shared holder is exclusive
        for a moment (while the first writes the file, and while the last removes it), so a
        refusal by a holder whose file says ``shared`` is tried again for up to
        :attr:`SHARED_WAIT` seconds; an exclusive holder (or a silent file) refuses at once."""
        deadline = time.monotonic() + self.SHARED_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holder = _read_holder(fd)
                if not holder.get("shared") or time.monotonic() > deadline:
                    raise FolderBusy(self.path, holder) from None
                time.sleep(0.02)

    def _is_at_path(self, fd: int) -> bool:
        try:
            here = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        """Give the lock back; the file goes too when no one else holds it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Exclusive only when no other (shared) holder is left: then the file may go.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self._is_at_path(fd):
                self.path.unlink()
        except BlockingIOError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    """The lock file's JSON; the holder writes it just after taking the lock, so an empty file
    is read again for up to a second."""
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        try:
            holder = json.loads(text)
        except ValueError:
            time.sleep(0.05)
            continue
        return holder if isinstance(holder, dict) else {}
    return {}
