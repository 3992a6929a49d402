"""The inference command: DRAC2022 Task 1 lesion segmentation (IRMA, nonperfusion areas,
neovascularisation) on UW-OCTA images. Run as the container's entry point ``python -m process``,
as ``python process.py`` from a checkout, or as ``drac-process`` once installed.

    python -m process                       # in the container: /input -> /output, /opt/ml/model
    python process.py --input IMAGES_DIR --output OUT_DIR --bundle BUNDLE_DIR \\
        [--tta d4|flips|none] [--device auto|cpu|cuda|cuda:N] [--views-per-batch N] \\
        [--precision auto|fp32|bf16|fp16] [--backend auto|torch|onnxruntime] \\
        [--classes irma,na,nv] [--save-probabilities] [--continue] [--no-submission] \\
        [--no-report] [--input-slug SLUG] [--output-slug CLASS=SLUG[:RELATIVE_PATH] ...] \\
        [--require-gpu]
    python process.py ... --shard K/N       # one shard of a folder of images (a job array)
    python process.py --merge OUT_DIR       # assemble the shards' stacks and results.json
    torchrun --nproc_per_node=N -m process ...   # N ranks, one GPU each; rank 0 assembles

With ``INPUT/inputs.json`` present this is a Grand Challenge job (one image; one
``images/<slug>/output.mha`` per class); otherwise every image in INPUT is segmented and the
challenge submission, PNG masks, overlays and ``report.html`` (the results on one page) are
written (``--classes``, ``--save-probabilities``, ``--continue`` and ``--no-report`` are for this
mode). Both write ``results.json`` and ``process.log``. See
:mod:`drac_algo.serve.pipeline` for the modes and :mod:`drac_algo.serve.outputs` for the layout.
Sockets
and ``--require-gpu`` can also come from the environment or the model folder's
``platform.json`` (:mod:`drac_algo.serve.job_settings`), since a platform job takes no arguments.

Exit status: 0 on success, 2 for bad input (message on stderr), 1 when an output cannot be
written or the GPU is required but unusable. Sharded runs: :mod:`drac_algo.serve.shards`,
:mod:`drac_algo.serve.merge` and :mod:`drac_algo.serve.ranks`.

The spellings of earlier releases still work for one release, hidden from ``--help``:
``--model-dir`` (now ``--bundle``) and ``--batch-size`` (now ``--views-per-batch``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from drac_algo.common.choices import BACKENDS, PRECISIONS, TTA_CHOICES
from drac_algo.common.classes import lesion_class
from drac_algo.common.cli import device_option, tool_command
from drac_algo.common.errors import DracInputError

if TYPE_CHECKING:
    from drac_algo.serve.pipeline import BatchOptions, RunConfig

INPUT_PATH = Path("/input")
OUTPUT_PATH = Path("/output")
MODEL_PATH = Path("/opt/ml/model")  # where Grand Challenge extracts the model tarball

_PATH = click.Path(path_type=Path, file_okay=True, dir_okay=True)


def parse_classes(value: str | None) -> tuple[int, ...] | None:
    """``--classes``: "irma,na" or "1,2" -> (1, 2), sorted, each once; None when not given."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise DracInputError(
            f"--classes: expected class keys or indices (irma,na,nv or 1-3), found {value!r}"
        )
    return tuple(sorted({lesion_class(name).index for name in names}))


@tool_command("drac-process")
@click.option(
    "--input",
    "input_dir",
    type=_PATH,
    default=INPUT_PATH,
    show_default=True,
    help="Grand Challenge job folder (with inputs.json) or a folder of images.",
)
@click.option(
    "--output",
    "output_dir",
    type=_PATH,
    default=OUTPUT_PATH,
    show_default=True,
    help="Output folder (created if missing).",
)
@click.option(
    "--bundle",
    type=_PATH,
    default=MODEL_PATH,
    show_default=True,
    help="Model bundle folder holding manifest.json and the member weights.",
)
@click.option("--model-dir", "bundle", type=_PATH, hidden=True)  # --bundle's old name
@click.option(
    "--tta",
    type=click.Choice(TTA_CHOICES),
    default="d4",
    show_default=True,
    help="Test-time augmentation: d4 = 8 flips/rotations, flips = 4, none = 1.",
)
@device_option()
@click.option(
    "--views-per-batch",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many TTA views per forward pass.  [default: 8 on CUDA, 1 on the CPU]",
)
@click.option(  # --views-per-batch's old name
    "--batch-size", "views_per_batch", type=click.IntRange(min=1), hidden=True
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto = bf16 autocast where the device computes bf16 natively (Ampere+ GPUs, CPUs "
    "with AVX512-BF16/AMX), else fp16 on CUDA and fp32 on the CPU.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="What runs the networks: auto = ONNX Runtime where the engine runs float32 on the CPU "
    "and the bundle has ONNX files, else torch; onnxruntime (CPU, float32 only); torch.",
)
@click.option(
    "--input-slug",
    default=None,
    help="Image socket to read when inputs.json holds several (env DRAC_INPUT_SOCKET).",
)
@click.option(
    "--output-slug",
    "output_specs",
    multiple=True,
    metavar="CLASS=SLUG[:PATH]",
    help="Output socket of a class (irma, na, nv or 1-3): its slug and, when not images/SLUG, "
    "its relative path under the output folder; repeatable (env DRAC_OUTPUT_SOCKETS, "
    "comma-separated).",
)
@click.option(
    "--require-gpu/--no-require-gpu",
    default=None,
    help="Exit 1 unless inference runs on an NVIDIA GPU (env DRAC_REQUIRE_GPU=1). Default: a "
    "visible but unusable GPU is logged as an error and the run goes on on the CPU.",
)
@click.option(
    "--no-submission",
    is_flag=True,
    help="Folder of images: skip the challenge submission stacks (1.nii.gz 2.nii.gz 3.nii.gz). "
    "Without it, images that cannot form the stacks (mixed sizes) end the run with exit "
    "status 2 once the masks and overlays are written.",
)
@click.option(
    "--no-report",
    is_flag=True,
    help="Folder of images: skip report.html (the run's results on one page, thumbnails in "
    "report/).",
)
@click.option(
    "--classes",
    "class_list",
    default=None,
    metavar="irma,na,nv",
    help="Folder of images: segment only these classes (keys or 1-3, comma-separated); the "
    "other classes' networks are not loaded and the submission stacks, which need all three, "
    "are not written.  [default: every class in the bundle]",
)
@click.option(
    "--save-probabilities",
    is_flag=True,
    help="Folder of images: also write each case's ensemble probabilities, "
    "probabilities/<case>.npz (one float16 (H, W) array per class key, values in [0, 1]).",
)
@click.option(
    "--continue",
    "resume",
    is_flag=True,
    help="Folder of images: write each case as it is done and keep the complete cases of an "
    "earlier --continue run with the same settings; after a crash, run the same command again.",
)
@click.option(
    "--shard",
    "shard_spec",
    default=None,
    metavar="K/N",
    help="Folder of images: run only shard K of N (K from 1; e.g. a Slurm array's task) into a "
    "shared --output, case by case as --continue does; the last shard to finish assembles the "
    "stacks and results.json, or see --merge.",
)
@click.option(
    "--merge",
    "merge_dir",
    type=_PATH,
    default=None,
    metavar="OUT",
    help="Assemble the stacks and results.json of the --shard runs in OUT once every shard's "
    "cases are complete (refused, naming the missing cases, before).",
)
@click.option(
    "--rank-timeout",
    type=click.IntRange(min=1),
    default=900,
    show_default=True,
    help="Under torchrun: rank 0 gives up on a rank that finishes no case and does not end for "
    "this many seconds.",
)
def main(
    input_dir: Path,
    output_dir: Path,
    bundle: Path,
    tta: str,
    device: str,
    views_per_batch: int | None,
    precision: str,
    backend: str,
    input_slug: str | None,
    output_specs: tuple[str, ...],
    require_gpu: bool | None,
    no_submission: bool,
    no_report: bool,
    class_list: str | None,
    save_probabilities: bool,
    resume: bool,
    shard_spec: str | None,
    merge_dir: Path | None,
    rank_timeout: int,
) -> None:
    """Segment DRAC2022 Task 1 lesions in one Grand Challenge job or a folder of images."""
    # Imported here: the pipeline pulls in torch (seconds), not needed to print --help.
    from drac_algo.engine.gpu import GpuUnavailableError
    from drac_algo.serve.pipeline import BatchOptions, RunConfig

    config = RunConfig(
        input_dir=input_dir,
        output_dir=output_dir,
        bundle=bundle,
        tta=tta,
        device=device,
        views_per_batch=views_per_batch,
        precision=precision,
        backend=backend,
        input_slug=input_slug,
        output_specs=output_specs,
        require_gpu=require_gpu,
    )
    batch = BatchOptions(
        classes=parse_classes(class_list),
        save_probabilities=save_probabilities,
        resume=resume,
        no_submission=no_submission,
        no_report=no_report,
    )
    try:
        results = _run_command(config, batch, shard_spec, merge_dir, rank_timeout)
    except (OSError, GpuUnavailableError) as exc:
        # Disk full, a read-only mount, ...: the message names the file; no traceback.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if results is None:  # a shard or rank whose run is not its to assemble
        return
    output_dir = Path(results["output"])
    submission = results.get("submission") or {}
    if submission.get("cause") == "sizes":
        raise DracInputError(
            f"the challenge submission stacks were not written: {submission['reason']}. The "
            f"masks, overlays and results.json in {output_dir} are complete; pass "
            "--no-submission when the stacks are not needed"
        )


def _run_command(
    config: RunConfig,
    batch: BatchOptions,
    shard_spec: str | None,
    merge_dir: Path | None,
    rank_timeout: int,
) -> dict | None:
    """The run the flags ask for: a merge, a torchrun rank, one shard (then the merge, when it
    is the last and all is complete), or the plain run. Returns the ``results.json`` written,
    or None where this process wrote none."""
    from drac_algo.common.torchrun import torchrun_process
    from drac_algo.serve.merge import merge
    from drac_algo.serve.pipeline import run
    from drac_algo.serve.ranks import run_ranks
    from drac_algo.serve.shards import parse_shard

    shard = parse_shard(shard_spec) if shard_spec is not None else None
    world = torchrun_process()
    if merge_dir is not None:
        if shard is not None or world is not None:
            raise DracInputError(
                "--merge assembles finished shards in one process: expected it alone, found it "
                f"with {'--shard' if shard else 'torchrun'}"
            )
        explicit = click.get_current_context().get_parameter_source("input_dir")
        given = explicit is click.core.ParameterSource.COMMANDLINE
        return merge(merge_dir, config.input_dir if given else None, no_report=batch.no_report)
    if world is not None:
        if shard is not None:
            raise DracInputError(
                f"--shard {shard.label} under torchrun: each rank already runs one shard; "
                "expected one of the two"
            )
        return run_ranks(world, config, batch, rank_timeout)
    results = run(config, batch, shard)
    if shard is None:
        return results
    try:
        return merge(config.output_dir, config.input_dir, quiet=True)
    except DracInputError as exc:
        logging.getLogger("drac_algo.serve.pipeline").warning("not assembled: %s", exc)
        return None


if __name__ == "__main__":
    main()
