"""The ablation command: its smoke run end to end (no score is asserted: 2 epochs on 64 px
images mean nothing), its plan and its verdicts."""

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drac_algo.common.errors import DracInputError
from drac_algo.data.metrics import score
from drac_algo.tools.ablate.plan import (
    DERIVED,
    TRAINED,
    Variant,
    budget_layers,
    select_rows,
    variant,
)
from drac_algo.tools.ablate.report import Row, diagnosis, markdown, verdict
from drac_algo.tools.ablate.run import (
    choose_components,
    choose_hysteresis,
    choose_threshold_and_components,
    hysteresis_mask,
    hysteresis_pair,
    overlap_to_higher,
    run_key,
)
from drac_algo.training.config import load_config

REPO = Path(__file__).resolve().parents[1]


def fake_scores(dice: float):
    """Scores whose classes all reach ``dice`` (one 10-pixel lesion, a prediction sized to it)."""
    gt = np.zeros((1, 1, 10, 10), np.uint8)
    gt[0, 0, 0, :] = 1
    pred = np.zeros_like(gt)
    hit = round(10 * dice / (2 - dice))  # 2h / (10 + h) = dice
    pred[0, 0, 0, :hit] = 1
    stacks = {i: gt[0] for i in (1, 2, 3)}
    return score(stacks, {i: pred[0] for i in (1, 2, 3)})


def test_verdict_compares_against_the_spread_over_seeds():
    reference = Row("best", [fake_scores(0.5), fake_scores(0.54)], [1, 1])
    close = Row("close", [fake_scores(0.5), fake_scores(0.54)], [1, 1])
    lower = Row("lower", [fake_scores(0.2), fake_scores(0.22)], [1, 1])
    single = Row("single", [fake_scores(0.9)], [])
    assert verdict(close, reference).startswith("within noise")
    assert verdict(lower, reference).startswith("lower")
    assert verdict(single, reference) == "one value: no spread"
    table = markdown([reference, lower], "best", "caption")
    assert "| lower |" in table and "± " in table


def test_plan_covers_the_rows_the_issue_asks_for():
    names = {v.name for v in TRAINED} | {d.name for d in DERIVED}
    for needed in (
        "plain baseline",
        "method recipe",
        "best recipe",
        "best, no attention",
        "best, scSE attention",
        "best, per-image Dice + BCE",
        "best, no foreground sampling",
        "best, TTA none",
        "best, TTA flips",
        "best, threshold 0.5",
        "best, post-processing on",
        "best, seeds ensembled",
        "best, IRMA/NV overlap rule",
        "best, NV multi-scale",
        "best, IRMA + clDice",
        "best, IRMA + skeleton recall",
        "best, IRMA larger crops",
        "best, NV 3 short seeds",
        "best, IRMA deep supervision",
        "best, IRMA 120 steps",
        "best, IRMA final-epoch weights",
        "best, NV best-epoch weights",
        "best, NV 2 full seeds",
        "best, k most confident components",
    ):
        assert needed in names
    v = Variant("x", "best", {"*": {"epochs": 1}, "irma": {"epochs": 2}})
    assert v.task_overrides("irma") == {"epochs": 2}
    assert v.task_overrides("nv") == {"epochs": 1}
    ensemble = Variant("y", "best", members={"nv": 3})
    assert ensemble.task_seeds("nv", 2) == [2, 1002, 2002]
    assert ensemble.task_seeds("irma", 2) == [2]


def test_the_budget_rows_are_what_their_names_say():
    files, budget = budget_layers(quick=False)

    def resolved(task: str, name: str):
        v = variant(name)
        return load_config(task, files, v.recipe, **budget, **v.task_overrides(task))

    best = "best recipe"
    # IRMA trains three times NA's steps of the same Unet++; the earlier budgets are rows, and
    # so is NA at half its steps.
    na_steps = resolved("na", best).samples_per_epoch
    assert resolved("irma", best).samples_per_epoch == 3 * na_steps
    assert resolved("irma", "best, IRMA 240 steps").samples_per_epoch == 2 * na_steps
    assert resolved("irma", "best, IRMA 120 steps").samples_per_epoch == na_steps
    assert 2 * resolved("na", "best, NA 60 steps").samples_per_epoch == na_steps
    # The larger crops row keeps the optimiser steps per epoch (half the crops in half batches).
    crops = resolved("irma", "best, IRMA larger crops")
    irma = resolved("irma", best)
    assert crops.samples_per_epoch / crops.batch_size == irma.samples_per_epoch / irma.batch_size
    # NV keeps its final epoch by default; the method's rule is a row, as is IRMA's final epoch.
    assert resolved("nv", best).checkpoint == "last"
    assert resolved("nv", "best, NV best-epoch weights").checkpoint == "best"
    assert resolved("irma", best).checkpoint == "best"
    assert resolved("irma", "best, IRMA final-epoch weights").checkpoint == "last"


def test_select_rows_keeps_the_reference_and_refuses_unknown_names():
    trained, derived = select_rows(TRAINED, DERIVED, ["best, TTA none"])
    assert [v.name for v in trained] == ["best recipe"]
    assert [d.name for d in derived] == ["best, TTA none"]
    assert select_rows(TRAINED, DERIVED, []) == (list(TRAINED), list(DERIVED))
    with pytest.raises(DracInputError, match="no row named 'nope'; the rows are: 'plain baseline'"):
        select_rows(TRAINED, DERIVED, ["nope"])


def test_run_key_is_the_resolved_config(monkeypatch):
    written = load_config("irma", loss__name="dice", loss__params={"smooth": 1.0})
    left_out = load_config("irma", loss__name="dice")
    assert left_out.loss.params == {} and written.loss.params == {"smooth": 1.0}
    assert run_key(written) == run_key(left_out)  # the same network: trained once
    assert run_key(load_config("irma", loss__name="dice", loss__params={"smooth": 2.0})) != (
        run_key(left_out)
    )
    assert run_key(load_config("irma", lr=1e-3)) != run_key(load_config("irma", lr=2e-3))
    assert run_key(left_out).startswith("irma-")
    # A field added later is left out at its old behaviour's value: earlier runs stay reusable.
    assert run_key(load_config("irma", checkpoint="best")) == run_key(load_config("irma"))
    assert run_key(load_config("irma", checkpoint="last")) != run_key(load_config("irma"))
    # Nested too: a config without the component rule has the key it had before the field was.
    off = load_config("irma", postprocess__keep_most_confident=())
    before = off.to_dict()
    del before["postprocess"]["keep_most_confident"]
    monkeypatch.setattr(type(off), "to_dict", lambda self: copy.deepcopy(before))
    older_key = run_key(off)
    monkeypatch.undo()
    assert run_key(off) == older_key
    assert run_key(off) != run_key(load_config("irma", postprocess__keep_most_confident=(1, 2)))


def quick_ablation(work: Path) -> subprocess.CompletedProcess:
    """``python -m drac_algo.ablate --workdir WORK --quick``, run to its end."""
    command = [sys.executable, "-m", "drac_algo.ablate", "--workdir", str(work), "--quick"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_quick_ablation_runs_end_to_end(tmp_path):
    work = tmp_path / "ablation"
    result = quick_ablation(work)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("ablation.md", "ablation.json", "ablation.png"):
        assert (work / name).is_file(), name
    report = json.loads((work / "ablation.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {v.name for v in TRAINED} | {
        d.name for d in DERIVED if not d.ensemble_seeds
    }
    for row in rows.values():
        assert len(row["mean_dice"]) == 1
        assert all(v is None or 0.0 <= v <= 1.0 for v in row["mean_dice"])
        assert not any(v is not None and math.isnan(v) for v in row["mean_dice"])
    assert "| plain baseline |" in result.stdout
    # A second run reuses every trained model (nothing is trained again).
    again = quick_ablation(work)
    assert again.returncode == 0
    assert "ablation: training" not in again.stderr


def test_overlap_rule_gives_each_shared_pixel_to_the_higher_probability():
    irma = np.array([[1, 1, 0, 1]], np.uint8)
    nv = np.array([[1, 1, 1, 0]], np.uint8)
    p_irma = np.array([[0.9, 0.4, 0.1, 0.8]], np.float32)
    p_nv = np.array([[0.6, 0.7, 0.9, 0.2]], np.float32)
    out = overlap_to_higher({1: irma, 3: nv, 2: irma}, {1: p_irma, 3: p_nv}, (1, 3))
    assert out[1].tolist() == [[1, 0, 0, 1]]
    assert out[3].tolist() == [[0, 1, 1, 0]]
    assert out[2] is irma  # other classes untouched
    assert irma.tolist() == [[1, 1, 0, 1]]  # inputs not modified


def test_diagnosis_counts_missed_false_and_zero_images_over_seeds():
    gt = np.zeros((2, 10, 10), np.uint8)
    gt[0, 0, :4] = 1  # image 0: one lesion, found with 2 of its 4 pixels
    gt[1, 5, 5] = 1  # image 1: one lesion, missed
    pred = np.zeros_like(gt)
    pred[0, 0, :2] = 1
    pred[0, 9, 9] = 1  # a false component beside it
    empty = {i: np.zeros_like(gt) for i in (2, 3)}
    seed = score({1: gt, **empty}, {1: pred, **empty})
    table = diagnosis(Row("best recipe", [seed, seed], [1, 1]))
    # Two seeds of the same scores: 4 images scored, 2 of them 0; precision 4/6, recall 4/10.
    assert "| IRMA | 4 | 2 | 0.667 | 0.400 | 2 of 4 | 4 | 2 |" in table
    assert "| NA |" not in table  # no image scored for NA: no row


def test_choose_components_takes_what_validation_supports_and_all_on_ties():
    # Two images with one true lesion each and a weaker false component beside it.
    prob = np.zeros((2, 1, 8), np.float32)
    prob[:, 0, :2] = 0.9  # the lesion
    prob[:, 0, 5] = 0.6  # a false component
    gt = (prob > 0.8).astype(np.uint8)
    assert choose_components(prob, gt, 0.5, 0, False) == 1
    # Nothing false to drop: every k scores the same and "all" (0) wins the tie.
    assert choose_components(prob, (prob > 0.5).astype(np.uint8), 0.5, 0, False) == 0
    # No image has the lesion: nothing is scored, nothing is switched on.
    assert choose_components(prob, np.zeros_like(gt), 0.5, 0, False) == 0


def test_threshold_and_k_chosen_together_reach_what_one_after_the_other_cannot():
    # A lesion with a weak half (0.4) and a wide weak false component (0.35) apart from it.
    prob = np.zeros((2, 1, 13), np.float32)
    prob[:, 0, :4] = (0.9, 0.9, 0.4, 0.4)
    prob[:, 0, 7:] = 0.35
    gt = np.zeros_like(prob, np.uint8)
    gt[:, 0, :4] = 1
    grid = np.array([0.3, 0.5, 0.7])
    # One after the other: 0.5 is the best threshold with every component kept (Dice 0.67
    # against 0.57 at 0.3), and at 0.5 there is nothing false left to cut.
    assert choose_components(prob, gt, 0.5, 0, False) == 0
    # Together: at 0.3 the whole lesion is in and keeping the most confident component drops
    # the false one (Dice 1).
    assert choose_threshold_and_components(prob, gt, grid, 0, False) == (0.3, 1)
    assert choose_threshold_and_components(prob, np.zeros_like(gt), grid, 0, False) == (0.5, 0)


def test_hysteresis_keeps_low_components_that_reach_the_high_threshold():
    # A segment with a weak gap (0.3) joined to a confident core, and a weak false component.
    prob = np.array([[0.9, 0.3, 0.6, 0.0, 0.4, 0.45]], np.float32)
    assert hysteresis_mask(prob, 0.5, 0.5).tolist() == [[1, 0, 1, 0, 0, 0]]  # plain threshold
    assert hysteresis_mask(prob, 0.25, 0.8).tolist() == [[1, 1, 1, 0, 0, 0]]
    # A low threshold alone would keep the false component; the high one drops it.
    assert hysteresis_mask(prob, 0.25, 0.25).tolist() == [[1, 1, 1, 0, 1, 1]]
    assert hysteresis_mask(np.zeros_like(prob), 0.25, 0.8).sum() == 0
    assert hysteresis_pair(0.4, (0.5, 0.5)) == pytest.approx((0.2, 0.7))
    assert hysteresis_pair(0.4, (1.0, 0.0)) == pytest.approx((0.4, 0.4))


def test_choose_hysteresis_takes_what_validation_supports_and_plain_on_ties():
    # Two images: a lesion whose middle pixel is weak, and a weak false component beside it.
    prob = np.zeros((2, 1, 8), np.float32)
    prob[:, 0, :3] = [0.9, 0.3, 0.9]
    prob[:, 0, 6] = 0.45
    gt = np.zeros_like(prob, dtype=np.uint8)
    gt[:, 0, :3] = 1
    low, high = choose_hysteresis(prob, gt, 0.5, 0, False)
    assert low == pytest.approx(0.25) and high > 0.45
    # The plain threshold already gives the truth: every pair that ties leaves it plain.
    assert choose_hysteresis(prob, (prob >= 0.5).astype(np.uint8), 0.5, 0, False) == (0.5, 0.5)
    assert choose_hysteresis(prob, np.zeros_like(gt), 0.5, 0, False) == (0.5, 0.5)
