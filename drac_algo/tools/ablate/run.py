"""Running the ablation: train each distinct (task, config, seed) once, compute its test-set
probability maps once per TTA set, then score every row from those maps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drac_algo.bundle.manifest import MANIFEST
from drac_algo.bundle.store import load_bundle
from drac_algo.common.classes import lesion_class
from drac_algo.common.fsutil import atomic_path
from drac_algo.data.metrics import Scores, dice_iou, score
from drac_algo.data.release import find_layout, list_cases
from drac_algo.engine.postprocess import (
    component_peaks,
    keep_most_confident,
    postprocess_mask,
    threshold_probability,
)
from drac_algo.engine.predictor import Predictor
from drac_algo.tools.ablate.plan import (
    COMPONENT_CANDIDATES,
    HYSTERESIS_CANDIDATES,
    POSTPROCESS_ON,
    TASKS,
    Derived,
    Variant,
    budget_layers,
)
from drac_algo.tools.baseline import predict_baseline, train_baseline
from drac_algo.training.bundle_export import describe_keep, median_keep
from drac_algo.training.config import TrainConfig, load_config
from drac_algo.training.dataset import Sample, load_samples
from drac_algo.training.distributed import init_distributed
from drac_algo.training.epoch import threshold_grid
from drac_algo.training.experiment import run_training
from drac_algo.training.losses import loss_defaults
from drac_algo.training.run_layout import MEMBER_SUMMARY, bundle_dir
from drac_algo.training.validation import (
    best_keep,
    best_threshold_and_keep,
    challenge_dice,
    overlap_counts,
)

log = logging.getLogger(__name__)


@dataclass
class TaskRun:
    """One trained task model: its test-set probabilities per TTA set, decision settings and
    training time."""

    bundle: Path
    seconds: float
    threshold: float
    min_component_px: int
    fill_holes: bool
    keep_components: int  # chosen by the run's validation (0: all), as process.py applies it
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # tta -> (N, H, W)
    # tta -> (probabilities, ground truth), each (N, H, W), of the run's validation images
    validation: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class Ablation:
    """The shared state of one ablation run."""

    data: Path
    workdir: Path
    seeds: tuple[int, ...]
    quick: bool = False
    runs: dict[str, TaskRun] = field(default_factory=dict)
    test: dict[int, list[Sample]] = field(default_factory=dict)  # class index -> test samples

    def __post_init__(self) -> None:
        cases = list_cases(find_layout(self.data), "test")
        for task in TASKS:
            index = lesion_class(task).index
            self.test[index] = load_samples(cases, index)

    def gt(self) -> dict[int, np.ndarray]:
        return {i: np.stack([s.mask for s in samples]) for i, samples in self.test.items()}

    # -- training ---------------------------------------------------------------------------

    def config(self, v: Variant, task: str, seed: int) -> TrainConfig:
        files, budget = budget_layers(self.quick)
        # --quick's smoke budget wins over a row's own budget keys (crop size, batch, steps): a
        # 192 px crop does not fit the smoke test's 64 px images.
        overrides = {**v.task_overrides(task), **budget}
        return load_config(task, files, v.recipe, **overrides, seeds=v.task_seeds(task, seed))

    def task_run(self, cfg: TrainConfig) -> TaskRun:
        """Train ``cfg`` (one task, one seed) unless a run of the same config exists."""
        key = run_key(cfg)
        if key in self.runs:
            return self.runs[key]
        run_dir = self.workdir / "runs" / key
        bundle = bundle_dir(run_dir)
        done = run_dir / "seconds.txt"
        if done.is_file() and (bundle / MANIFEST).is_file():
            seconds = float(done.read_text())
        else:
            log.info("ablation: training %s (%s)", key, cfg.task)
            summary = run_training(self.data, run_dir, [cfg], init_distributed("cpu"))
            seconds = summary.seconds
            done.write_text(f"{seconds:.1f}\n")
        entry = load_bundle(bundle).classes[cfg.lesion.index]
        self.runs[key] = TaskRun(
            bundle,
            seconds,
            entry.threshold,
            entry.min_component_px,
            entry.fill_holes,
            entry.keep_components,
        )
        return self.runs[key]

    def probabilities(
        self, run: TaskRun, index: int, tta: str, scales: tuple[float, ...] = (1.0,)
    ) -> np.ndarray:
        """(N, H, W) float32 test-set probabilities of one task run under one TTA set, its
        members run at each of ``scales`` times their input size (probabilities averaged)."""
        key = tta if scales == (1.0,) else f"{tta}@{','.join(map(str, scales))}"
        if key not in run.probabilities:
            predictor = Predictor.from_bundle(run.bundle, device="cpu", tta=tta, classes=[index])
            if scales != (1.0,):
                (ensemble,) = predictor.ensembles.values()
                members = tuple(
                    dataclasses.replace(m, input_size=round(m.input_size * s))
                    for m in ensemble.members
                    for s in scales
                )
                scaled = dataclasses.replace(ensemble, members=members)
                predictor = Predictor([scaled], device="cpu", tta=tta)
            run.probabilities[key] = np.stack(
                [predictor.predict(s.image).probabilities[index] for s in self.test[index]]
            )
        return run.probabilities[key]

    def validation_probabilities(
        self, run: TaskRun, task: str, tta: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, ground truth), each (N, H, W), of the validation images the task run
        was tuned on (its members share one split: :func:`drac_algo.training.experiment`'s
        split seed is the run's first seed)."""
        if tta not in run.validation:
            summary = sorted(run.bundle.parent.glob(f"{task}/*/{MEMBER_SUMMARY}"))[0]
            ids = json.loads(summary.read_text())["val_cases"]
            cases = {c.case_id: c for c in list_cases(find_layout(self.data), "train")}
            index = lesion_class(task).index
            samples = load_samples([cases[i] for i in ids], index)
            predictor = Predictor.from_bundle(run.bundle, device="cpu", tta=tta, classes=[index])
            probs = np.stack([predictor.predict(s.image).probabilities[index] for s in samples])
            run.validation[tta] = (probs, np.stack([s.mask for s in samples]))
        return run.validation[tta]

    # -- scoring ----------------------------------------------------------------------------

    def score_trained(self, v: Variant, seed: int) -> tuple[Scores, float]:
        """A trained row for one seed: (scores, training seconds over all tasks)."""
        if v.recipe == "baseline":
            return self._score_baseline(seed)
        pred, seconds = {}, 0.0
        for task in TASKS:
            run = self.task_run(self.config(v, task, seed))
            index = lesion_class(task).index
            prob = self.probabilities(run, index, "d4")
            pred[index] = _masks(
                prob, run.threshold, run.min_component_px, run.fill_holes, run.keep_components
            )
            seconds += run.seconds
        return score(self.gt(), pred), seconds

    def score_derived(self, best: Variant, d: Derived, seeds: Sequence[int]) -> Scores:
        """A row from the best variant's runs of ``seeds`` (all of them in one ensemble when
        ``d.ensemble_seeds``; else exactly one seed)."""
        pred, probs = {}, {}
        for task in TASKS:
            index = lesion_class(task).index
            runs = [self.task_run(self.config(best, task, s)) for s in seeds]
            scales = d.nv_scales if task == "nv" else (1.0,)
            prob = np.mean([self.probabilities(r, index, d.tta, scales) for r in runs], axis=0)
            probs[index] = prob
            threshold = statistics.median(r.threshold for r in runs)
            if d.threshold == "0.5":
                threshold = 0.5
            min_px, holes = runs[0].min_component_px, runs[0].fill_holes
            # The bundle's rule, combined over seeds as a bundle of those members would.
            keep, hysteresis = median_keep([r.keep_components for r in runs]), None
            if d.postprocess == "off":
                min_px, holes, keep = 0, False, 0
            elif d.postprocess == "on":
                fraction, holes = POSTPROCESS_ON[task]
                min_px = max(2, round(fraction * prob[0].size))
            if d.components_on_validation or d.hysteresis_on_validation:
                (run,) = runs  # one seed: each run has its own validation split
                val_prob, val_gt = self.validation_probabilities(run, task, d.tta)
            if d.components_on_validation and d.threshold == "with k":
                grid = threshold_grid(self.config(best, task, seeds[0]))
                threshold, keep = choose_threshold_and_components(
                    val_prob, val_gt, grid, min_px, holes
                )
                log.info("ablation: %s: threshold %.2f, %s", task, threshold, describe_keep(keep))
            elif d.components_on_validation:
                keep = choose_components(val_prob, val_gt, threshold, min_px, holes)
                log.info("ablation: %s: %s", task, describe_keep(keep))
            if d.hysteresis_on_validation:
                hysteresis = choose_hysteresis(val_prob, val_gt, threshold, min_px, holes)
                log.info(
                    "ablation: %s thresholds low %.3f, high %.3f (tuned %.3f)",
                    task,
                    *hysteresis,
                    threshold,
                )
            pred[index] = _masks(prob, threshold, min_px, holes, keep, hysteresis)
        if d.overlap_rule:
            pred = overlap_to_higher(pred, probs, IRMA_NV)
        return score(self.gt(), pred)

    def _score_baseline(self, seed: int) -> tuple[Scores, float]:
        """The plain baseline for one seed; its masks and time are kept in the work folder so a
        rerun does not train it again."""
        cache = self.workdir / "runs" / f"baseline-seed{seed}{'-quick' if self.quick else ''}.npz"
        if cache.is_file():
            saved = np.load(cache)
            pred = {lesion_class(t).index: saved[t] for t in TASKS}
            return score(self.gt(), pred), float(saved["seconds"])
        cases = list_cases(find_layout(self.data), "train")
        pred, seconds = {}, 0.0
        for task in TASKS:
            index = lesion_class(task).index
            t0 = time.perf_counter()
            epochs = 2 if self.quick else None
            model = train_baseline(load_samples(cases, index), seed, **_epochs(epochs))
            seconds += time.perf_counter() - t0
            pred[index] = predict_baseline(model, [s.image for s in self.test[index]])
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, seconds=seconds, **{t: pred[lesion_class(t).index] for t in TASKS}
            )
        return score(self.gt(), pred), seconds


# Config fields added after work folders with trained runs existed, with the default that
# trains what those runs trained: left out of the key at that default, so the runs stay valid.
LATER_FIELDS = {
    "checkpoint": "best",
    "postprocess.keep_most_confident": [],
    "val.tta": "none",
}


def run_key(cfg: TrainConfig) -> str:
    """``<task>-<hash>`` of the resolved config: equal for configs that train the same network,
    a loss parameter written out at its default included."""
    data = cfg.to_dict()
    for name, default in LATER_FIELDS.items():
        *parents, leaf = name.split(".")
        section = data
        for parent in parents:
            section = section[parent]
        if section.get(leaf) == default:
            del section[leaf]
    data["loss"]["params"] = {**loss_defaults(cfg.loss.name), **data["loss"]["params"]}
    text = json.dumps(data, sort_keys=True)
    return f"{cfg.task}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


IRMA_NV = (lesion_class("irma").index, lesion_class("nv").index)


def overlap_to_higher(
    masks: dict[int, np.ndarray], probs: dict[int, np.ndarray], pair: tuple[int, int]
) -> dict[int, np.ndarray]:
    """``masks`` with each pixel that both classes of ``pair`` mark kept only in the class with
    the higher probability (the first of the pair on a tie)."""
    a, b = pair
    both = (masks[a] > 0) & (masks[b] > 0)
    a_wins = probs[a] >= probs[b]
    out = dict(masks)
    out[a] = np.where(both & ~a_wins, 0, masks[a]).astype(masks[a].dtype)
    out[b] = np.where(both & a_wins, 0, masks[b]).astype(masks[b].dtype)
    return out


def _epochs(epochs: int | None) -> dict[str, int]:
    return {} if epochs is None else {"epochs": epochs}


def hysteresis_mask(probability: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) {0, 1}: the 8-connected components of ``probability >= low`` whose peak
    probability reaches ``high`` (``low == high`` is the plain threshold)."""
    mask = threshold_probability(probability, low)
    if high <= low:
        return mask
    labels, peak = component_peaks(mask, probability)
    return (peak >= high)[labels].astype(np.uint8)


def hysteresis_pair(threshold: float, candidate: tuple[float, float]) -> tuple[float, float]:
    """(low, high) of a :data:`HYSTERESIS_CANDIDATES` entry for the tuned ``threshold``."""
    low, high = candidate
    return low * threshold, threshold + high * (1.0 - threshold)


def _validation_dice(gt: np.ndarray, masks: np.ndarray) -> float:
    """The challenge Dice of (N, H, W) masks: images without the lesion skipped."""
    per_image = [dice_iou(g, m)[0] for g, m in zip(gt, masks, strict=True)]
    scored = [d for d in per_image if not np.isnan(d)]
    return float(np.mean(scored)) if scored else float("nan")


def _first_best(scores: Sequence[float]) -> int:
    """Index of the highest score, the first on a tie (0 when every score is NaN)."""
    best = max((s for s in scores if not np.isnan(s)), default=None)
    if best is None:
        return 0
    return next(i for i, s in enumerate(scores) if s >= best - 1e-12)


def choose_components(
    prob: np.ndarray,
    gt: np.ndarray,
    threshold: float,
    min_px: int,
    holes: bool,
    candidates: Sequence[int] = COMPONENT_CANDIDATES,
) -> int:
    """The k of ``candidates`` whose masks score the highest challenge Dice against ``gt``
    (both (N, H, W); images without the lesion skipped); the first candidate (0 = all) wins ties,
    so the rule is on only where validation shows it helping. Training's own choice
    (:func:`drac_algo.training.validation.best_keep`), on these probabilities."""
    counts = _validation_counts(prob, gt, np.array([threshold]), min_px, holes, candidates)
    return best_keep(challenge_dice(counts[:, 0]), candidates)[0]


def choose_threshold_and_components(
    prob: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    min_px: int,
    holes: bool,
    candidates: Sequence[int] = COMPONENT_CANDIDATES,
) -> tuple[float, int]:
    """(threshold, k) of ``thresholds`` x ``candidates`` whose masks score the highest challenge
    Dice against ``gt``, chosen together (:func:`best_threshold_and_keep`'s tie rule)."""
    counts = _validation_counts(prob, gt, thresholds, min_px, holes, candidates)
    threshold, keep, _ = best_threshold_and_keep(challenge_dice(counts), thresholds, candidates)
    return threshold, keep


def _validation_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    min_px: int,
    holes: bool,
    candidates: Sequence[int],
) -> np.ndarray:
    """Overlap counts (N, T, K, 3) of every image of ``prob`` / ``gt`` (N, H, W) at each
    threshold with each component count, as training's validation counts them."""
    return np.stack(
        [
            overlap_counts(p, g, thresholds, min_px, holes, candidates)
            for p, g in zip(prob, gt, strict=True)
        ]
    )


def choose_hysteresis(
    prob: np.ndarray,
    gt: np.ndarray,
    threshold: float,
    min_px: int,
    holes: bool,
    candidates: Sequence[tuple[float, float]] = HYSTERESIS_CANDIDATES,
) -> tuple[float, float]:
    """The (low, high) thresholds of ``candidates`` (see :func:`hysteresis_pair`) whose masks
    score the highest challenge Dice against ``gt``; the first (the plain threshold) wins ties."""
    pairs = [hysteresis_pair(threshold, c) for c in candidates]
    scores = [
        _validation_dice(gt, _masks(prob, threshold, min_px, holes, hysteresis=pair))
        for pair in pairs
    ]
    return pairs[_first_best(scores)]


def _masks(
    prob: np.ndarray,
    threshold: float,
    min_px: int,
    holes: bool,
    keep: int = 0,
    hysteresis: tuple[float, float] | None = None,
) -> np.ndarray:
    def binary(p: np.ndarray) -> np.ndarray:
        if hysteresis is None:
            return threshold_probability(p, threshold)
        return hysteresis_mask(p, *hysteresis)

    return np.stack(
        [keep_most_confident(postprocess_mask(binary(p), min_px, holes), p, keep) for p in prob]
    )
