"""Typed training configuration, loaded from plain TOML files.

A run's settings are resolved in layers, each one over the last:

1. the :class:`TrainConfig` dataclass defaults,
2. the task's recipe ``drac_algo/training/recipes/<family>/<task>.toml`` from one of the
   :data:`RECIPE_FAMILIES`: ``"method"`` (the published method's settings, for reproduction) or
   ``"best"`` (the team's measured best; :data:`DEFAULT_RECIPE`),
3. optional overrides files (TOML, same layout as a recipe; any subset of keys), in order;
   an overrides file's ``[per_task.<key>]`` tables (``irma``, ``na``, ``nv``) apply to that
   task only, over the file's other keys (e.g. more steps for the cheaper Unet of NV),
4. command-line overrides passed to :func:`load_config` as keyword arguments
   (``epochs=2``; nested keys with a double underscore: ``model__encoder="resnet18"``;
   ``None`` values are skipped so click options can be passed straight through).

Every layer is checked for unknown keys (the error lists the valid ones) and the result is
validated on construction, so a typo or a bad value stops the run before any training (the
generic typed reading is :mod:`drac_algo.common.dataclass_io`).
TOML has no null: the string ``"none"`` sets an optional value (``attention``,
``encoder_weights``, ``val.fold``, ...) to ``None``. A layer that names a different loss
starts that loss's ``params`` from empty instead of merging them with the old loss's.

``TrainConfig.to_dict()`` is the resolved config, ready for ``json.dumps``;
``TrainConfig.from_dict`` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drac_algo.common.choices import CHECKPOINTS, DEFAULT_RECIPE, RECIPE_FAMILIES
from drac_algo.common.classes import BY_KEY, LesionClass, lesion_class
from drac_algo.common.dataclass_io import check_keys, convert, plain
from drac_algo.common.datafiles import read_toml
from drac_algo.common.errors import DracInputError
from drac_algo.data.images import MAX_IMAGE_SIDE
from drac_algo.engine.tta import TTA_SETS
from drac_algo.networks.models import check_encoder
from drac_algo.networks.spec import ModelSpec, Normalization, input_multiple
from drac_algo.training import RECIPES_DIR
from drac_algo.training.augment import AugmentConfig
from drac_algo.training.losses import build_loss
from drac_algo.training.optim import OPTIMIZERS, SCHEDULES, registered

# RECIPE_FAMILIES and DEFAULT_RECIPE (the family that won the ablation: python -m
# drac_algo.tools.ablate; README "Segmentation quality") live in drac_algo.common.choices for
# --help.
PER_TASK = "per_task"  # overrides-file table of per-task sub-tables


@dataclass(frozen=True)
class LossConfig:
    """A loss from :data:`drac_algo.training.losses.LOSSES` and its keyword parameters."""

    name: str = "dice"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        build_loss(self.name, **self.params)  # raises on an unknown name or parameter


@dataclass(frozen=True)
class ValConfig:
    """How training images are split for validation.

    Default: ``folds``-fold cross-validation (K >= 2), every fold trained (``fold = None``) or
    only fold ``fold`` (0-based). With ``holdout_fraction`` set, one random split holding out
    that fraction replaces the folds (then ``fold`` must stay unset).

    ``tta``: the test-time views validation averages, a set of :data:`TTA_SETS` intersected with
    the views the member's augmentation covers, as ``process.py --tta`` does: ``"none"`` (the
    network once per image, the default) or ``"d4"`` (what ``process.py`` runs by default). The
    epoch, threshold and component count are then chosen on the probabilities inference makes.
    """

    folds: int = 5
    fold: int | None = None
    holdout_fraction: float | None = None
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.tta not in TTA_SETS:
            raise DracInputError(f"val.tta must be one of {', '.join(TTA_SETS)}; got {self.tta!r}")
        if self.folds < 2:
            raise DracInputError(f"folds must be >= 2; got {self.folds}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise DracInputError(f"fold must be in 0..{self.folds - 1}; got {self.fold}")
        if self.holdout_fraction is not None:
            if not 0 < self.holdout_fraction < 1:
                raise DracInputError(
                    f"holdout_fraction must be in (0, 1); got {self.holdout_fraction}"
                )
            if self.fold is not None:
                raise DracInputError("fold and holdout_fraction cannot both be set")


@dataclass(frozen=True)
class PostprocessConfig:
    """Turning probabilities into a mask: the threshold is chosen on validation data from
    ``threshold_grid``; connected components smaller than ``min_component_px`` pixels are
    dropped (0: keep all); ``fill_holes`` fills holes inside components.
    ``keep_most_confident``: the counts k (each >= 1) among which validation chooses, at the
    tuned threshold, how many components of highest peak probability each mask keeps
    (:func:`drac_algo.engine.postprocess.keep_most_confident`); keeping all is always a candidate
    and wins ties, so the rule is on only where the validation images score higher with it.
    Empty: keep all, as the method does."""

    threshold_grid: tuple[float, ...] = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))
    min_component_px: int = 0
    fill_holes: bool = False
    keep_most_confident: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.threshold_grid or not all(0 < t < 1 for t in self.threshold_grid):
            raise DracInputError(
                f"threshold_grid needs values in (0, 1); got {self.threshold_grid}"
            )
        if self.min_component_px < 0:
            raise DracInputError(f"min_component_px must be >= 0; got {self.min_component_px}")
        keep = self.keep_most_confident
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in keep) or len(
            set(keep)
        ) != len(keep):
            raise DracInputError(
                "keep_most_confident needs distinct whole numbers >= 1 (keeping all is always a "
                f"candidate; [] turns the rule off); got {list(keep)}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Everything one task's training run needs. See the recipes for the method's values.

    ``scheduler``: ``"multistep"`` multiplies the learning rate by ``gamma`` at each
    ``milestones`` fraction of ``epochs``; ``"cosine"`` anneals from ``lr`` to ``min_lr`` over
    ``epochs``; ``"cosine_steps"`` is that cosine multiplied by ``gamma`` at each
    ``milestones`` fraction (the method's NV schedule: x0.6 at each quarter of the cycle);
    ``"constant"`` keeps ``lr``. The learning rate never goes below ``min_lr``.
    ``foreground_fraction``: the share of training crops centred on a lesion pixel (nnU-Net's
    foreground oversampling; :class:`drac_algo.training.augment.LesionCrop`), the rest at random
    places.
    ``init_from``: a checkpoint (``best.pt``/``last.pt`` of a member, or a bundle member file)
    whose weights the network starts from (the method continues training from its best-Dice
    weights); optimiser and schedule start afresh. ``deep_supervision``: train a Unet++ with
    auxiliary heads on its decoder (:mod:`drac_algo.training.deep_supervision`; the bundle keeps the
    plain network). ``checkpoint``: which epoch's weights the member keeps: ``"best"`` the
    epoch of highest validation Dice at threshold 0.5 (the method's rule), ``"last"`` the final
    epoch's (nnU-Net's default: on a handful of validation images the best epoch is partly the
    luckiest one); either way its threshold is tuned on that epoch's validation predictions.
    ``amp``: ``"auto"`` (bf16 autocast wherever the device computes bf16 natively, fp16 on
    older GPUs, float32 on other CPUs; :func:`drac_algo.training.loop.amp_dtype`), ``true`` or
    ``false``. ``samples_per_epoch``: training crops per epoch (``None``: one pass over the
    training images); with few images and small crops an epoch of one pass is only a handful of
    optimiser steps, so budgets are set in crops, as nnU-Net sets them in iterations.
    ``encoder_weights``: ``None`` (random init), ``"imagenet"`` or a local weights file (see
    :func:`drac_algo.networks.models.resolve_encoder_weights`; a relative path is taken from the
    working directory). ``positives_only``: train on the images that contain the lesion only.
    """

    task: str
    model: ModelSpec
    normalization: Normalization = field(default_factory=Normalization)
    input_size: int = 1024
    crop_size: int | None = None
    foreground_fraction: float = 0.0
    epochs: int = 100
    samples_per_epoch: int | None = None
    batch_size: int = 4
    grad_accum_steps: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-9
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "multistep"
    milestones: tuple[float, ...] = (0.25,)
    gamma: float = 0.1
    loss: LossConfig = field(default_factory=LossConfig)
    positives_only: bool = True
    val: ValConfig = field(default_factory=ValConfig)
    seeds: tuple[int, ...] = (0,)
    num_workers: int = 4
    amp: bool | str = "auto"
    channels_last: bool = True
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    encoder_weights: str | None = None
    init_from: str | None = None
    deep_supervision: bool = False
    checkpoint: str = "best"

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", lesion_class(self.task).key)
        check_encoder(self.model.encoder)  # the one check ModelSpec leaves to the library
        multiple = input_multiple(self.model)
        if (
            self.input_size < multiple
            or self.input_size % multiple
            or self.input_size > MAX_IMAGE_SIDE
        ):
            raise DracInputError(
                f"input_size must be a positive multiple of {multiple} for encoder_depth "
                f"{self.model.encoder_depth}, at most {MAX_IMAGE_SIDE}; got {self.input_size}"
            )
        if self.crop_size is not None and (
            self.crop_size < multiple
            or self.crop_size % multiple
            or self.crop_size > self.input_size
        ):
            raise DracInputError(
                f"crop_size must be a multiple of {multiple} no larger than input_size "
                f"{self.input_size}; got {self.crop_size}"
            )
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise DracInputError(f"samples_per_epoch must be >= 1; got {self.samples_per_epoch}")
        for name in ("epochs", "batch_size", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise DracInputError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.num_workers < 0:
            raise DracInputError(f"num_workers must be >= 0; got {self.num_workers}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise DracInputError(
                f"need lr > 0 and 0 <= min_lr <= lr; got lr={self.lr}, min_lr={self.min_lr}"
            )
        if self.weight_decay < 0:
            raise DracInputError(f"weight_decay must be >= 0; got {self.weight_decay}")
        registered(OPTIMIZERS, "optimizer", self.optimizer)
        registered(SCHEDULES, "scheduler", self.scheduler)
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise DracInputError(
                f"foreground_fraction is a fraction in [0, 1]; got {self.foreground_fraction}"
            )
        if self.deep_supervision and self.model.arch != "unetplusplus":
            raise DracInputError(
                f"deep_supervision needs arch = 'unetplusplus'; got {self.model.arch!r}"
            )
        if self.checkpoint not in CHECKPOINTS:
            raise DracInputError(
                f"checkpoint must be one of {', '.join(map(repr, CHECKPOINTS))}; "
                f"got {self.checkpoint!r}"
            )
        if self.init_from is not None and not Path(self.init_from).expanduser().is_file():
            raise DracInputError(f"init_from: checkpoint {self.init_from} does not exist")
        if self.scheduler in ("multistep", "cosine_steps"):
            ms = self.milestones
            if not ms or not all(0 < m < 1 for m in ms) or list(ms) != sorted(set(ms)):
                raise DracInputError(
                    "milestones must be increasing fractions of the epochs in (0, 1); "
                    f"got {list(ms)}"
                )
            if not 0 < self.gamma <= 1:
                raise DracInputError(f"gamma must be in (0, 1]; got {self.gamma}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise DracInputError(
                f"seeds must be a non-empty list of distinct ints; got {self.seeds}"
            )
        if self.amp not in ("auto", True, False):
            raise DracInputError(f"amp must be 'auto', true or false; got {self.amp!r}")
        if (
            self.encoder_weights not in (None, "imagenet")
            and not Path(self.encoder_weights).expanduser().is_file()
        ):
            raise DracInputError(
                f"encoder_weights: file {self.encoder_weights} does not exist "
                "(valid: none, 'imagenet' or a local weights file)"
            )

    @property
    def lesion(self) -> LesionClass:
        return lesion_class(self.task)

    @property
    def n_members(self) -> int:
        """Members this config trains (the task's ensemble): each trained fold (one for a
        holdout split) times each seed."""
        one_split = self.val.holdout_fraction is not None or self.val.fold is not None
        return (1 if one_split else self.val.folds) * len(self.seeds)

    def milestone_epochs(self) -> list[int]:
        """The epochs (0-based, learning rate changes before that epoch) of the multistep
        schedule: ``round(fraction * epochs)``, at least 1, duplicates removed."""
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones})

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as JSON-ready plain data (tuples become lists)."""
        return plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys and bad values raise DracInputError."""
        check_keys(data, cls, source)
        try:
            return convert(data, cls, "")
        except DracInputError as exc:
            raise DracInputError(f"{source}: {exc}") from exc


def recipe_path(task: str | int, recipe: str = DEFAULT_RECIPE) -> Path:
    """The recipe file of a task (``"irma"``, ``"na"``, ``"nv"`` or 1-3) in the family
    ``recipe`` (one of :data:`RECIPE_FAMILIES`)."""
    if recipe not in RECIPE_FAMILIES:
        raise DracInputError(
            f"unknown recipe family {recipe!r}; valid: {', '.join(RECIPE_FAMILIES)}"
        )
    return RECIPES_DIR / recipe / f"{lesion_class(task).key}.toml"


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        old = merged.get(key)
        renames_loss = (
            key == "loss"
            and isinstance(old, Mapping)
            and isinstance(value, Mapping)
            and "name" in value
            and value["name"] != old.get("name")
        )
        if renames_loss:
            old = {k: v for k, v in old.items() if k != "params"}
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(dict(old), value)
        else:
            merged[key] = value
    return merged


def _cli_layer(cli_overrides: Mapping[str, Any]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key, value in cli_overrides.items():
        if value is None:
            continue
        *sections, leaf = key.split("__")
        target = layer
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = list(value) if isinstance(value, tuple) else value
    return layer


def load_config(
    task: str | int,
    overrides_file: Path | str | Sequence[Path | str] | None = None,
    recipe: str = DEFAULT_RECIPE,
    **cli_overrides: Any,
) -> TrainConfig:
    """The resolved :class:`TrainConfig` for ``task`` from the recipe family ``recipe`` (see
    the module docstring for layers)."""
    key = lesion_class(task).key
    layers: list[tuple[str, Mapping[str, Any]]] = []
    recipe_file = recipe_path(key, recipe)
    layers.append((str(recipe_file), read_toml(recipe_file)))
    if isinstance(overrides_file, Path | str):
        overrides_file = [overrides_file]
    for path in overrides_file or ():
        layer = read_toml(Path(path))
        per_task = layer.pop(PER_TASK, {})
        if not isinstance(per_task, Mapping) or not all(
            isinstance(v, Mapping) for v in per_task.values()
        ):
            raise DracInputError(f"{path}: [{PER_TASK}] must hold one table per task")
        for name in per_task:
            if name not in BY_KEY:
                raise DracInputError(
                    f"{path}: [{PER_TASK}.{name}]: unknown task; valid: {', '.join(BY_KEY)}"
                )
        layers.append((str(path), layer))
        if key in per_task:
            layers.append((f"{path} [{PER_TASK}.{key}]", per_task[key]))
    if cli_overrides:
        layers.append(("command-line overrides", _cli_layer(cli_overrides)))
    merged: dict[str, Any] = {}
    for source, layer in layers:
        check_keys(layer, TrainConfig, source)
        if "task" in layer and lesion_class(layer["task"]).key != key:
            raise DracInputError(f"{source} is for task {layer['task']!r}, not {key!r}")
        merged = _merge(merged, layer)
    merged["task"] = key
    try:
        return convert(merged, TrainConfig, "")
    except DracInputError as exc:
        sources = " + ".join(source for source, _ in layers)
        raise DracInputError(f"config from {sources}: {exc}") from exc
