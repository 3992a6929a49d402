"""The end of every batch run, in one place (:func:`assemble`): the challenge submission stacks
from every case's masks, then ``results.json`` last, so that its presence means the whole run
finished. A single process calls it once its cases are done
(:meth:`drac_algo.serve.batch.BatchFolder.finish`); a sharded run calls it once, from the one
assembler that holds the output folder exclusively after every shard's records are complete
(:mod:`drac_algo.serve.merge`). Whatever is written at the end of a batch run (a report) goes
here, after ``results.json``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drac_algo.common.classes import BY_INDEX, LESION_CLASSES
from drac_algo.data.submission import SUBMISSION_FILES, write_submission
from drac_algo.serve.outputs import StackCollector
from drac_algo.serve.report import REPORT_DIR, REPORT_FILE, write_report
from drac_algo.serve.results import RESULTS_FILE, write_results

log = logging.getLogger("drac_algo.serve.pipeline")


def write_stacks(
    output_dir: Path,
    collector: StackCollector,
    options: Any,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """The submission stacks, or why not: ``cause`` is None (written), ``"not asked"``
    (``--no-submission``, or ``--classes`` short of all three), ``"classes"`` (the bundle lacks
    a class) or ``"sizes"`` (the images differ in size, so they cannot form one stack; the
    command treats it as an error). ``options`` is the run's
    :class:`drac_algo.serve.batch.BatchOptions`."""
    if options.no_submission:
        return {"written": False, "files": [], "reason": "not asked for", "cause": "not asked"}
    if options.classes is not None and len(options.classes) < len(LESION_CLASSES):
        keys = ",".join(BY_INDEX[i].key for i in options.classes)
        reason = f"--classes {keys}: the submission needs all three classes"
        return {"written": False, "files": [], "reason": reason, "cause": "not asked"}
    missing = [c for c in LESION_CLASSES if c.index not in collector.classes]
    cause, reason = None, None
    if missing:
        cause = "classes"
        reason = "the model bundle lacks " + ", ".join(
            f"class {c.index} ({c.key})" for c in missing
        )
    elif problem := collector.size_problem():
        cause, reason = "sizes", problem
    if reason:
        warn(f"submission files {', '.join(SUBMISSION_FILES.values())} not written: {reason}")
        return {"written": False, "files": [], "reason": reason, "cause": cause}
    paths = write_submission(output_dir, collector.stacks())
    log.info("submission: %s", ", ".join(str(p) for p in paths))
    return {"written": True, "files": [p.name for p in paths], "reason": None, "cause": None}


def assemble(
    output_dir: Path,
    collector: StackCollector,
    options: Any,
    document: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    warn: Callable[[str], None],
    timed: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Any]:
    """Write the submission stacks of ``collector`` (every case, in integer-sorted order) into
    ``output_dir``, then ``results.json``: ``document(extra)`` builds it, ``extra`` holding
    ``submission`` (what :func:`write_stacks` returned). ``warn`` records a warning in the
    document to come; ``timed()`` times the writing. Returns the document written."""
    with timed():
        submission = write_stacks(output_dir, collector, options, warn)
    results = document({"submission": submission})
    write_results(output_dir / RESULTS_FILE, results)
    # From the files on disk, once they are all there; with --no-report an earlier run's page
    # and its folder go (a merge, unlike a run, has not retired the page before).
    if options.no_report:
        (output_dir / REPORT_FILE).unlink(missing_ok=True)
        shutil.rmtree(output_dir / REPORT_DIR, ignore_errors=True)
    else:
        try:
            write_report(output_dir)
        except BaseException:
            # The page is not there (write_report is atomic): results.json must not name it.
            # The run still fails with the report's error; the masks and results stand.
            results["report"] = None
            write_results(output_dir / RESULTS_FILE, results)
            raise
    return results
