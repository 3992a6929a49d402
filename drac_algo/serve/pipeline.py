"""One whole run of the algorithm: find the inputs, load the model bundle once, predict every
image (the next one decoded in the background), write the outputs so that a failure never
leaves a complete-looking result.

Two modes, told apart by what the input folder holds (:func:`drac_algo.serve.modes.find_mode`;
each is an object the run asks, :class:`drac_algo.serve.modes.Mode`):

- **Grand Challenge job**: ``inputs.json`` present. One image (see :mod:`drac_algo.serve.gc_io` for
  how it is chosen); one ``images/<slug>/output.mha`` per class plus ``results.json``.
- **Batch folder**: anything else. Every ``.png``/``.mha``/``.tif``/``.tiff`` file (names are
  case numbers, e.g. the DRAC test set); the submission stacks ``1.nii.gz 2.nii.gz 3.nii.gz``,
  PNG masks, overlays and ``results.json`` (layout in :mod:`drac_algo.serve.outputs`), then
  ``report.html`` (:mod:`drac_algo.serve.report`, read back from those files).

Failure and atomicity (batch mode): ``masks/`` and ``overlays/`` are filled in hidden
temporary folders beside them and swapped in only after every image succeeded; then the
submission stacks are written, and ``results.json`` last, so its presence means the whole run
succeeded; the report page follows it, written from the files on disk (its images folder
first, the page last, each under a temporary name). A failed run leaves the output folder as it
was, apart from the previous run's ``results.json``, stacks and report page, which are removed
once a run gets that far (they would describe other masks). Every file is written under a
temporary name and renamed when complete.

The output folder (both modes): one run writes into it at a time (:func:`one_writer`, a lock
held for the whole run that dies with its process); a second run ends at once with exit status
2, having written nothing, not even its log. No run writes through a symbolic link inside the
folder (:func:`refuse_links`). A ``--continue`` run ends with exactly the files a plain run
with its settings writes, plus its records in ``cases/`` (:func:`drac_algo.serve.batch.converge`).
The one exception to one writer is by design: the shards of one sharded run hold the lock
shared, each writing only its own cases, and one assembler then holds it exclusively
(:mod:`drac_algo.serve.shards`).

A class that the bundle lacks is skipped with a warning: no files are written for it (an
all-zero mask would read as "no lesion found"), ``results.json`` lists it under
``classes`` with ``"status": "missing from the model bundle"``, and the submission stacks,
which need all three classes, are not written (the reason is logged and recorded).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.cli import run_log
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import FolderBusy, FolderLock, find_links
from drac_algo.common.procinfo import command_startup_s
from drac_algo.engine.devices import resolve_device
from drac_algo.engine.gpu import GpuStatus, check_gpu, gpu_status
from drac_algo.engine.predictor import Predictor
from drac_algo.serve.batch import BatchOptions
from drac_algo.serve.job_settings import JobSettings, resolve_job_settings
from drac_algo.serve.modes import Mode, find_mode
from drac_algo.serve.outputs import LOCK_FILE, PROCESS_LOG
from drac_algo.serve.results import RESULTS_FILE, results_document
from drac_algo.serve.run_state import RunConfig, RunState
from drac_algo.serve.shards import Progress, Shard, busy_message, shard_mode, shard_writer

__all__ = ["BatchOptions", "RunConfig", "run"]

log = logging.getLogger(__name__)

# How a process that runs this command starts (sys.argv[0]'s name): python process.py, python -m
# process (the container's entrypoint, torchrun's ranks) and the installed drac-process. Only
# there is the process's age at the run's start its cold start (results.json cold_start).
COMMANDS = ("process", "drac-process")


# --------------------------------------------------------------------------------------------
# Inputs, output folder, model


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` if needed and make sure a file can be written there."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test."):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DracInputError(f"output folder {output_dir} is not writable: {reason}") from None
    return output_dir


def one_writer(output_dir: Path) -> FolderLock:
    """The output folder's lock (:class:`drac_algo.common.fsutil.FolderLock` on
    :data:`LOCK_FILE`), taken, for a ``with`` block around the whole run; a run that finds it
    held ends at once, touching nothing. Two runs into one folder would otherwise each take the
    other's half-written folders for an interrupted run's and remove them, and both end "done"
    over a folder that holds neither's output."""
    lock = FolderLock(output_dir, LOCK_FILE)
    try:
        return lock.acquire(program="process.py")
    except FolderBusy as busy:
        raise DracInputError(busy_message(output_dir, busy.holder)) from None


def refuse_links(output_dir: Path, paths: list[str]) -> None:
    """Raise :class:`DracInputError` for the first symbolic link on the way to, or inside, any of
    ``paths`` (relative to ``output_dir``; see :func:`drac_algo.common.fsutil.find_links`).

    Refused, not replaced: a link in an output folder is either a mistake or someone's
    deliberate redirection (overlays onto a web server's folder, say), and the run cannot tell
    which; following it writes, and a plain run's replacement deletes, outside the folder the
    user named, and silently replacing it would undo what someone set up. Either way the
    user decides, once, with the link named. ``--output`` itself may be a link: the user named
    it."""
    links = find_links(output_dir, paths)
    if links:
        raise DracInputError(
            f"{links[0]} is a symbolic link (to {os.readlink(links[0])}): a run writes only "
            "inside its output folder and never through a link; remove the link or choose "
            "another --output"
        )


def load_predictor(
    config: RunConfig, classes: tuple[int, ...] | None
) -> tuple[Predictor, dict[str, Any], float]:
    """Build every network of the bundle once (of ``classes`` only, when given); returns the
    predictor, the bundle's description for ``results.json`` and the load time in seconds."""
    start = time.perf_counter()
    # from_bundle checks the manifest, the member files and their checksums.
    predictor = Predictor.from_bundle(
        config.bundle,
        device=config.device,
        precision=config.precision,
        tta=config.tta,
        max_views_per_batch=config.views_per_batch,
        classes=classes,
        backend=config.backend,
    )
    seconds = time.perf_counter() - start
    bundle = predictor.bundle  # parsed and checked once, by from_bundle
    info = {
        "path": str(config.bundle),
        "created": bundle.created,
        "drac_algo_version": bundle.drac_algo_version,
        "classes": sorted(bundle.classes),
        "id": bundle.manifest_sha256[:12],
    }
    return predictor, info, seconds


# --------------------------------------------------------------------------------------------
# The whole run


def _check_device(config: RunConfig, job: JobSettings) -> GpuStatus:
    """Probe the GPU once: a visible but unusable one is logged as an error (or, when the GPU
    is required, raises :class:`drac_algo.engine.gpu.GpuUnavailableError`)."""
    if job.require_gpu and config.device != "auto" and resolve_device(config.device).type != "cuda":
        raise DracInputError(
            f"the GPU is required ({job.sources['require_gpu']}) but --device {config.device} "
            "asks for the CPU; use --device auto or cuda"
        )
    status = check_gpu(job.require_gpu, gpu_status(), job.sources["require_gpu"])
    if status.usable:
        log.info(
            "GPU: %s (compute %s), driver %s, torch %s, CUDA %s, cuDNN %s",
            status.device_name,
            status.capability,
            status.driver,
            status.torch_version,
            status.cuda_runtime,
            status.cudnn,
        )
    elif not status.visible:
        log.info("no NVIDIA GPU visible: running on the CPU (torch %s)", status.torch_version)
    return status


def run(
    config: RunConfig,
    batch: BatchOptions | None = None,
    shard: Shard | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the whole job described by ``config`` (and, for a folder of images, ``batch``) and
    return what was written to ``results.json``. Raises :class:`DracInputError` for bad input
    (inputs, output folder, bundle, settings) and
    :class:`drac_algo.engine.gpu.GpuUnavailableError` when the GPU is required but unusable;
    nothing that looks complete is left behind on failure (see the module docstring).

    With ``shard``, only that shard's cases of a folder of images are run and written, and its
    summary instead of ``results.json`` (:mod:`drac_algo.serve.shards`; ``progress(to_run,
    ran)`` is told after each case); the stacks and ``results.json`` are
    :func:`drac_algo.serve.merge.merge`'s.
    """
    started = time.perf_counter()
    startup = command_startup_s(COMMANDS)
    job = resolve_job_settings(
        config.bundle, config.input_slug, config.output_specs, config.require_gpu
    )
    mode = find_mode(config, job, batch or BatchOptions())
    if shard is not None:
        mode = shard_mode(mode, shard, config.input_dir, progress)
    output_dir = check_output_dir(config.output_dir)
    refuse_links(output_dir, [LOCK_FILE])
    # Nothing is written (the log included) before the lock is ours, nor through a link after.
    writer = one_writer(output_dir) if shard is None else shard_writer(output_dir, shard)
    log_file = PROCESS_LOG if shard is None else shard.log_file
    with writer:
        refuse_links(output_dir, [log_file, RESULTS_FILE, *mode.written_paths()])
        with run_log(output_dir / log_file, "drac-process"):
            return _run_checked(config, job, mode, output_dir, started, startup)


def _run_checked(
    config: RunConfig,
    job: JobSettings,
    mode: Mode,
    output_dir: Path,
    started: float,
    startup: float | None,
) -> dict[str, Any]:
    mode.check_output(output_dir)
    log.info("mode: %s; %d image(s) from %s", mode.name, len(mode.images), config.input_dir)
    run_state = RunState(config, mode, job)
    run_state.cold_start["startup_s"] = None if startup is None else round(startup, 3)
    mode.prepare(run_state, output_dir)
    probe = time.perf_counter()
    gpu = _check_device(config, job)
    run_state.cold_start["gpu_probe_s"] = round(time.perf_counter() - probe, 4)
    mode.preload(run_state)

    predictor, bundle_info, load_seconds = load_predictor(config, mode.classes)
    run_state.cold_start.update(predictor.load_timings or {})
    ran = predictor.settings()
    mixed = ran["autocast"] != "fp32"
    log.info(
        "model bundle %s (id %s) loaded in %.1f s: classes %s on %s, %s, %d view(s) per batch, "
        "%s backend (%s)%s",
        config.bundle,
        bundle_info["id"],
        load_seconds,
        list(predictor.classes),
        predictor.device,
        f"{ran['autocast']} autocast (--precision fp32 for float32)" if mixed else "fp32",
        ran["max_views_per_batch"],
        ran["backend"],
        ran["backend_reason"],
        f", {ran['threads']} thread(s)" if ran["threads"] else "",
    )
    if gpu.visible and predictor.device.type != "cuda":
        run_state.warn(
            f"the NVIDIA GPU is visible but this run uses {predictor.device}: "
            f"{gpu.reason or 'the CPU was asked for'}"
        )
    for c in LESION_CLASSES:
        if c.index not in predictor.classes and (mode.classes is None or c.index in mode.classes):
            run_state.warn(
                f"model bundle {config.bundle} has no class {c.index} ({c.key}, {c.name}): "
                "no output is written for it"
            )

    mode_results = mode.write(run_state, predictor, bundle_info["id"])

    def document(extra: dict[str, Any]) -> dict[str, Any]:
        return results_document(
            run_state,
            predictor,
            gpu=gpu,
            bundle=bundle_info,
            load_seconds=load_seconds,
            mode_results={**mode_results, **extra},
            output_dir=output_dir,
            started=started,
        )

    results = mode.finish(run_state, output_dir, document)
    stages = results["diagnostics"]["stages"]
    cold = run_state.cold_start
    log.info(
        "done: %d image(s) in %.1f s (startup %s, model load %.1f s, decode %.1f s, inference "
        "%.1f s, write %.1f s; peak memory %.2f GiB); %s",
        results["timings"]["images"],
        results["timings"]["total_s"],
        "unknown" if cold["startup_s"] is None else f"{cold['startup_s']:.1f} s",
        load_seconds,
        stages["decode_s"],
        stages["inference_s"],
        stages["write_s"],
        results["diagnostics"]["peak_rss_bytes"] / 2**30,
        output_dir / mode.summary_file,
    )
    return results
