"""One whole run of the algorithm: find the inputs, load the model bundle once, predict every
image (the next one decoded in the background), write the outputs so that a failure never
leaves a complete-looking result.

Two modes, told apart by what the input folder holds:

- **Grand Challenge job**: ``inputs.json`` present. One image (see :mod:`drac_algo.gc_io` for
  how it is chosen); one ``images/<slug>/output.mha`` per class plus ``results.json``.
- **Batch folder**: anything else. Every ``.png``/``.mha``/``.tif``/``.tiff`` file (names are
  case numbers, e.g. the DRAC test set); the submission stacks ``1.nii.gz 2.nii.gz 3.nii.gz``,
  PNG masks, overlays and ``results.json`` (layout in :mod:`drac_algo.outputs`).

Failure and atomicity (batch mode): ``masks/`` and ``overlays/`` are filled in hidden
temporary folders beside them and swapped in only after every image succeeded; then the
submission stacks are written, and ``results.json`` last, so its presence means the whole run
succeeded. A failed run leaves the output folder as it was, apart from the previous run's
``results.json`` and stacks, which are removed once a run gets that far (they would describe
other masks). Every file is written under a temporary name and renamed when complete.

A class that the bundle lacks is skipped with a warning: no files are written for it (an
all-zero mask would read as "no lesion found"), ``results.json`` lists it under
``classes`` with ``"status": "missing from the model bundle"``, and the submission stacks,
which need all three classes, are not written (the reason is logged and recorded).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import drac_algo
from drac_algo.bundle import MANIFEST, bundle_from_dict
from drac_algo.classes import BY_INDEX, LESION_CLASSES
from drac_algo.cli import run_log
from drac_algo.data import case_id, describe_folder, list_images
from drac_algo.errors import DracInputError
from drac_algo.fsutil import atomic_dir, remove_stale_partials
from drac_algo.gc_io import find_job_image, is_grand_challenge_job, write_mask_mha
from drac_algo.gpu import GpuStatus, check_gpu, gpu_status
from drac_algo.images import IMAGE_SUFFIXES, LoadedImage, load_image
from drac_algo.inference import CasePrediction, Predictor, resolve_device
from drac_algo.job_settings import COMMAND_LINE, JobSettings, resolve_job_settings
from drac_algo.outputs import (
    MASKS_DIR,
    OVERLAYS_DIR,
    PROBABILITIES_DIR,
    PROCESS_LOG,
    RESULTS_FILE,
    RESULTS_FORMAT,
    RESULTS_VERSION,
    StackCollector,
    case_record,
    mask_png_path,
    write_mask_pngs,
    write_overlay_png,
    write_probabilities,
    write_results,
)
from drac_algo.progress import RunProgress
from drac_algo.provenance import environment
from drac_algo.resume import (
    CASES_DIR,
    fingerprint,
    read_case_masks,
    read_complete_case,
    remove_other_cases,
    write_case_record,
)
from drac_algo.submission import SUBMISSION_FILES, write_submission

log = logging.getLogger(__name__)

GRAND_CHALLENGE = "grand-challenge"
BATCH = "batch"
# Marks masks/ and overlays/ as written by this module, so that a later run may replace them.
_OWNED_MARKER = ".drac-algo-output"


@dataclass
class RunConfig:
    """A run's settings (the container's defaults: Grand Challenge paths, D4 TTA).

    ``batch_size``: at most this many TTA views per forward pass (None: the engine's default for
    the device, 8 on CUDA and 1 on the CPU). ``input_slug``, ``output_specs``
    (``CLASS=SLUG[:RELATIVE_PATH]``) and ``require_gpu`` are the command line's values (None /
    empty: not given), resolved with the environment and the model folder's ``platform.json`` by
    :func:`drac_algo.job_settings.resolve_job_settings`.
    """

    input_dir: Path = Path("/input")
    output_dir: Path = Path("/output")
    model_dir: Path = Path("/opt/ml/model")
    tta: str = "d4"
    device: str = "auto"
    batch_size: int | None = None
    precision: str = "auto"
    backend: str = "auto"
    input_slug: str | None = None
    output_specs: tuple[str, ...] = ()
    require_gpu: bool | None = None
    submission: bool = True  # batch mode: write the stacks 1.nii.gz 2.nii.gz 3.nii.gz
    classes: tuple[int, ...] | None = None  # batch mode: only these class indices (None: all)
    save_probabilities: bool = False  # batch mode: probabilities/<case>.npz
    resume: bool = False  # batch mode (--continue): keep complete cases, write case by case


@dataclass
class _Run:
    """What a run accumulates on its way to ``results.json``."""

    config: RunConfig
    mode: str
    job: JobSettings
    warnings: list[str] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to ``stages[stage]`` (thread-safe enough for one adder
        per stage)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Inputs, output folder, model


def find_inputs(config: RunConfig, job: JobSettings) -> tuple[str, list[Path], str | None]:
    """(mode, image files in processing order, image socket slug or None in batch mode)."""
    input_dir = Path(config.input_dir)
    if not input_dir.is_dir():
        raise DracInputError(f"input folder not found: {describe_folder(input_dir)}")
    if is_grand_challenge_job(input_dir):
        socket, image = find_job_image(input_dir, job.input_slug)
        return GRAND_CHALLENGE, [image], socket.slug
    if job.input_slug is not None and job.sources["input_socket"] == COMMAND_LINE:
        # From the environment or platform.json it describes the platform's jobs, not this.
        raise DracInputError(
            f"--input-slug {job.input_slug!r} given, but {input_dir} holds no inputs.json "
            "(batch mode has no sockets)"
        )
    images = list_images(input_dir)
    if not images:
        raise DracInputError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) and no inputs.json in the input folder: "
            f"{describe_folder(input_dir)}"
        )
    return BATCH, images, None


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


def load_predictor(config: RunConfig) -> tuple[Predictor, dict[str, Any], float]:
    """Build every network of the bundle once; returns the predictor, the bundle's description
    for ``results.json`` and the load time in seconds."""
    start = time.perf_counter()
    # from_bundle checks the manifest, the member files and their checksums.
    predictor = Predictor.from_bundle(
        config.model_dir,
        device=config.device,
        precision=config.precision,
        tta=config.tta,
        max_views_per_batch=config.batch_size,
        classes=config.classes,
        backend=config.backend,
    )
    seconds = time.perf_counter() - start
    raw = (Path(config.model_dir) / MANIFEST).read_bytes()
    manifest = bundle_from_dict(json.loads(raw.decode("utf-8")))
    info = {
        "path": str(config.model_dir),
        "created": manifest.created,
        "drac_algo_version": manifest.drac_algo_version,
        "classes": sorted(manifest.classes),
        # The manifest lists every member file's checksum: its hash names the exact weights.
        "id": hashlib.sha256(raw).hexdigest()[:12],
    }
    return predictor, info, seconds


# --------------------------------------------------------------------------------------------
# Per case


def _note_conversion(run: _Run, path: Path, loaded: LoadedImage) -> None:
    if loaded.converted:
        run.warn(f"{path}: {loaded.converted}")


def _log_case(position: str, name: str, record: dict[str, Any]) -> None:
    parts = [
        f"{BY_INDEX[int(i)].key} {c['area_px']} px in {c['components']} component(s)"
        for i, c in record["classes"].items()
    ]
    npi = record["non_perfusion_index"]
    if npi is not None:
        parts.append(f"non-perfusion index {npi:.4f}")
    log.info("%s %s: %.2f s; %s", position, name, record["seconds"], "; ".join(parts))


def _record(
    run: _Run, path: Path, name: str, loaded: LoadedImage, prediction: CasePrediction
) -> dict[str, Any]:
    run.warnings.extend(prediction.warnings)  # out-of-memory events, already logged
    cid = case_id(path) if run.mode == BATCH else None  # job files have uuid names
    record = case_record(
        name,
        path,
        loaded.pixels.shape,
        prediction.masks,
        case_id=cid,
        converted=loaded.converted,
        seconds=round(prediction.seconds, 4),
    )
    run.cases.append(record)
    return record


# --------------------------------------------------------------------------------------------
# The two modes


def _run_job(
    run: _Run, predictor: Predictor, image_path: Path, loaded: LoadedImage
) -> dict[str, Any]:
    config = run.config
    prediction = predictor.predict(loaded.pixels)
    record = _record(run, image_path, image_path.stem, loaded, prediction)
    _log_case("job", image_path.name, record)
    outputs = {}
    sockets = run.job.output_sockets
    with run.timed("write_s"):
        for index, mask in prediction.masks.items():
            path = sockets[index].mask_path(config.output_dir)
            write_mask_mha(path, mask, loaded)
            outputs[str(index)] = path.relative_to(config.output_dir).as_posix()
        for index in set(sockets) - set(prediction.masks):
            # A previous run's mask for a class this model lacks would read as this run's answer.
            sockets[index].mask_path(config.output_dir).unlink(missing_ok=True)
    return {"outputs": outputs}


def _check_replaceable(folder: Path) -> None:
    if folder.exists() and (
        not folder.is_dir() or (any(folder.iterdir()) and not (folder / _OWNED_MARKER).is_file())
    ):
        raise DracInputError(
            f"refusing to replace {folder}: it exists and was not written by this program "
            f"(no {_OWNED_MARKER} inside); move it away or choose another --output"
        )


def _retire_previous_summary(output_dir: Path) -> None:
    """Remove the previous run's results.json and stacks: from here on they would describe
    masks that are about to be replaced."""
    for name in (RESULTS_FILE, *SUBMISSION_FILES.values()):
        (output_dir / name).unlink(missing_ok=True)


def _write_stacks(run: _Run, collector: StackCollector) -> dict[str, Any]:
    """The submission stacks, or why not: ``cause`` is None (written), ``"not asked"``
    (``submission=False``), ``"classes"`` (the bundle lacks a class) or ``"sizes"`` (the images
    differ in size, so they cannot form one stack; :func:`run`'s caller treats it as an error)."""
    if not run.config.submission:
        return {"written": False, "files": [], "reason": "not asked for", "cause": "not asked"}
    if run.config.classes is not None and len(run.config.classes) < len(LESION_CLASSES):
        keys = ",".join(BY_INDEX[i].key for i in run.config.classes)
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
        run.warn(f"submission files {', '.join(SUBMISSION_FILES.values())} not written: {reason}")
        return {"written": False, "files": [], "reason": reason, "cause": cause}
    paths = write_submission(run.config.output_dir, collector.stacks())
    log.info("submission: %s", ", ".join(str(p) for p in paths))
    return {"written": True, "files": [p.name for p in paths], "reason": None, "cause": None}


def _remove_leftovers(run: _Run, output_dir: Path) -> None:
    """Remove the hidden ``.partial`` files and folders a killed earlier run left (SIGKILL, a
    lost container: no cleanup ran), before this run writes the same outputs."""
    names = [MASKS_DIR, OVERLAYS_DIR, PROBABILITIES_DIR, CASES_DIR, RESULTS_FILE]
    names += list(SUBMISSION_FILES.values())
    removed = [p.name for name in names for p in remove_stale_partials(output_dir / name)]
    if removed:
        run.warn(
            f"removed {len(removed)} half-written output(s) of an interrupted earlier run in "
            f"{output_dir}: {', '.join(removed[:6])}{' ...' if len(removed) > 6 else ''}"
        )


def _run_batch(run: _Run, predictor: Predictor, images: list[Path]) -> dict[str, Any]:
    output_dir = Path(run.config.output_dir)
    masks_dir, overlays_dir = output_dir / MASKS_DIR, output_dir / OVERLAYS_DIR
    collector = StackCollector(predictor.classes)
    with contextlib.ExitStack() as staged:
        masks_tmp = staged.enter_context(atomic_dir(masks_dir))
        overlays_tmp = staged.enter_context(atomic_dir(overlays_dir))
        staging = [masks_tmp, overlays_tmp]
        probabilities_tmp = None
        if run.config.save_probabilities:
            probabilities_tmp = staged.enter_context(atomic_dir(output_dir / PROBABILITIES_DIR))
            staging.append(probabilities_tmp)
        for tmp in staging:
            (tmp / _OWNED_MARKER).write_text("written by drac_algo.pipeline\n", encoding="utf-8")
        # closing(): a failure in this loop must also stop the background decoding.

        def load(path: Path) -> LoadedImage:
            with run.timed("decode_s"):  # in the prefetch thread, beside inference
                return load_image(path)

        predictions = staged.enter_context(
            contextlib.closing(predictor.predict_many(images, load=load))
        )
        progress = staged.enter_context(RunProgress(len(images), "case", "inference"))
        for number, (path, loaded, prediction) in enumerate(predictions, start=1):
            _note_conversion(run, path, loaded)
            name = path.name.split(".", 1)[0]
            record = _record(run, path, name, loaded, prediction)
            with run.timed("write_s"):
                write_mask_pngs(masks_tmp, name, prediction.masks)
                write_overlay_png(overlays_tmp, name, loaded.pixels, prediction.masks)
                if probabilities_tmp is not None:
                    write_probabilities(probabilities_tmp, name, prediction.probabilities)
            collector.add(name, prediction.masks)
            _log_case(f"{number}/{len(images)}", path.name, record)
            progress.advance()
        _retire_previous_summary(output_dir)
        # An earlier run's maps and --continue records (checked to be this program's) would
        # not match these masks.
        stale = [CASES_DIR] if probabilities_tmp else [CASES_DIR, PROBABILITIES_DIR]
        for folder in stale:
            shutil.rmtree(output_dir / folder, ignore_errors=True)
    with run.timed("write_s"):
        submission = _write_stacks(run, collector)
    examples = {
        str(i): mask_png_path(MASKS_DIR, i, "<case>").as_posix() for i in sorted(predictor.classes)
    }
    return {
        "outputs": examples,
        "overlays": f"{OVERLAYS_DIR}/<case>.png",
        "probabilities": f"{PROBABILITIES_DIR}/<case>.npz" if probabilities_tmp else None,
        "submission": submission,
    }


def _case_fingerprint(run: _Run, predictor: Predictor, bundle_id: str) -> str:
    """What decides a case's files: a --continue run keeps only cases made with the same."""
    ran = predictor.settings()
    return fingerprint(
        {
            "bundle_id": bundle_id,
            "tta": run.config.tta,
            "autocast": ran["autocast"],
            "backend": ran["backend"],
            "classes": sorted(predictor.classes),
            "save_probabilities": run.config.save_probabilities,
        }
    )


def _run_batch_continue(
    run: _Run, predictor: Predictor, images: list[Path], bundle_id: str
) -> dict[str, Any]:
    """``--continue``: each case written as it is done (files, then its record, see
    :mod:`drac_algo.resume`); complete cases of an earlier run with the same settings are read
    back instead of recomputed; the stacks and ``results.json`` are assembled at the end."""
    output_dir = Path(run.config.output_dir)
    folders = [MASKS_DIR, OVERLAYS_DIR, CASES_DIR]
    if run.config.save_probabilities:
        folders.append(PROBABILITIES_DIR)
    else:
        shutil.rmtree(output_dir / PROBABILITIES_DIR, ignore_errors=True)
    for folder in folders:
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
        (output_dir / folder / _OWNED_MARKER).write_text("written by drac_algo.pipeline\n")
    _retire_previous_summary(output_dir)  # results.json returns only once every case is done
    case_fp = _case_fingerprint(run, predictor, bundle_id)
    names = [path.name.split(".", 1)[0] for path in images]
    done: dict[str, dict[str, Any]] = {}
    for name in names:
        record, why = read_complete_case(output_dir, name, case_fp)
        if record is not None:
            done[name] = record
        elif why is not None:
            log.info("%s: recomputed, %s", name, why)
    removed = remove_other_cases(output_dir, set(names))
    if removed:
        log.info("--continue: removed %d case(s) not in this input: %s", len(removed), removed)
    to_run = [path for path, name in zip(images, names, strict=True) if name not in done]
    log.info("--continue: %d case(s) complete, %d to run", len(done), len(to_run))
    collector = StackCollector(predictor.classes)

    def load(path: Path) -> LoadedImage:
        with run.timed("decode_s"):
            return load_image(path)

    with contextlib.ExitStack() as stack:
        predictions = stack.enter_context(
            contextlib.closing(predictor.predict_many(to_run, load=load))
        )
        progress = stack.enter_context(RunProgress(len(to_run), "case", "inference"))
        for number, (path, name) in enumerate(zip(images, names, strict=True), start=1):
            if name in done:
                run.cases.append(done[name])
                masks = read_case_masks(output_dir / MASKS_DIR, name, predictor.classes)
                collector.add(name, masks)
                continue
            predicted_path, loaded, prediction = next(predictions)
            assert predicted_path == path, (predicted_path, path)  # same order as to_run
            _note_conversion(run, path, loaded)
            record = _record(run, path, name, loaded, prediction)
            with run.timed("write_s"):
                files = write_mask_pngs(output_dir / MASKS_DIR, name, prediction.masks)
                files.append(
                    write_overlay_png(
                        output_dir / OVERLAYS_DIR, name, loaded.pixels, prediction.masks
                    )
                )
                if run.config.save_probabilities:
                    folder = output_dir / PROBABILITIES_DIR
                    files.append(write_probabilities(folder, name, prediction.probabilities))
                write_case_record(output_dir, name, record, case_fp, files)
            collector.add(name, prediction.masks)
            _log_case(f"{number}/{len(images)}", path.name, record)
            progress.advance()
    with run.timed("write_s"):
        submission = _write_stacks(run, collector)
    examples = {
        str(i): mask_png_path(MASKS_DIR, i, "<case>").as_posix() for i in sorted(predictor.classes)
    }
    return {
        "outputs": examples,
        "overlays": f"{OVERLAYS_DIR}/<case>.png",
        "probabilities": (
            f"{PROBABILITIES_DIR}/<case>.npz" if run.config.save_probabilities else None
        ),
        "continued": {"complete_before": len(done), "run": len(to_run)},
        "submission": submission,
    }


# --------------------------------------------------------------------------------------------
# The whole run


def _class_table(
    predictor: Predictor, outputs: dict[str, str], requested: tuple[int, ...] | None
) -> dict[str, Any]:
    table = {}
    for c in LESION_CLASSES:
        present = c.index in predictor.classes
        if present:
            status = "written"
        elif requested is not None and c.index not in requested:
            status = "not requested (--classes)"
        else:
            status = "missing from the model bundle"
        table[str(c.index)] = {
            "key": c.key,
            "name": c.name,
            "status": status,
            "output": outputs.get(str(c.index)) if present else None,
        }
    return table


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


def _check_device(config: RunConfig, job: JobSettings) -> GpuStatus:
    """Probe the GPU once: a visible but unusable one is logged as an error (or, when the GPU
    is required, raises :class:`drac_algo.gpu.GpuUnavailableError`)."""
    if job.require_gpu and config.device != "auto" and resolve_device(config.device).type != "cuda":
        raise DracInputError(
            f"the GPU is required ({job.sources['require_gpu']}) but --device {config.device} "
            "asks for the CPU; use --device auto or cuda"
        )
    status = check_gpu(job.require_gpu, gpu_status())
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


def run(config: RunConfig) -> dict[str, Any]:
    """Run the whole job described by ``config`` and return what was written to
    ``results.json``. Raises :class:`DracInputError` for bad input (inputs, output folder,
    bundle, settings) and :class:`drac_algo.gpu.GpuUnavailableError` when the GPU is required
    but unusable; nothing that looks complete is left behind on failure (see the module
    docstring).
    """
    started = time.perf_counter()
    job = resolve_job_settings(
        config.model_dir, config.input_slug, config.output_specs, config.require_gpu
    )
    mode, images, slug = find_inputs(config, job)
    if mode == GRAND_CHALLENGE:
        batch_only = [
            flag
            for flag, given in (
                ("--classes", config.classes is not None),
                ("--save-probabilities", config.save_probabilities),
                ("--continue", config.resume),
            )
            if given
        ]
        if batch_only:
            raise DracInputError(
                f"{' and '.join(batch_only)}: for a folder of images only; {config.input_dir} "
                "holds a Grand Challenge job (inputs.json), which writes every class's socket"
            )
    output_dir = check_output_dir(config.output_dir)
    with run_log(output_dir / PROCESS_LOG, "drac-process"):
        return _run_checked(config, job, mode, images, slug, output_dir, started)


def _run_checked(
    config: RunConfig,
    job: JobSettings,
    mode: str,
    images: list[Path],
    slug: str | None,
    output_dir: Path,
    started: float,
) -> dict[str, Any]:
    if mode == BATCH:
        for folder in (MASKS_DIR, OVERLAYS_DIR, PROBABILITIES_DIR, CASES_DIR):
            _check_replaceable(output_dir / folder)
    log.info("mode: %s; %d image(s) from %s", mode, len(images), config.input_dir)
    run_state = _Run(config, mode, job)
    if mode == BATCH:
        _remove_leftovers(run_state, output_dir)
    if mode == GRAND_CHALLENGE:
        where = {i: job.sources[f"output_socket_{BY_INDEX[i].key}"] for i in job.output_sockets}
        sockets = ", ".join(
            f"{BY_INDEX[i].key} -> {s.relative_path}/ ({where[i]})"
            for i, s in sorted(job.output_sockets.items())
        )
        log.info("sockets: input %s; outputs %s", slug, sockets)
    gpu = _check_device(config, job)
    job_image = None
    if mode == GRAND_CHALLENGE:
        # One image: read it before the (slower) model load, so a bad file fails fast.
        with run_state.timed("decode_s"):
            job_image = load_image(images[0])
        _note_conversion(run_state, images[0], job_image)

    predictor, bundle_info, load_seconds = load_predictor(config)
    ran = predictor.settings()
    mixed = ran["autocast"] != "fp32"
    log.info(
        "model bundle %s (id %s) loaded in %.1f s: classes %s on %s, %s, %d view(s) per batch, "
        "%s backend (%s)%s",
        config.model_dir,
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
        if c.index not in predictor.classes and (
            config.classes is None or c.index in config.classes
        ):
            run_state.warn(
                f"model bundle {config.model_dir} has no class {c.index} ({c.key}, {c.name}): "
                "no output is written for it"
            )

    if job_image is not None:
        mode_results = _run_job(run_state, predictor, images[0], job_image)
    else:
        if config.resume:
            mode_results = _run_batch_continue(run_state, predictor, images, bundle_info["id"])
        else:
            mode_results = _run_batch(run_state, predictor, images)

    stats = predictor.stats()
    settings = predictor.settings()
    settings.update(
        bundle=bundle_info,
        requested_device=config.device,
        drac_algo_version=drac_algo.__version__,
        environment=environment(),
        requested_classes=None if config.classes is None else list(config.classes),
        job=job.to_json(),
    )
    if mode == GRAND_CHALLENGE:
        settings.update(
            input_slug=slug,
            output_slugs={str(i): s.slug for i, s in sorted(job.output_sockets.items())},
        )
    stages = {
        "model_load_s": round(load_seconds, 4),
        "decode_s": round(run_state.stages.get("decode_s", 0.0), 4),
        "inference_s": round(stats["seconds_total"], 4),
        "write_s": round(run_state.stages.get("write_s", 0.0), 4),
    }
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "mode": mode,
        "input": str(config.input_dir),
        "output": str(output_dir),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "diagnostics": {
            "gpu": gpu.to_json(),
            "device": str(predictor.device),
            "autocast": settings["autocast"],
            "backend": settings["backend"],
            "threads": settings["threads"],
            "views_per_batch": settings["max_views_per_batch"],
            "bundle_id": bundle_info["id"],
            "stages": stages,
        },
        "timings": {
            "total_s": round(time.perf_counter() - started, 4),
            "model_load_s": round(load_seconds, 4),
            "images": stats["images"],
            "per_image_mean_s": _rounded(stats["seconds_mean"]),
            "per_image_max_s": _rounded(stats["seconds_max"]),
        },
        "engine": stats,
        "classes": _class_table(predictor, mode_results.pop("outputs"), config.classes),
        **mode_results,
        "cases": run_state.cases,
        "warnings": run_state.warnings,
    }
    path = write_results(output_dir / RESULTS_FILE, results)
    log.info(
        "done: %d image(s) in %.1f s (model load %.1f s, decode %.1f s, inference %.1f s, "
        "write %.1f s); %s",
        stats["images"],
        results["timings"]["total_s"],
        load_seconds,
        stages["decode_s"],
        stages["inference_s"],
        stages["write_s"],
        path,
    )
    return results
