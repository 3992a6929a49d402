"""What the ablation compares: trained variants, rows derived from them at inference, and the
budget they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drac_algo.common.errors import DracInputError
from drac_algo.training import RECIPES_DIR

# The quickstart's budget, over either recipe family: every trained row gets the same one.
BUDGET = RECIPES_DIR / "quickstart.toml"
# A smoke-test budget: tiny images, 2 epochs and the container fixture's tiny network (timm's
# LCNet-0.35 encoder, 4 stages, 16-channel decoder: ~0.25 M parameters instead of ~25 M, so the
# smoke run writes megabytes, not ~4 GB of checkpoints). ``--quick``; CI runs it, no score is
# meaningful.
QUICK = {
    "model__encoder": "tu-lcnet_035",
    "model__encoder_depth": 4,
    "model__decoder_channels": (16, 16, 16, 16),
    "input_size": 64,
    "crop_size": 32,
    "epochs": 2,
    "samples_per_epoch": 8,
    "batch_size": 4,
    "val__folds": 2,
    "val__fold": 0,
}
TASKS = ("irma", "na", "nv")
ATTENTION_TASKS = ("irma", "na")  # the tasks whose recipe has decoder attention (the card's)


@dataclass(frozen=True)
class Variant:
    """A trained row: a recipe family plus config overrides per task (``"*"`` = every task),
    written as :func:`drac_algo.training.config.load_config` keyword overrides."""

    name: str
    recipe: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""
    # Members per task trained for one seed (default 1): the task's seeds are then seed,
    # seed + 1000, seed + 2000, ... and the bundle ensembles them.
    members: dict[str, int] = field(default_factory=dict)

    def task_overrides(self, task: str) -> dict[str, Any]:
        return {**self.overrides.get("*", {}), **self.overrides.get(task, {})}

    def task_seeds(self, task: str, seed: int) -> list[int]:
        return [seed + 1000 * k for k in range(self.members.get(task, 1))]


@dataclass(frozen=True)
class Derived:
    """A row computed from the ``best`` variant's models at inference only."""

    name: str
    tta: str = "d4"
    # "tuned" (the bundle's), "0.5", or "with k": chosen again on the run's validation images
    # over its threshold grid together with k (with ``components_on_validation``)
    threshold: str = "tuned"
    postprocess: str = "bundle"  # "bundle", "off" or "on"
    ensemble_seeds: bool = False  # one ensemble of every seed's members (one value, no spread)
    # NV's members run at these multiples of their input size, probabilities averaged (the
    # first-placed DRAC team's multi-scale NV inference).
    nv_scales: tuple[float, ...] = (1.0,)
    # Each pixel that both IRMA and NV mark goes to the class with the higher probability (the
    # same team's overlap rule); off: the classes are decided independently, as the product does.
    overlap_rule: bool = False
    # Keep only each image's k most confident components (highest peak probability), k chosen
    # per task run on its own validation images from COMPONENT_CANDIDATES (0 = keep all, which
    # wins ties): nnU-Net's way of deciding its keep-the-largest-component rule per class.
    components_on_validation: bool = False
    # Hysteresis thresholds per task run, chosen on its own validation images from
    # HYSTERESIS_CANDIDATES: the components of the mask at the low threshold whose peak
    # probability reaches the high one are kept (a thin segment's weak gaps stay joined to its
    # confident core; a component with no confident pixel goes). (tuned, tuned), the plain
    # threshold, wins ties.
    hysteresis_on_validation: bool = False
    note: str = ""


# 0.05 to 0.80 in steps of 0.05: the default grid (0.20-0.80) extended down.
WIDE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 17))
TRAINED = (
    Variant("plain baseline", "baseline", note="drac_algo/tools/baseline.py, the reference row"),
    Variant("method recipe", "method", note="the published method at this budget"),
    Variant("best recipe", "best", note="the default"),
    Variant(
        "best, every component kept",
        "best",
        {t: {"postprocess__keep_most_confident": ()} for t in ("irma", "nv")},
        "IRMA and NV masks keep every component (the method's masks) instead of the k most "
        "confident ones, k chosen on validation",
    ),
    Variant(
        "best, thresholds from 0.05",
        "best",
        {"*": {"postprocess__threshold_grid": WIDE_THRESHOLDS}},
        "validation tunes each threshold over 0.05-0.80 instead of 0.20-0.80 (the tuned NV "
        "threshold sat at the grid's lower edge, 0.2, in every seed)",
    ),
    Variant(
        "best, validation without TTA",
        "best",
        {"*": {"val__tta": "none"}},
        "validation scores each epoch with the network once instead of the views process.py "
        "averages by default (the member's, of D4): the epoch, threshold and k are chosen on "
        "other probabilities than inference makes",
    ),
    Variant(
        "best, published CAM gates",
        "best",
        {t: {"model__attention": "cam"} for t in ATTENTION_TASKS},
        "the method's sigmoid gates (start at 0.5) instead of 2 * sigmoid, IRMA and NA",
    ),
    Variant(
        "best, no attention",
        "best",
        {t: {"model__attention": "none"} for t in ATTENTION_TASKS},
        "IRMA and NA without CAM (NV has none)",
    ),
    Variant(
        "best, scSE attention",
        "best",
        {t: {"model__attention": "scse"} for t in ATTENTION_TASKS},
        "smp's scSE instead of CAM for IRMA and NA",
    ),
    Variant(
        "best, per-image Dice + BCE",
        "best",
        {"*": {"loss__name": "positive_dice_bce"}},
        "Dice per image over positive images + BCE instead of one Dice over the batch",
    ),
    Variant(
        "best, no foreground sampling",
        "best",
        {"*": {"foreground_fraction": 0.0}},
        "every crop at a random place",
    ),
    Variant(
        "best, IRMA + skeleton recall",
        "best",
        {"irma": {"loss__name": "dice_skeleton_recall"}},
        "IRMA's loss: batch Dice + skeleton recall (Kirchhoff et al. 2024), weight 1",
    ),
    Variant(
        "best, IRMA + clDice",
        "best",
        {"irma": {"loss__name": "dice_cldice"}},
        "IRMA's loss: 0.5 batch Dice + 0.5 clDice (Shit et al. 2021)",
    ),
    Variant(
        "best, IRMA larger crops",
        "best",
        {"irma": {"crop_size": 192, "batch_size": 4, "samples_per_epoch": 144}},
        "IRMA: 192 px crops (1.5x the side, more context around each segment), "
        "batch 4 and half the crops: about the same pixels per epoch",
    ),
    Variant(
        "best, IRMA deep supervision",
        "best",
        {"irma": {"deep_supervision": True}},
        "IRMA's Unet++ trained with auxiliary heads on its decoder (the method's option; "
        "nnU-Net's level weights); inference unchanged",
    ),
    Variant(
        "best, IRMA 120 steps",
        "best",
        {"irma": {"samples_per_epoch": 96}},
        "IRMA at the first budget: 120 steps of 8 crops instead of 360",
    ),
    Variant(
        "best, IRMA final-epoch weights",
        "best",
        {"irma": {"checkpoint": "last"}},
        "IRMA keeps its final epoch's weights (as NV does) instead of its best validation epoch",
    ),
    Variant(
        "best, IRMA lesion-centred 0.8",
        "best",
        {"irma": {"foreground_fraction": 0.8}},
        "IRMA: 80 % of the crops centred on a lesion pixel instead of half (same steps)",
    ),
    Variant(
        "best, IRMA 240 steps",
        "best",
        {"irma": {"samples_per_epoch": 192}},
        "IRMA at the earlier budget: 240 steps of 8 crops instead of 360 (about 1.5 fewer "
        "CPU minutes)",
    ),
    Variant(
        "best, NA 60 steps",
        "best",
        {"na": {"samples_per_epoch": 48}},
        "NA: 60 steps of 8 crops instead of 120, the minutes IRMA's extra 120 steps cost "
        "given back by the class with the most lesion pixels",
    ),
    Variant(
        "best, IRMA with lesion-free images",
        "best",
        {"irma": {"positives_only": False}},
        "IRMA also trains on its fold's images without IRMA (their crops are all background: "
        "normal vessels to tell apart from IRMA) instead of the images with it only",
    ),
    Variant(
        "best, NV with lesion-free images",
        "best",
        {"nv": {"positives_only": False}},
        "NV also trains on its fold's images without NV instead of the images with it only",
    ),
    Variant(
        "best, IRMA 8 folds",
        "best",
        {"irma": {"val__folds": 8}},
        "IRMA validates on an eighth of the training images instead of a quarter: more "
        "lesions to learn from, fewer to choose the epoch and threshold on",
    ),
    Variant(
        "best, IRMA stronger augmentation",
        "best",
        {
            "irma": {
                "augment__rotate_p": 0.8,
                "augment__crop_p": 0.8,
                "augment__noise_p": 0.4,
                "augment__brightness_contrast_p": 0.6,
                "augment__distortion_p": 0.6,
            }
        },
        "IRMA: every augmentation but the flip more often (rotation and zoom 0.8, noise 0.4, "
        "brightness/contrast and distortion 0.6): its validation loss stops falling after 7 of "
        "10 epochs while its training loss goes on",
    ),
    Variant(
        "best, NV best-epoch weights",
        "best",
        {"nv": {"checkpoint": "best"}},
        "NV keeps the epoch of best validation Dice (the method's rule) instead of its final one",
    ),
    Variant(
        "best, NV 2 full seeds",
        "best",
        members={"nv": 2},
        note="NV: two full-length members (seeds s and s + 1000), ensembled: 1.5 more CPU "
        "minutes, inside the quickstart's 10-minute target",
    ),
    Variant(
        "best, NV 3 short seeds",
        "best",
        {"nv": {"samples_per_epoch": 80}},
        "NV: three members with a third of the steps each (same budget), ensembled",
        members={"nv": 3},
    ),
)
DERIVED = (
    Derived("best, TTA none", tta="none"),
    Derived("best, TTA flips", tta="flips"),
    Derived("best, threshold 0.5", threshold="0.5"),
    Derived("best, post-processing on", postprocess="on", note="see POSTPROCESS_ON"),
    Derived("best, seeds ensembled", ensemble_seeds=True, note="one ensemble of all seeds"),
    Derived(
        "best, IRMA/NV overlap rule",
        overlap_rule=True,
        note="a pixel marked IRMA and NV goes to the class with the higher probability",
    ),
    Derived(
        "best, k most confident components",
        components_on_validation=True,
        note="per image, only the k components of highest peak probability; k in 0 (all), 1, "
        "2, 3, 5 chosen again for every class on each run's validation images with D4 TTA "
        "(the best recipe chooses k for IRMA and NV only)",
    ),
    Derived(
        "best, threshold and k chosen together",
        threshold="with k",
        components_on_validation=True,
        note="as the row above, but each class's threshold is chosen again with k (every "
        "threshold of the grid with every k) instead of first with every component kept",
    ),
    Derived(
        "best, hysteresis thresholds",
        hysteresis_on_validation=True,
        note="per class, a low and a high threshold chosen on each run's validation images: "
        "components at the low one kept where their peak reaches the high one",
    ),
    Derived(
        "best, NV multi-scale",
        nv_scales=(1.0, 1.25, 1.5),
        note="NV members also at 1.25x and 1.5x their input size, averaged",
    ),
)
COMPONENT_CANDIDATES = (0, 1, 2, 3, 5)  # k for "k most confident components"; 0 = all
# (low, high) for "hysteresis thresholds", as functions of the tuned threshold t: low t or t / 2,
# high t or 1/2 or 3/4 of the way from t to 1. The first, (t, t), is the plain threshold.
HYSTERESIS_CANDIDATES = ((1.0, 0.0), (1.0, 0.5), (1.0, 0.75), (0.5, 0.0), (0.5, 0.5), (0.5, 0.75))
# "post-processing on": what the row turns on when the recipe has none, per task key:
# (min_component_px as a fraction of the image's pixels, fill_holes).
POSTPROCESS_ON = {"irma": (2e-4, False), "na": (1e-3, True), "nv": (2e-4, False)}


def variant(name: str) -> Variant:
    for v in TRAINED:
        if v.name == name:
            return v
    raise KeyError(name)


def select_rows(
    trained: Sequence[Variant], derived: Sequence[Derived], names: Sequence[str]
) -> tuple[list[Variant], list[Derived]]:
    """The rows named in ``names`` (every row when empty), the best recipe's always; an unknown
    name is refused with the known ones listed."""
    if not names:
        return list(trained), list(derived)
    known = [r.name for r in (*trained, *derived)]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DracInputError(
            f"--rows: no row named {', '.join(map(repr, unknown))}; the rows are: "
            + ", ".join(map(repr, known))
        )
    wanted = {*names, "best recipe"}
    return [v for v in trained if v.name in wanted], [d for d in derived if d.name in wanted]


def budget_layers(quick: bool) -> tuple[list[Path], dict[str, Any]]:
    """(overrides files, keyword overrides) that set the ablation's training budget."""
    return [BUDGET], (dict(QUICK) if quick else {})
