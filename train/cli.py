"""The ``python -m train`` command: parse options, resolve every task's config (so a bad config
fails before any training), then hand over to :func:`drac_algo.training.experiment.run_training`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from drac_algo.common.choices import DEFAULT_RECIPE, RECIPE_FAMILIES
from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.cli import device_option, tool_command
from drac_algo.common.errors import DracInputError

if TYPE_CHECKING:
    from drac_algo.training.config import TrainConfig

log = logging.getLogger("train")
TASKS = [c.key for c in LESION_CLASSES]


def _seeds(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError:
        raise DracInputError(f"--seeds takes integers separated by commas, got {value!r}") from None


def _crop_size(value: str | None) -> int | str | None:
    if value is None or value == "none":
        return value
    try:
        return int(value)
    except ValueError:
        raise DracInputError(f"--crop-size takes an integer or 'none', got {value!r}") from None


def resolve_configs(
    tasks: tuple[str, ...],
    config_files: Sequence[Path] = (),
    recipe: str = DEFAULT_RECIPE,
    **overrides,
) -> list[TrainConfig]:
    """One resolved config per task, in class order."""
    # Imported here: the config pulls in torch, smp and albumentations, not needed for --help.
    from drac_algo.training.config import load_config

    chosen = [t for t in TASKS if t in tasks] if tasks else TASKS
    return [load_config(task, list(config_files), recipe, **overrides) for task in chosen]


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse to mix a new run into a folder that already holds one, unless resuming."""
    if resume or not out.exists():
        return
    if not out.is_dir():
        raise DracInputError(f"--out {out} exists and is not a folder")
    used = sorted(p.name for p in out.iterdir() if p.name in TASKS + ["model"])
    if used:
        raise DracInputError(
            f"--out {out} already holds a training run ({', '.join(used)}); pass --resume to "
            "continue it, or choose a new folder"
        )


@tool_command("drac-train")
@click.option(
    "--data",
    "data_root",
    required=True,
    type=click.Path(path_type=Path),
    help="DRAC2022 root (the folder holding 'A. Segmentation').",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder: per-task checkpoints, curves, and the bundle in OUT/model.",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    type=click.Choice(TASKS),
    help="Train only these tasks (repeatable). Default: all three.",
)
@click.option(
    "--recipe",
    type=click.Choice(RECIPE_FAMILIES),
    default=DEFAULT_RECIPE,
    show_default=True,
    help="Recipe family: 'method' reproduces the published method, 'best' is the team's "
    "measured best (drac_algo/training/recipes/<family>/<task>.toml).",
)
@click.option(
    "--config",
    "config_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file of overrides applied over each task's recipe (repeatable, in order).",
)
@click.option("--image-size", type=int, help="Training input size (multiple of 32).")
@click.option(
    "--crop-size",
    help="Training crop side (multiple of 32, at most the image size), or 'none' for whole images.",
)
@click.option("--epochs", type=int, help="Epochs per member.")
@click.option("--batch-size", type=int, help="Images per optimiser step (per process).")
@click.option("--grad-accum", type=int, help="Gradient accumulation steps.")
@click.option("--folds", type=int, help="K of K-fold cross-validation; every fold is trained.")
@click.option("--fold", type=int, help="Train only this fold (0-based) of the K folds.")
@click.option("--seeds", help="Comma-separated seeds, one member per seed and fold, e.g. 0,1,2.")
@click.option("--encoder", help="segmentation-models-pytorch encoder, e.g. resnet34.")
@click.option("--encoder-weights", help="'imagenet' (local cache only) or a local weights file.")
@click.option(
    "--init-from",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Start from this checkpoint's weights (a member's best.pt, or a bundle member file); "
    "best with --task, since every task's model must fit it.",
)
@click.option(
    "--foreground-fraction",
    type=float,
    help="Share of training crops centred on a lesion pixel (0 to 1).",
)
@click.option(
    "--deep-supervision/--no-deep-supervision",
    default=None,
    help="Unet++ auxiliary decoder heads during training (the method's option).",
)
@click.option("--workers", type=int, help="Data-loading worker processes.")
@device_option(
    "auto = CUDA when available, else the CPU. Under torchrun each process uses the GPU of its "
    "LOCAL_RANK (cuda:N is for one process)."
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
def main(
    data_root,
    out,
    tasks,
    recipe,
    config_files,
    image_size,
    crop_size,
    epochs,
    batch_size,
    grad_accum,
    folds,
    fold,
    seeds,
    encoder,
    encoder_weights,
    init_from,
    foreground_fraction,
    deep_supervision,
    workers,
    device,
    resume,
):
    """Train one binary model per lesion class on DRAC2022 Task 1 data and write the model
    bundle to OUT/model."""
    for config_file in config_files:
        if not config_file.is_file():
            raise DracInputError(f"--config {config_file}: no such file")
    configs = resolve_configs(
        tasks,
        config_files,
        recipe,
        input_size=image_size,
        crop_size=_crop_size(crop_size),
        epochs=epochs,
        batch_size=batch_size,
        grad_accum_steps=grad_accum,
        val__folds=folds,
        val__fold=fold if fold is not None else ("none" if folds is not None else None),
        seeds=_seeds(seeds),
        model__encoder=encoder,
        encoder_weights=encoder_weights,
        init_from=None if init_from is None else str(init_from),
        foreground_fraction=foreground_fraction,
        deep_supervision=deep_supervision,
        num_workers=workers,
    )
    # Imported here: torch's distributed package, not needed to print --help.
    from drac_algo.training.distributed import init_distributed, shutdown

    ctx = init_distributed(device)
    try:
        if ctx.is_main:
            check_run_dir(out, resume)
        # Imported here: it pulls in torch's training stack, not needed to print --help.
        from drac_algo.training.experiment import run_training, summary_table

        summary = run_training(data_root, out, configs, ctx, resume=resume)
        if ctx.is_main:
            click.echo(summary_table(summary))
            click.echo(f"bundle: {summary.bundle}  ({summary.seconds / 60:.1f} min)")
    finally:
        shutdown(ctx)
