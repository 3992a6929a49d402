"""The two modes of a run as objects: what :func:`drac_algo.serve.pipeline.run` asks of a mode
(:class:`Mode`), the Grand Challenge job (:class:`GrandChallengeJob`), and which of the two an
input folder holds (:func:`find_mode`). The batch folder is
:class:`drac_algo.serve.batch.BatchFolder`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.errors import DracInputError
from drac_algo.data.images import IMAGE_SUFFIXES, LoadedImage, load_image
from drac_algo.data.release import describe_folder, list_images
from drac_algo.engine.predictor import Predictor
from drac_algo.serve.batch import BatchFolder, BatchOptions
from drac_algo.serve.gc_io import find_job_image, is_grand_challenge_job, write_mask_mha
from drac_algo.serve.job_settings import COMMAND_LINE, JobSettings
from drac_algo.serve.results import RESULTS_FILE, write_results
from drac_algo.serve.run_state import RunConfig, RunState, log_case, note_conversion, record_case

log = logging.getLogger("drac_algo.serve.pipeline")


class Mode(Protocol):
    """What a run asks of its mode, in the order it asks. ``name`` is ``results.json``'s
    ``mode``; ``images`` the input files in processing order; ``classes`` the requested class
    indices (None: every class in the bundle)."""

    name: str
    images: list[Path]
    classes: tuple[int, ...] | None
    summary_file: str  # what finish() writes last, relative to the output folder

    def written_paths(self) -> list[str]:
        """What the mode writes under the output folder (relative paths: files, and folders it
        writes into), besides ``process.log`` and ``results.json``."""
        ...

    def check_output(self, output_dir: Path) -> None:
        """Refuse (:class:`DracInputError`) what is there and may not be replaced, before the run
        writes anything but its log."""
        ...

    def prepare(self, run: RunState, output_dir: Path) -> None:
        """Once the log is open: clear an interrupted run's leftovers, log the sockets."""
        ...

    def preload(self, run: RunState) -> None:
        """Before the (slower) model load: read what should fail fast."""
        ...

    def case_id(self, path: Path) -> str | None:
        """The case id of an input file in ``results.json`` (None: the file names carry none)."""
        ...

    def write(self, run: RunState, predictor: Predictor, bundle_id: str) -> dict[str, Any]:
        """Predict and write every case; returns ``outputs`` (class index -> output path) and
        the keys the mode adds to ``results.json``."""
        ...

    def settings(self) -> dict[str, Any]:
        """What the mode adds to ``results.json``'s ``settings``."""
        ...

    def finish(
        self, run: RunState, output_dir: Path, document: Callable[[dict], dict]
    ) -> dict[str, Any]:
        """The run's last writes, ``results.json`` last: ``document(extra)`` is the whole
        document, with ``extra`` (what the mode adds at the end) among its keys. Returns it."""
        ...


class GrandChallengeJob:
    """A Grand Challenge job (:class:`Mode`): owns its one image (chosen by
    :func:`drac_algo.serve.gc_io.find_job_image`), the input socket's slug, the job's output
    sockets (:class:`drac_algo.serve.job_settings.JobSettings`) and the one
    ``<socket relative path>/output.mha`` per class it writes. ``results.json``'s ``mode`` is
    ``"grand-challenge"``."""

    name = "grand-challenge"
    classes = None  # a job writes every class's socket
    summary_file = RESULTS_FILE

    def __init__(self, image: Path, input_slug: str, job: JobSettings) -> None:
        self.images = [image]
        self.input_slug = input_slug
        self.job = job
        self._loaded: LoadedImage | None = None

    def written_paths(self) -> list[str]:
        return [s.mask_path(".").as_posix() for _, s in sorted(self.job.output_sockets.items())]

    def check_output(self, output_dir: Path) -> None:
        """Nothing: each mask file is replaced atomically."""

    def prepare(self, run: RunState, output_dir: Path) -> None:
        job = self.job
        where = {i: job.sources[f"output_socket_{BY_INDEX[i].key}"] for i in job.output_sockets}
        sockets = ", ".join(
            f"{BY_INDEX[i].key} -> {s.relative_path}/ ({where[i]})"
            for i, s in sorted(job.output_sockets.items())
        )
        log.info("sockets: input %s; outputs %s", self.input_slug, sockets)

    def preload(self, run: RunState) -> None:
        """One image: read it before the model load, so a bad file fails fast."""
        with run.timed("decode_s"):
            self._loaded = load_image(self.images[0])
        note_conversion(run, self.images[0], self._loaded)

    def case_id(self, path: Path) -> str | None:
        return None  # job files have uuid names

    def settings(self) -> dict[str, Any]:
        return {
            "input_slug": self.input_slug,
            "output_slugs": {str(i): s.slug for i, s in sorted(self.job.output_sockets.items())},
        }

    def write(self, run: RunState, predictor: Predictor, bundle_id: str) -> dict[str, Any]:
        if self._loaded is None:
            self.preload(run)
        image_path, loaded = self.images[0], self._loaded
        output_dir = run.config.output_dir
        prediction = predictor.predict(loaded.pixels)
        record = record_case(run, image_path, image_path.stem, loaded, prediction)
        log_case("job", image_path.name, record)
        outputs = {}
        sockets = self.job.output_sockets
        with run.timed("write_s"):
            for index, mask in prediction.masks.items():
                path = sockets[index].mask_path(output_dir)
                write_mask_mha(path, mask, loaded)
                outputs[str(index)] = path.relative_to(output_dir).as_posix()
            for index in set(sockets) - set(prediction.masks):
                # A previous run's mask for a class this model lacks would read as this run's.
                sockets[index].mask_path(output_dir).unlink(missing_ok=True)
        return {"outputs": outputs}

    def finish(
        self, run: RunState, output_dir: Path, document: Callable[[dict], dict]
    ) -> dict[str, Any]:
        results = document({})
        write_results(output_dir / RESULTS_FILE, results)
        return results


def find_mode(config: RunConfig, job: JobSettings, options: BatchOptions) -> Mode:
    """The mode ``config.input_dir`` holds: a Grand Challenge job (``inputs.json``) or a folder
    of images. Raises :class:`DracInputError` for a missing or empty folder and for settings the
    mode does not take."""
    input_dir = Path(config.input_dir)
    if not input_dir.is_dir():
        raise DracInputError(f"input folder not found: {describe_folder(input_dir)}")
    if is_grand_challenge_job(input_dir):
        socket, image = find_job_image(input_dir, job.input_slug)
        if folder_only := options.folder_only_flags():
            raise DracInputError(
                f"{' and '.join(folder_only)}: for a folder of images only; {config.input_dir} "
                "holds a Grand Challenge job (inputs.json), which writes every class's socket"
            )
        return GrandChallengeJob(image, socket.slug, job)
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
    return BatchFolder(images, options)
