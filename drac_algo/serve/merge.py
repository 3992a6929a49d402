"""Assembling a sharded run (:mod:`drac_algo.serve.shards`) exactly once: ``process.py --merge
OUT``, rank 0 of ``torchrun ... -m process`` once every rank is done, or the last
``--shard K/N`` to finish.

:func:`merge` takes the output folder's lock exclusive (refused, or skipped, while any shard
holds it), reads the shards' summaries (``shards/K-of-N.json``: the same N, settings
fingerprint, options and input folder for all), lists the input folder again and recomputes
the assignment, and checks every case's record against its input and files as ``--continue``
does. Anything missing is named per shard, and nothing is written. Otherwise it removes what
killed shards left half-written, prunes the folders to what a single run writes
(:func:`drac_algo.serve.batch.converge`), and calls :func:`drac_algo.serve.assemble.assemble`:
the stacks from every case's masks read back in case order, then ``results.json`` (the shards'
documents merged, with ``shards`` describing each). The masks and stacks equal a single run's
byte for byte: the same engine writes the same files, and the stacks are built from them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from drac_algo.common.cli import run_log
from drac_algo.common.datafiles import read_json
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import (
    FolderBusy,
    FolderLock,
    find_links,
    remove_stale_partials,
    remove_stale_partials_within,
)
from drac_algo.data.release import describe_folder, list_images
from drac_algo.data.submission import SUBMISSION_FILES
from drac_algo.serve.assemble import assemble
from drac_algo.serve.batch import FOLDERS, SHARDS_DIR, case_name, converge
from drac_algo.serve.outputs import (
    LOCK_FILE,
    MASKS_DIR,
    PROBABILITIES_DIR,
    PROCESS_LOG,
    StackCollector,
)
from drac_algo.serve.results import RESULTS_FILE
from drac_algo.serve.resume import read_case_masks, read_complete_case
from drac_algo.serve.shards import SHARD_FORMAT, assign, busy_message, options_of

log = logging.getLogger("drac_algo.serve.pipeline")

_SHOWN = 8  # cases named per shard in a refusal


def read_summaries(output_dir: Path) -> dict[int, dict[str, Any]]:
    """Shard index -> its summary (``shards/K-of-N.json``), for every readable one."""
    found = {}
    for path in sorted((output_dir / SHARDS_DIR).glob("*-of-*.json")):
        try:
            data = read_json(path, "shard summary")
        except DracInputError as exc:
            log.warning("%s", exc)
            continue
        if data.get("format") == SHARD_FORMAT and isinstance(data.get("shard"), int):
            found[data["shard"]] = data
    return found


def _agreed(summaries: dict[int, dict[str, Any]], key: str, what: str) -> Any:
    values: dict[str, list[int]] = {}
    for k, s in sorted(summaries.items()):
        values.setdefault(repr(s.get(key)), []).append(k)
    if len(values) > 1:
        groups = "; ".join(f"shards {ks} {v}" for v, ks in values.items())
        raise DracInputError(
            f"the shards' summaries disagree on {what} ({groups}): run the shards again with "
            "one set of options (the same command but for K)"
        )
    return next(iter(summaries.values())).get(key)


def merge(
    output_dir: Path,
    input_dir: Path | None = None,
    *,
    quiet: bool = False,
    no_report: bool = False,
) -> dict[str, Any] | None:
    """Assemble a sharded run in ``output_dir`` (see the module docstring); ``input_dir``
    overrides the input folder the shards recorded; ``no_report`` leaves the report page out
    (as it is when the shards ran with ``--no-report``). Returns the ``results.json`` written.
    Raises :class:`DracInputError` naming what is missing, or, with ``quiet`` (the last shard
    trying its luck), logs it and returns None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise DracInputError(f"--merge: output folder not found: {describe_folder(output_dir)}")
    names = [LOCK_FILE, PROCESS_LOG, RESULTS_FILE, *FOLDERS, *SUBMISSION_FILES.values()]
    if links := find_links(output_dir, names):
        raise DracInputError(
            f"{links[0]} is a symbolic link: a run writes only inside its output folder and "
            "never through a link; remove the link"
        )
    lock = FolderLock(output_dir, LOCK_FILE)
    try:
        lock.acquire(program="process.py --merge")
    except FolderBusy as busy:
        if quiet:
            log.info("not assembling yet: %s (the last to finish assembles)", busy.holder)
            return None
        raise DracInputError(
            f"cannot merge yet: {busy_message(output_dir, busy.holder)}; merge once they end"
        ) from None
    with lock, run_log(output_dir / PROCESS_LOG, "drac-process"):
        return _merge_locked(output_dir, input_dir, quiet, no_report)


def _merge_locked(
    output_dir: Path, input_dir: Path | None, quiet: bool, no_report: bool
) -> dict[str, Any] | None:
    started = time.perf_counter()
    summaries = read_summaries(output_dir)
    if not summaries:
        raise DracInputError(
            f"no shard summaries ({SHARDS_DIR}/K-of-N.json) in {output_dir}: nothing to merge; "
            "expected the output folder of process.py --shard K/N or torchrun runs"
        )
    count = _agreed(summaries, "of", "the number of shards")
    done = {k: s for k, s in summaries.items() if s.get("state") == "done"}
    if not done:
        done = summaries  # nothing finished: every case is reported missing below
    fingerprint = _agreed(done, "fingerprint", "the settings (bundle, TTA, precision, backend)")
    _agreed(done, "options", "--classes, --save-probabilities, --no-submission or --no-report")
    if input_dir is None:  # given: nodes may mount the same folder at other paths
        input_dir = Path(_agreed(done, "input", "the input folder (pass --input)"))
    first = done[min(done)]
    options = options_of(first)
    if no_report:
        options = dataclasses.replace(options, no_report=True)
    classes = tuple(first["classes"])
    if not input_dir.is_dir():
        raise DracInputError(
            f"the shards' input folder is not found: {describe_folder(input_dir)}; pass --input "
            "with the folder the shards read"
        )
    images = list_images(input_dir)
    table = assign(images, count)
    records: dict[str, dict[str, Any]] = {}
    missing: dict[int, list[str]] = {}
    for path, k in zip(images, table, strict=True):
        name = case_name(path)
        record = None
        if k in done and fingerprint is not None:
            record, _ = read_complete_case(output_dir, name, fingerprint, path)
        if record is None:
            missing.setdefault(k, []).append(name)
        else:
            records[name] = record
    if missing:
        message = _missing_message(output_dir, count, summaries, missing, len(images))
        if quiet:
            log.info("not assembling yet: %s", message)
            return None
        raise DracInputError(message)

    warnings: list[str] = []

    def warn(message: str) -> None:
        log.warning(message)
        warnings.append(message)

    _remove_leftovers(output_dir, warn)
    names = [case_name(path) for path in images]
    converge(output_dir, names, classes)
    if not options.save_probabilities:
        shutil.rmtree(output_dir / PROBABILITIES_DIR, ignore_errors=True)
    collector = StackCollector(classes)
    for name in names:
        collector.add(name, read_case_masks(output_dir / MASKS_DIR, name, classes))

    def document(extra: dict[str, Any]) -> dict[str, Any]:
        cases = [records[name] for name in names]
        merged = merged_document(done, cases, warnings, input_dir, output_dir, extra)
        if options.no_report:
            merged["report"] = None
        return merged

    results = assemble(output_dir, collector, options, document, warn=warn)
    log.info(
        "merged %d shard(s): %d case(s) in %.1f s; %s",
        count,
        len(names),
        time.perf_counter() - started,
        output_dir / RESULTS_FILE,
    )
    return results


def _missing_message(
    output_dir: Path,
    count: int,
    summaries: dict[int, dict[str, Any]],
    missing: dict[int, list[str]],
    total: int,
) -> str:
    lines = []
    for k, names in sorted(missing.items()):
        summary = summaries.get(k)
        if summary is None:
            why = f"no {SHARDS_DIR}/{k}-of-{count}.json: never ran, or was stopped before its end"
        elif summary.get("state") != "done":
            why = "did not finish (killed, or failed)"
        else:
            why = "its records are missing, unreadable or changed"
        more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
        shown = ", ".join(names[:_SHOWN]) + more
        lines.append(f"  shard {k}/{count} ({why}): {shown}")
    n = sum(len(v) for v in missing.values())
    return (
        f"cannot merge {output_dir}: {n} of {total} case(s) are not complete:\n"
        + "\n".join(lines)
        + "\n  run those shards again (the same command; complete cases are kept), then "
        f"process.py --merge {output_dir}"
    )


def _remove_leftovers(output_dir: Path, warn: Any) -> None:
    """What killed shards left: temporaries in and beside the folders, their shard locks (no
    shard runs while the folder's lock is exclusively ours)."""
    names = [*FOLDERS, RESULTS_FILE, *SUBMISSION_FILES.values()]
    removed = [p.name for name in names for p in remove_stale_partials(output_dir / name)]
    for name in FOLDERS:
        removed += [p.name for p in remove_stale_partials_within(output_dir / name)]
    for stale in sorted(output_dir.glob(".drac-shard-*.lock")):
        stale.unlink(missing_ok=True)
    if removed:
        warn(
            f"removed {len(removed)} half-written output(s) of interrupted shards in "
            f"{output_dir}: {', '.join(removed[:6])}{' ...' if len(removed) > 6 else ''}"
        )


def _sum(values: list[Any]) -> float:
    return float(sum(v for v in values if v is not None))


def merged_document(
    summaries: dict[int, dict[str, Any]],
    cases: list[dict[str, Any]],
    warnings: list[str],
    input_dir: Path,
    output_dir: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``results.json`` of a sharded run: the first shard's document (settings, classes) with
    every case in case order, the shards' warnings (each prefixed with its shard), timings and
    engine counters summed over the shards, ``diagnostics.device`` listing every device, and
    ``shards``: per shard its host, device, cases and time."""
    order = sorted(summaries)
    docs = [summaries[k]["document"] for k in order]
    count = summaries[order[0]]["of"]
    base = copy.deepcopy(docs[0])
    engines = [d["engine"] for d in docs]
    images = int(_sum([e["images"] for e in engines]))
    seconds = _sum([e["seconds_total"] for e in engines])
    maxima = [e["seconds_max"] for e in engines if e["seconds_max"] is not None]
    engine = {
        **base["engine"],
        "images": images,
        "seconds_total": seconds,
        "seconds_mean": seconds / images if images else None,
        "seconds_max": max(maxima) if maxima else None,
        **{key: int(_sum([e[key] for e in engines])) for key in ("oom_retries", "cpu_fallbacks")},
        "fp32_reruns": int(_sum([e["fp32_reruns"] for e in engines])),
    }
    stages = base["diagnostics"]["stages"]
    for key in stages:
        stages[key] = round(_sum([d["diagnostics"]["stages"][key] for d in docs]), 4)
    # Each shard is its own process: the largest peak; each shard's cold start stays in its
    # summary (shards/K-of-N.json), none of them is the run's.
    peaks = [d["diagnostics"].get("peak_rss_bytes") for d in docs]
    base["diagnostics"]["peak_rss_bytes"] = max((p for p in peaks if p is not None), default=None)
    base["diagnostics"].pop("cold_start", None)
    devices = list(dict.fromkeys(d["diagnostics"]["device"] for d in docs))
    base["diagnostics"]["device"] = ", ".join(devices)
    elapsed = time.time() - min(summaries[k]["started"] for k in order)
    shards = [
        {
            "shard": f"{k}/{count}",
            "launcher": summaries[k]["launcher"],
            "host": summaries[k]["host"],
            "pid": summaries[k]["pid"],
            "device": d["diagnostics"]["device"],
            "cases": len(summaries[k]["cases"]),
            "run": d["continued"]["run"],
            "kept": d["continued"]["complete_before"],
            "total_s": d["timings"]["total_s"],
        }
        for k, d in zip(order, docs, strict=True)
    ]
    base.update(
        input=str(input_dir),
        output=str(output_dir),
        finished=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        timings={
            "total_s": round(max(0.0, elapsed), 4),
            "model_load_s": max(d["timings"]["model_load_s"] for d in docs),
            "images": images,
            "per_image_mean_s": None if not images else round(seconds / images, 4),
            "per_image_max_s": None if not maxima else round(max(maxima), 4),
        },
        engine=engine,
        continued={
            "complete_before": sum(s["kept"] for s in shards),
            "run": sum(s["run"] for s in shards),
        },
    )
    shard_warnings = [
        f"shard {k}/{count}: {w}" for k, d in zip(order, docs, strict=True) for w in d["warnings"]
    ]
    tail = {"shards": shards, **extra, "cases": cases, "warnings": shard_warnings + warnings}
    for key in tail:
        base.pop(key, None)
    return {**base, **tail}
