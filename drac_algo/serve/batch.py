"""The batch mode (:class:`BatchFolder`, its own settings :class:`BatchOptions`): a folder of
images -> ``masks/``, ``overlays/``, optionally ``probabilities/``, the submission stacks (layout
in :mod:`drac_algo.serve.outputs`) and, after ``results.json``, ``report.html`` with its
``report/`` folder (:mod:`drac_algo.serve.report`).

One per-case loop (:func:`write_cases`) serves both writers, which differ only in where the
files go and what happens around a case (:class:`CaseFolders`). A plain run fills hidden
temporary folders and swaps them in only after every image succeeded (see
:mod:`drac_algo.serve.pipeline`); a ``--continue`` run writes case by case into the final
folders and records each case last (:mod:`drac_algo.serve.resume`), so that a rerun keeps what
is complete, and ends with the files a plain run writes (:func:`converge`): resumed equals fresh.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drac_algo.common.fsutil import (
    atomic_dir,
    remove_all_but,
    remove_stale_partials,
    remove_stale_partials_within,
)
from drac_algo.common.progress import RunProgress
from drac_algo.data.images import LoadedImage, load_image
from drac_algo.data.release import case_id
from drac_algo.data.submission import SUBMISSION_FILES
from drac_algo.engine.predictor import Predictor
from drac_algo.serve.assemble import assemble
from drac_algo.serve.outputs import (
    MASKS_DIR,
    OVERLAYS_DIR,
    OWNED_MARKER,
    PROBABILITIES_DIR,
    StackCollector,
    check_replaceable,
    mask_png_path,
    write_mask_pngs,
    write_overlay_png,
    write_probabilities,
)
from drac_algo.serve.report import REPORT_DIR, REPORT_FILE
from drac_algo.serve.results import RESULTS_FILE
from drac_algo.serve.resume import (
    CASES_DIR,
    fingerprint,
    input_identity,
    read_case_masks,
    read_complete_case,
    record_path,
    write_case_record,
)
from drac_algo.serve.run_state import RunState, log_case, note_conversion, record_case

log = logging.getLogger("drac_algo.serve.pipeline")

# The folders a batch run writes into (and replaces, when they are this program's); shards/
# holds a sharded run's summaries (drac_algo.serve.shards), which a single run removes.
SHARDS_DIR = "shards"
FOLDERS = (MASKS_DIR, OVERLAYS_DIR, PROBABILITIES_DIR, CASES_DIR, REPORT_DIR, SHARDS_DIR)


@dataclass(frozen=True)
class BatchOptions:
    """The settings only a folder of images takes, named as their flags: ``classes``
    (``--classes``: only these class indices; None: every class in the bundle),
    ``save_probabilities``, ``resume`` (``--continue``: keep complete cases, write case by case),
    ``no_submission`` and ``no_report`` (no ``report.html``)."""

    classes: tuple[int, ...] | None = None
    save_probabilities: bool = False
    resume: bool = False
    no_submission: bool = False
    no_report: bool = False

    def folder_only_flags(self) -> list[str]:
        """The flags given that a Grand Challenge job refuses (it ignores ``--no-submission`` and
        ``--no-report``: it writes neither)."""
        flags = (
            ("--classes", self.classes is not None),
            ("--save-probabilities", self.save_probabilities),
            ("--continue", self.resume),
        )
        return [flag for flag, given in flags if given]


def case_name(path: Path) -> str:
    """A case's name in the output files: the image's name without its suffixes."""
    return path.name.split(".", 1)[0]


def batch_results(
    classes: tuple[int, ...], options: BatchOptions, extra: dict[str, Any]
) -> dict[str, Any]:
    """What a batch run adds to ``results.json`` besides the cases: an example output path per
    class, the overlay and probability paths, ``extra`` (``continued``); ``submission`` comes
    last, from :func:`drac_algo.serve.assemble.assemble`."""
    examples = {str(i): mask_png_path(MASKS_DIR, i, "<case>").as_posix() for i in sorted(classes)}
    probabilities = options.save_probabilities
    return {
        "outputs": examples,
        "overlays": f"{OVERLAYS_DIR}/<case>.png",
        "probabilities": f"{PROBABILITIES_DIR}/<case>.npz" if probabilities else None,
        "report": None if options.no_report else REPORT_FILE,
        **extra,
    }


def retire_previous_summary(output_dir: Path) -> None:
    """Remove the previous run's results.json, stacks and report page: from here on they would
    describe masks that are about to be replaced."""
    for name in (RESULTS_FILE, REPORT_FILE, *SUBMISSION_FILES.values()):
        (output_dir / name).unlink(missing_ok=True)


def remove_leftovers(run: RunState, output_dir: Path) -> None:
    """Remove the hidden ``.partial`` files and folders a killed earlier run left (SIGKILL, a
    lost container: no cleanup ran), before this run writes the same outputs."""
    names = [*FOLDERS, RESULTS_FILE, REPORT_FILE, *SUBMISSION_FILES.values()]
    removed = [p.name for name in names for p in remove_stale_partials(output_dir / name)]
    # --continue writes case by case into the final folders: a kill mid-case leaves its
    # temporaries inside them.
    for name in FOLDERS:
        removed += [p.name for p in remove_stale_partials_within(output_dir / name)]
    for lock in output_dir.glob(".drac-shard-*.lock"):  # a killed shard's (none runs now)
        lock.unlink()
    if removed:
        run.warn(
            f"removed {len(removed)} half-written output(s) of an interrupted earlier run in "
            f"{output_dir}: {', '.join(removed[:6])}{' ...' if len(removed) > 6 else ''}"
        )


class BatchFolder:
    """The batch mode (:class:`drac_algo.serve.modes.Mode`): owns the folder's images (in
    processing order), the :class:`BatchOptions`, and everything it writes under the output
    folder: :data:`FOLDERS`, the submission stacks and, after ``results.json``, the report page
    (:meth:`finish`). ``results.json``'s ``mode`` is ``"batch"``."""

    name = "batch"
    summary_file = RESULTS_FILE

    def __init__(self, images: list[Path], options: BatchOptions) -> None:
        self.images = images
        self.options = options
        self.classes = options.classes

    def written_paths(self) -> list[str]:
        return [*FOLDERS, REPORT_FILE, *SUBMISSION_FILES.values()]

    def check_output(self, output_dir: Path) -> None:
        for folder in FOLDERS:
            check_replaceable(output_dir / folder)

    def prepare(self, run: RunState, output_dir: Path) -> None:
        remove_leftovers(run, output_dir)

    def preload(self, run: RunState) -> None:
        """Nothing: the images are decoded in the background, beside inference."""

    def case_id(self, path: Path) -> str | None:
        return case_id(path)

    def settings(self) -> dict[str, Any]:
        return {}

    def write(self, run: RunState, predictor: Predictor, bundle_id: str) -> dict[str, Any]:
        """Predict and write every case; returns what ``results.json`` adds (the stacks come
        in :meth:`finish`)."""
        self.collector = StackCollector(predictor.classes)
        extra = {}
        if self.options.resume:
            extra["continued"] = self._write_continue(run, predictor, bundle_id, self.collector)
        else:
            self._write_staged(run, predictor, self.collector)
        return batch_results(predictor.classes, self.options, extra)

    def finish(
        self, run: RunState, output_dir: Path, document: Callable[[dict], dict]
    ) -> dict[str, Any]:
        """The stacks, then ``results.json``, then the report page
        (:func:`drac_algo.serve.assemble.assemble`)."""
        return assemble(
            output_dir,
            self.collector,
            self.options,
            document,
            warn=run.warn,
            timed=lambda: run.timed("write_s"),
        )

    def _write_staged(self, run: RunState, predictor: Predictor, collector: StackCollector) -> None:
        """A plain run: every case into hidden temporary folders, swapped in at the end."""
        output_dir = Path(run.config.output_dir)
        with contextlib.ExitStack() as staged:
            masks_tmp = staged.enter_context(atomic_dir(output_dir / MASKS_DIR))
            overlays_tmp = staged.enter_context(atomic_dir(output_dir / OVERLAYS_DIR))
            staging = [masks_tmp, overlays_tmp]
            probabilities_tmp = None
            if self.options.save_probabilities:
                probabilities_tmp = staged.enter_context(atomic_dir(output_dir / PROBABILITIES_DIR))
                staging.append(probabilities_tmp)
            for tmp in staging:
                (tmp / OWNED_MARKER).write_text(
                    "written by drac_algo.serve.pipeline\n", encoding="utf-8"
                )
            folders = CaseFolders(masks_tmp, overlays_tmp, probabilities_tmp)
            write_cases(run, predictor, self.images, folders, collector)
            retire_previous_summary(output_dir)
            # An earlier run's maps and --continue records (checked to be this program's) would
            # not match these masks.
            stale = [CASES_DIR, SHARDS_DIR]
            stale += [] if probabilities_tmp else [PROBABILITIES_DIR]
            for folder in stale:
                shutil.rmtree(output_dir / folder, ignore_errors=True)

    def _write_continue(
        self, run: RunState, predictor: Predictor, bundle_id: str, collector: StackCollector
    ) -> dict[str, int]:
        """``--continue``: each case written as it is done (files, then its record, see
        :mod:`drac_algo.serve.resume`); complete cases of an earlier run with the same settings
        are read back instead of recomputed."""
        output_dir = Path(run.config.output_dir)
        folders = [MASKS_DIR, OVERLAYS_DIR, CASES_DIR]
        if self.options.save_probabilities:
            folders.append(PROBABILITIES_DIR)
        else:
            shutil.rmtree(output_dir / PROBABILITIES_DIR, ignore_errors=True)
        # A sharded run's summaries: this run assembles its own results.json.
        shutil.rmtree(output_dir / SHARDS_DIR, ignore_errors=True)
        cases = output_dir / CASES_DIR
        had_records = cases.is_dir() and any(cases.glob("*.json"))
        for folder in folders:
            (output_dir / folder).mkdir(parents=True, exist_ok=True)
            (output_dir / folder / OWNED_MARKER).write_text("written by drac_algo.serve.pipeline\n")
        retire_previous_summary(output_dir)  # results.json returns only once every case is done
        case_fp = case_fingerprint(run, predictor, bundle_id, self.options)
        names = [case_name(path) for path in self.images]
        done: dict[str, dict[str, Any]] = {}
        for path, name in zip(self.images, names, strict=True):
            record, why = read_complete_case(output_dir, name, case_fp, path)
            if record is not None:
                done[name] = record
            elif had_records:
                log.info("%s: recomputed, %s", name, why)
        if not had_records:
            log.info("--continue: no case records in %s yet: every case runs", cases)
        converge(output_dir, names, predictor.classes)
        to_run = sum(name not in done for name in names)
        log.info("--continue: %d case(s) complete, %d to run", len(done), to_run)

        def record(name: str, entry: dict[str, Any], files: list[Path], source: dict) -> None:
            write_case_record(output_dir, name, entry, case_fp, files, source)

        probabilities = output_dir / PROBABILITIES_DIR if self.options.save_probabilities else None
        where = CaseFolders(
            output_dir / MASKS_DIR, output_dir / OVERLAYS_DIR, probabilities, done, record
        )
        write_cases(run, predictor, self.images, where, collector)
        return {"complete_before": len(done), "run": to_run}


@dataclass
class CaseFolders:
    """Where :func:`write_cases` puts each case's files (``masks``, ``overlays`` and, when
    saved, ``probabilities``), which cases it keeps instead of computing (``kept``: name ->
    its ``results.json`` entry, read back from an earlier ``--continue`` run) and, for
    ``--continue``, ``record(name, entry, files, source)``, called after a case's files are
    written (``source``: its input's identity, taken before decoding); ``show_progress``: the
    progress bar or lines of these cases (off where another process shows a whole run's)."""

    masks: Path
    overlays: Path
    probabilities: Path | None = None
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    record: Callable[[str, dict[str, Any], list[Path], dict[str, Any]], None] | None = None
    show_progress: bool = True


def write_cases(
    run: RunState,
    predictor: Predictor,
    images: list[Path],
    folders: CaseFolders,
    collector: StackCollector,
) -> None:
    """The per-case loop of both writers: each case of ``images``, in order, either kept (its
    entry and masks read back) or predicted (the next one decoded in the background), recorded
    in ``run``, written to ``folders``, added to ``collector`` and logged."""
    names = [case_name(path) for path in images]
    to_run = [path for path, name in zip(images, names, strict=True) if name not in folders.kept]
    sources: dict[Path, dict[str, Any]] = {}

    def load(path: Path) -> LoadedImage:
        with run.timed("decode_s"):  # in the prefetch thread, beside inference
            if folders.record is not None:
                # Before decoding: should the file change in between, its record names the old
                # bytes, and the next run recomputes the case rather than trust it.
                sources[path] = input_identity(path)
            return load_image(path)

    with contextlib.ExitStack() as stack:
        # closing(): a failure in this loop must also stop the background decoding.
        predictions = stack.enter_context(
            contextlib.closing(predictor.predict_many(to_run, load=load))
        )
        progress = stack.enter_context(
            RunProgress(len(to_run), "case", "inference", enabled=folders.show_progress)
        )
        for number, (path, name) in enumerate(zip(images, names, strict=True), start=1):
            if name in folders.kept:
                run.cases.append(folders.kept[name])
                collector.add(name, read_case_masks(folders.masks, name, predictor.classes))
                continue
            predicted_path, loaded, prediction = next(predictions)
            assert predicted_path == path, (predicted_path, path)  # same order as to_run
            note_conversion(run, path, loaded)
            record = record_case(run, path, name, loaded, prediction)
            with run.timed("write_s"):
                files = write_mask_pngs(folders.masks, name, prediction.masks)
                files.append(
                    write_overlay_png(folders.overlays, name, loaded.pixels, prediction.masks)
                )
                if folders.probabilities is not None:
                    files.append(
                        write_probabilities(folders.probabilities, name, prediction.probabilities)
                    )
                if folders.record is not None:
                    source = {**sources.pop(path), "shape": list(loaded.pixels.shape[:2])}
                    folders.record(name, record, files, source)
            collector.add(name, prediction.masks)
            log_case(f"{number}/{len(images)}", path.name, record)
            progress.advance()


def case_fingerprint(
    run: RunState, predictor: Predictor, bundle_id: str, options: BatchOptions
) -> str:
    """What decides a case's files: a --continue run keeps only cases made with the same."""
    ran = predictor.settings()
    return fingerprint(
        {
            "bundle_id": bundle_id,
            "tta": run.config.tta,
            "autocast": ran["autocast"],
            "backend": ran["backend"],
            "classes": sorted(predictor.classes),
            "save_probabilities": options.save_probabilities,
        }
    )


def converge(output_dir: Path, names: list[str], classes: tuple[int, ...]) -> None:
    """Prune the folders a ``--continue`` run writes case by case to what a plain run with these
    settings writes there (and the records of these cases): the files of cases no longer in the
    input, of classes not requested, and anything else a plain run's fresh folders would not
    hold, go. The log says what went."""
    expected = {output_dir / folder / OWNED_MARKER for folder in (MASKS_DIR, OVERLAYS_DIR)}
    expected |= {
        output_dir / CASES_DIR / OWNED_MARKER,
        output_dir / PROBABILITIES_DIR / OWNED_MARKER,
    }
    for name in names:
        expected |= {mask_png_path(output_dir / MASKS_DIR, i, name) for i in classes}
        expected.add(output_dir / OVERLAYS_DIR / f"{name}.png")
        expected.add(output_dir / PROBABILITIES_DIR / f"{name}.npz")
        expected.add(record_path(output_dir, name))
    removed = []
    for folder in (MASKS_DIR, OVERLAYS_DIR, PROBABILITIES_DIR, CASES_DIR):
        removed += remove_all_but(output_dir / folder, expected)
    gone = sorted(p.stem for p in removed if p.parent == output_dir / CASES_DIR)
    if gone:
        log.info("--continue: removed %d case(s) not in this input: %s", len(gone), gone)
    others = [
        p.relative_to(output_dir).as_posix() for p in removed if p.parent != output_dir / CASES_DIR
    ]
    if others:
        log.info(
            "--continue: removed %d file(s) a plain run with these settings would not write: %s",
            len(others),
            ", ".join(others[:6]) + (" ..." if len(others) > 6 else ""),
        )
