"""One shard of a batch run: ``process.py --shard K/N`` (a scheduler's job array) or one rank of
``torchrun --nproc_per_node=N -m process`` (rank r is shard r+1 of N).

Which shard writes a case (:func:`assign`) depends only on the input folder's images and N:
the images, heaviest first (pixels, from the file headers; ties in case order), each go to the
shard with the least pixels so far (the lowest K on a tie). Every shard, rank or merge computes
the same table from the same folder, so each case has exactly one writer.

A shard writes its cases as ``--continue`` does (:mod:`drac_algo.serve.resume`: each case's files,
then its record ``cases/<case>.json``; complete cases of an earlier run with the same settings
are kept), never touches another shard's cases, and ends with its summary
``shards/K-of-N.json`` (its ``results.json`` document, its settings fingerprint) and its log
``shards/K-of-N.log``. The stacks and ``results.json`` are written once, by whoever assembles
(:mod:`drac_algo.serve.merge`) with the output folder to itself.

Locks (:class:`drac_algo.common.fsutil.FolderLock`, see :func:`shard_writer`): a shard holds
``OUT/.drac-process.lock`` shared, so any number of shards of the same N write side by side while
a plain run or a merge, which take it exclusive, are refused (and refuse them); and
``OUT/.drac-shard-K-of-N.lock`` exclusive, so two copies of one shard are refused. Shards of
another N (whose tables differ) are refused while the first N's shards hold the folder.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import (
    FolderBusy,
    FolderLock,
    atomic_write_text,
    create_dir_holding,
    find_links,
)
from drac_algo.data.images import image_size
from drac_algo.data.release import case_id
from drac_algo.engine.predictor import Predictor
from drac_algo.serve.batch import (
    FOLDERS,
    OWNED_MARKER,
    SHARDS_DIR,
    BatchFolder,
    BatchOptions,
    CaseFolders,
    batch_results,
    case_fingerprint,
    case_name,
    check_replaceable,
    retire_previous_summary,
    write_cases,
)
from drac_algo.serve.outputs import LOCK_FILE, MASKS_DIR, OVERLAYS_DIR, PROBABILITIES_DIR
from drac_algo.serve.resume import CASES_DIR, read_complete_case, write_case_record
from drac_algo.serve.run_state import RunState

log = logging.getLogger("drac_algo.serve.pipeline")

SHARD_FORMAT = "drac-algo-shard"
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1 to ``count``) of a run split ``count`` ways; ``launcher`` is
    ``"--shard"`` or ``"torchrun"`` (for the messages and ``results.json``)."""

    index: int
    count: int
    launcher: str = "--shard"

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def stem(self) -> str:
        return f"{self.index}-of-{self.count}"

    @property
    def lock_name(self) -> str:
        return f".drac-shard-{self.stem}.lock"

    @property
    def summary(self) -> str:
        return f"{SHARDS_DIR}/{self.stem}.json"

    @property
    def log_file(self) -> str:
        return f"{SHARDS_DIR}/{self.stem}.log"

    def describe(self) -> str:
        """How the user started it, for messages: ``--shard 2/3`` or ``torchrun rank 1 of 3``."""
        if self.launcher == "torchrun":
            return f"torchrun rank {self.index - 1} of {self.count}"
        return f"--shard {self.label}"


def parse_shard(value: str) -> Shard:
    """``--shard K/N`` -> :class:`Shard`: whole numbers with 1 <= K <= N (K counts from 1, as
    Slurm's ``--array=1-N`` does). Raises :class:`DracInputError` otherwise."""
    match = _SPEC.fullmatch(value)
    found = f"found {value!r}"
    if not match:
        raise DracInputError(f"--shard: expected K/N (shard K of N, e.g. 2/3), {found}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise DracInputError(
            f"--shard: expected K/N with 1 <= K <= N (shard K of N, K counted from 1), {found}"
        )
    return Shard(index, count)


def assign(images: list[Path], count: int, weights: list[int] | None = None) -> list[int]:
    """The shard (1 to ``count``) of each image, in the order of ``images``: heaviest first
    (``weights``, default each image's pixels from its header; ties in input order), each to the
    shard with the least weight so far (the lowest on a tie). Deterministic: the same images
    give the same table in every process."""
    if weights is None:
        weights = [h * w for h, w in (image_size(path) for path in images)]
    loads = [0] * count
    table = [0] * len(images)
    for i in sorted(range(len(images)), key=lambda i: (-weights[i], i)):
        k = min(range(count), key=lambda k: (loads[k], k))
        loads[k] += weights[i]
        table[i] = k + 1
    return table


def share(images: list[Path], shard: Shard) -> list[Path]:
    """The images of ``shard``, in input order."""
    table = assign(images, shard.count)
    return [path for path, k in zip(images, table, strict=True) if k == shard.index]


def busy_message(output_dir: Path, holder: dict[str, Any]) -> str:
    """Who holds the output folder, for the refusal of a run that cannot have it."""
    pid, started = holder.get("pid", "unknown"), holder.get("started", "unknown")
    if "shards" in holder:
        return (
            f"a run split into {holder['shards']} shards (first pid {pid}, started {started}) is "
            f"writing into {output_dir}"
        )
    return f"another process.py run (pid {pid}, started {started}) is writing into {output_dir}"


@contextlib.contextmanager
def shard_writer(output_dir: Path, shard: Shard) -> Iterator[None]:
    """Hold the output folder for ``shard`` (the module docstring's two locks), check that its
    folders are this program's, and create ``shards/``; refused runs write nothing."""
    refuse = [p for p in find_links(output_dir, [LOCK_FILE, shard.lock_name, SHARDS_DIR])]
    if refuse:
        raise DracInputError(
            f"{refuse[0]} is a symbolic link: a run writes only inside its output folder and "
            "never through a link; remove the link or choose another --output"
        )
    main = FolderLock(output_dir, LOCK_FILE)
    try:
        main.acquire(shared=True, program="process.py", shards=shard.count)
    except FolderBusy as busy:
        raise DracInputError(busy_message(output_dir, busy.holder)) from None
    try:
        if main.holder.get("shards") != shard.count:
            raise DracInputError(
                f"{busy_message(output_dir, main.holder)}; {shard.describe()} splits the cases "
                f"{shard.count} ways, so it would write some of theirs: use the same N, or wait "
                "until they finish"
            )
        mine = FolderLock(output_dir, shard.lock_name)
        try:
            mine.acquire(program="process.py", shard=shard.label)
        except FolderBusy as busy:
            holder = busy.holder
            raise DracInputError(
                f"shard {shard.label} is already running into {output_dir} (pid "
                f"{holder.get('pid', 'unknown')}, started {holder.get('started', 'unknown')}): "
                "one writer per case; wait for it, or stop it and run this again"
            ) from None
        try:
            for folder in FOLDERS:
                check_replaceable(output_dir / folder)
            mark_owned(output_dir / SHARDS_DIR)
            # An earlier run split another way: no shard of it can be running now.
            for stale in (output_dir / SHARDS_DIR).glob("*-of-*.*"):
                if not stale.name.split(".")[0].endswith(f"-of-{shard.count}"):
                    stale.unlink(missing_ok=True)
            yield
        finally:
            mine.release()
    finally:
        main.release()


def mark_owned(folder: Path) -> None:
    """Create ``folder`` with this program's marker in it; shards do so side by side.

    Another shard may be checking the folder (:func:`check_replaceable`) at any moment, so it
    never sees the folder holding something and no marker: the folder is created with its marker
    in one step. A folder already there (checked replaceable: empty, or an earlier run's of this
    program) gets the marker if it lacks one."""
    marker = "written by drac_algo.serve.pipeline\n"
    if (folder / OWNED_MARKER).is_file() or create_dir_holding(folder, {OWNED_MARKER: marker}):
        return
    if not (folder / OWNED_MARKER).is_file():
        atomic_write_text(folder / OWNED_MARKER, marker)


class _NoStacks:
    """A shard builds no stacks: the assembler reads every case's masks back."""

    def add(self, name: str, masks: dict) -> None:
        pass


# What a rank reports after each case (to_run, ran), for a whole run's progress on rank 0.
Progress = Callable[[int, int], None]


class ShardRun:
    """One shard of a batch run (a :class:`drac_algo.serve.modes.Mode`): owns its share of the
    batch folder's images and, under the output folder, only its cases' files and records and
    its summary :attr:`summary_file`. ``results.json``'s ``mode`` stays ``"batch"``."""

    name = "batch"

    def __init__(
        self, batch: BatchFolder, shard: Shard, input_dir: Path, progress: Progress | None = None
    ) -> None:
        self.all_images = batch.images
        self.images = share(batch.images, shard)
        self.options = batch.options
        self.classes = batch.options.classes
        self.shard = shard
        self.input_dir = input_dir
        self.summary_file = shard.summary
        self.progress = progress
        self.started = time.time()
        self.fingerprint: str | None = None
        self.predicted: tuple[int, ...] = ()

    def written_paths(self) -> list[str]:
        return [*FOLDERS, self.shard.lock_name]

    def check_output(self, output_dir: Path) -> None:
        """Done by :func:`shard_writer`, before the log is opened."""

    def prepare(self, run: RunState, output_dir: Path) -> None:
        """Only the share is logged: another shard's leftovers are not this one's to remove."""
        log.info(
            "%s: %d of the %d images (assigned by image size; the other shards write the rest)",
            self.shard.describe(),
            len(self.images),
            len(self.all_images),
        )

    def preload(self, run: RunState) -> None:
        """Nothing: the images are decoded in the background, beside inference."""

    def case_id(self, path: Path) -> str | None:
        return case_id(path)

    def settings(self) -> dict[str, Any]:
        return {"shard": self.shard.label}

    def write(self, run: RunState, predictor: Predictor, bundle_id: str) -> dict[str, Any]:
        """Write this shard's cases as ``--continue`` does, keeping complete ones."""
        output_dir = Path(run.config.output_dir)
        folders = [MASKS_DIR, OVERLAYS_DIR, CASES_DIR]
        if self.options.save_probabilities:
            folders.append(PROBABILITIES_DIR)
        for folder in folders:
            mark_owned(output_dir / folder)
        retire_previous_summary(output_dir)  # they would describe masks about to be replaced
        self.fingerprint = case_fingerprint(run, predictor, bundle_id, self.options)
        self.predicted = predictor.classes
        done: dict[str, dict[str, Any]] = {}
        for path in self.images:
            name = case_name(path)
            record, why = read_complete_case(output_dir, name, self.fingerprint, path)
            if record is not None:
                done[name] = record
            elif (output_dir / CASES_DIR / f"{name}.json").exists():
                log.info("%s: recomputed, %s", name, why)
        to_run = len(self.images) - len(done)
        log.info("%s: %d case(s) complete, %d to run", self.shard.label, len(done), to_run)
        self._write_summary(output_dir, "running", None)
        ran = 0
        if self.progress:
            self.progress(to_run, ran)

        def record(name: str, entry: dict[str, Any], files: list[Path], source: dict) -> None:
            nonlocal ran
            write_case_record(output_dir, name, entry, self.fingerprint, files, source)
            ran += 1
            if self.progress:
                self.progress(to_run, ran)

        probabilities = output_dir / PROBABILITIES_DIR if self.options.save_probabilities else None
        where = CaseFolders(
            output_dir / MASKS_DIR,
            output_dir / OVERLAYS_DIR,
            probabilities,
            done,
            record,
            show_progress=self.shard.launcher != "torchrun",  # rank 0 shows the whole run's
        )
        write_cases(run, predictor, self.images, where, _NoStacks())  # type: ignore[arg-type]
        extra = {"continued": {"complete_before": len(done), "run": to_run}}
        return batch_results(predictor.classes, self.options, extra)

    def finish(
        self, run: RunState, output_dir: Path, document: Callable[[dict], dict]
    ) -> dict[str, Any]:
        """The shard's summary, last: the merge reads its document and settings from it."""
        results = document({})
        self._write_summary(output_dir, "done", results)
        return results

    def _write_summary(self, output_dir: Path, state: str, document: dict | None) -> None:
        options = self.options
        summary = {
            "format": SHARD_FORMAT,
            "shard": self.shard.index,
            "of": self.shard.count,
            "launcher": self.shard.launcher,
            "state": state,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "updated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "input": str(Path(self.input_dir).resolve()),
            "fingerprint": self.fingerprint,
            "classes": list(self.predicted),
            "options": {
                "classes": None if options.classes is None else list(options.classes),
                "save_probabilities": options.save_probabilities,
                "no_submission": options.no_submission,
                "no_report": options.no_report,
            },
            "cases": [case_name(path) for path in self.images],
            "document": document,
        }
        atomic_write_text(output_dir / self.summary_file, json.dumps(summary, indent=1) + "\n")


def options_of(summary: dict[str, Any]) -> BatchOptions:
    """The batch options a shard ran with, from its summary."""
    opts = summary["options"]
    classes = opts.get("classes")
    return BatchOptions(
        classes=None if classes is None else tuple(classes),
        save_probabilities=bool(opts.get("save_probabilities")),
        resume=True,
        no_submission=bool(opts.get("no_submission")),
        no_report=bool(opts.get("no_report")),
    )


def shard_mode(mode: Any, shard: Shard, input_dir: Path, progress: Progress | None) -> ShardRun:
    """``mode`` (what :func:`drac_algo.serve.modes.find_mode` found) as ``shard``'s run; a Grand
    Challenge job is refused: one image, one process, and the platform's own output folder."""
    if not isinstance(mode, BatchFolder):
        raise DracInputError(
            f"{shard.describe()}: {input_dir} holds a Grand Challenge job (inputs.json), which is "
            "one image run in one process; run it without --shard or torchrun"
        )
    return ShardRun(mode, shard, input_dir, progress)
