"""The ``python -m train`` command: parse options, resolve every task's config (so a bad config
fails before any training), then hand over to :func:`drac_algo.training.experiment.run_training`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from drac_algo.common.choices import CHECKPOINTS, DEFAULT_RECIPE, RECIPE_FAMILIES
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


@dataclass(frozen=True)
class ConfigFlag:
    """One command-line flag that overrides one key of every task's training config."""

    flag: str  # the click declaration, e.g. "--image-size" or "--x/--no-x"
    key: str  # the TrainConfig key ("a__b" = key b of table a), as load_config takes it
    help: str
    type: Any = None
    convert: Callable[[Any], Any] | None = None  # flag value -> config value

    @property
    def param(self) -> str:
        """The click parameter name: the first spelling without dashes."""
        return self.flag.split("/")[0].removeprefix("--").replace("-", "_")

    def option(self) -> Callable:
        key = self.key.replace("__", ".")
        extra = {"default": None} if "/" in self.flag else {"type": self.type}
        return click.option(self.flag, self.param, help=f"{self.help} [config: {key}]", **extra)


# Every training flag that sets a config key, in --help order: one table for the parser, the
# help text and the overrides (a test checks that each key is one TrainConfig accepts).
CONFIG_FLAGS = (
    ConfigFlag("--image-size", "input_size", "Training input size (multiple of 32).", int),
    ConfigFlag(
        "--crop-size",
        "crop_size",
        "Training crop side (multiple of 32, at most the image size), or 'none' for whole images.",
        convert=_crop_size,
    ),
    ConfigFlag("--epochs", "epochs", "Epochs per member.", int),
    ConfigFlag("--batch-size", "batch_size", "Images per optimiser step (per process).", int),
    ConfigFlag("--grad-accum", "grad_accum_steps", "Gradient accumulation steps.", int),
    ConfigFlag(
        "--folds", "val__folds", "K of K-fold cross-validation; every fold is trained.", int
    ),
    ConfigFlag("--fold", "val__fold", "Train only this fold (0-based) of the K folds.", int),
    ConfigFlag(
        "--seeds",
        "seeds",
        "Comma-separated seeds, one member per seed and fold, e.g. 0,1,2.",
        convert=_seeds,
    ),
    ConfigFlag(
        "--encoder", "model__encoder", "segmentation-models-pytorch encoder, e.g. resnet34."
    ),
    ConfigFlag(
        "--encoder-weights",
        "encoder_weights",
        "'imagenet' (local cache only) or a local weights file.",
    ),
    ConfigFlag(
        "--init-from",
        "init_from",
        "Start from this checkpoint's weights (a member's best.pt, or a bundle member file); "
        "best with --task, since every task's model must fit it.",
        click.Path(path_type=Path, dir_okay=False),
        convert=str,
    ),
    ConfigFlag(
        "--foreground-fraction",
        "foreground_fraction",
        "Share of training crops centred on a lesion pixel (0 to 1).",
        float,
    ),
    ConfigFlag(
        "--deep-supervision/--no-deep-supervision",
        "deep_supervision",
        "Unet++ auxiliary decoder heads during training (the method's option).",
    ),
    ConfigFlag(
        "--checkpoint",
        "checkpoint",
        "The weights each member keeps: 'best' (best validation Dice) or 'last' (final epoch).",
        click.Choice(CHECKPOINTS),
    ),
    ConfigFlag("--workers", "num_workers", "Data-loading worker processes.", int),
)


def config_options(command: Callable) -> Callable:
    """Add every :data:`CONFIG_FLAGS` option to ``command``, in the table's order."""
    for flag in reversed(CONFIG_FLAGS):
        command = flag.option()(command)
    return command


def config_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The config overrides of the flags given (``None``: not given, the recipe's value)."""
    overrides = {}
    for flag in CONFIG_FLAGS:
        value = values[flag.param]
        overrides[flag.key] = (
            value if value is None or flag.convert is None else flag.convert(value)
        )
    # --folds without --fold trains every fold (the recipe may name one).
    if values["fold"] is None and values["folds"] is not None:
        overrides["val__fold"] = "none"
    return overrides


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
@config_options
@device_option(
    "auto = CUDA when available, else the CPU. Under torchrun each process uses the GPU of its "
    "LOCAL_RANK (cuda:N is for one process)."
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
def main(data_root, out, tasks, recipe, config_files, device, resume, **flags):
    """Train one binary model per lesion class on DRAC2022 Task 1 data and write the model
    bundle to OUT/model."""
    for config_file in config_files:
        if not config_file.is_file():
            raise DracInputError(f"--config {config_file}: no such file")
    configs = resolve_configs(tasks, config_files, recipe, **config_overrides(flags))
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
