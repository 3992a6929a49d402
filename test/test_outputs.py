import json

import cv2
import numpy as np
import pytest

from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.data.submission import read_submission, write_submission
from drac_algo.serve.outputs import (
    StackCollector,
    case_record,
    lesion_stats,
    mask_png_path,
    write_mask_pngs,
    write_overlay_png,
)
from drac_algo.serve.results import read_results, write_results
from drac_algo.tools.evaluate import evaluate_paths


def test_lesion_stats_counts_8_connected_components():
    mask = np.zeros((10, 10), np.uint8)
    mask[1, 1] = mask[2, 2] = 1  # diagonal neighbours: one lesion
    mask[5:7, 5:8] = 1  # 6 px
    mask[9, 0] = 1
    assert lesion_stats(mask) == {"area_px": 9, "area_fraction": 0.09, "components": 3}
    assert lesion_stats(np.zeros((4, 5), np.uint8)) == {
        "area_px": 0,
        "area_fraction": 0.0,
        "components": 0,
    }
    assert lesion_stats(np.full((2, 2), 255, np.uint8))["area_fraction"] == 1.0
    with pytest.raises(DracInputError, match="non-empty"):
        lesion_stats(np.zeros((0, 3), np.uint8))


def test_case_record_names_the_non_perfusion_index():
    na = np.zeros((4, 5), np.uint8)
    na[:2, :] = 1
    masks = {1: np.zeros((4, 5), np.uint8), 2: na, 3: np.ones((4, 5), np.uint8)}
    record = case_record("086", "/in/086.png", (4, 5), masks, case_id=86, seconds=0.5)
    assert record["non_perfusion_index"] == 0.5
    assert record["classes"]["2"] == {
        "key": "na",
        "area_px": 10,
        "area_fraction": 0.5,
        "components": 1,
    }
    assert list(record["classes"]) == ["1", "2", "3"]
    assert record["shape"] == [4, 5] and record["case_id"] == 86
    json.dumps(record, allow_nan=False)
    without_na = case_record("x", "/in/x.mha", (4, 5), {1: masks[1]})
    assert without_na["non_perfusion_index"] is None
    assert list(without_na["classes"]) == ["1"]


def test_mask_pngs_use_the_drac_layout_and_0_255(tmp_path):
    masks = {i: (np.arange(12).reshape(3, 4) % (i + 1) == 0).astype(np.uint8) for i in (1, 2, 3)}
    paths = write_mask_pngs(tmp_path, "086", masks)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        f"{c.folder}/086.png" for c in LESION_CLASSES
    ]
    for index, path in zip((1, 2, 3), paths, strict=True):
        assert path == mask_png_path(tmp_path, index, "086")
        stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert stored.dtype == np.uint8 and set(np.unique(stored)) <= {0, 255}
        assert np.array_equal(stored // 255, masks[index])


def test_overlay_png_is_rgb_and_keeps_background(tmp_path):
    image = np.full((6, 6), 100, np.uint8)
    mask = np.zeros((6, 6), np.uint8)
    mask[2:4, 2:4] = 1
    path = write_overlay_png(tmp_path / "overlays", "7", image, {2: mask})
    stored = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert stored.shape == (6, 6, 3)
    assert (stored[0, 0] == 100).all()
    assert not (stored[2, 2] == 100).all()


def test_stack_collector_round_trips_and_reports_size_mismatch():
    rng = np.random.default_rng(0)
    cases = [{i: rng.integers(0, 2, (5, 7), dtype=np.uint8) for i in (1, 2, 3)} for _ in range(3)]
    collector = StackCollector((1, 2, 3))
    for n, masks in enumerate(cases):
        collector.add(str(n), masks)
    assert collector.size_problem() is None
    stacks = collector.stacks()
    for index in (1, 2, 3):
        assert stacks[index].dtype == np.uint8
        assert np.array_equal(stacks[index], np.stack([c[index] for c in cases]))
    collector.add("big", {i: np.zeros((6, 7), np.uint8) for i in (1, 2, 3)})
    assert "0 is 5 x 7, big is 6 x 7" in collector.size_problem()
    with pytest.raises(DracInputError, match="cannot build submission stacks"):
        collector.stacks()
    with pytest.raises(DracInputError, match=r"for each of classes \[1, 2, 3\]"):
        collector.add("x", {1: np.zeros((5, 7), np.uint8)})


def test_results_json_round_trip_and_nan_refused(tmp_path):
    path = write_results(tmp_path / "results.json", {"format": "drac-algo-results", "a": 1})
    assert read_results(path) == {"format": "drac-algo-results", "a": 1}
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert read_results(tmp_path / "other.json") is None
    assert read_results(tmp_path / "missing.json") is None
    with pytest.raises(ValueError):
        write_results(tmp_path / "nan.json", {"x": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "results.json"]


def test_evaluate_scores_the_png_masks_including_all_zero_files(tmp_path):
    """The masks/ layout is what `python -m drac_algo.evaluate --pred` reads; all-zero PNG
    files must count as empty masks, exactly like the release's missing files."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    predicted = {}
    for cid in (86, 90):
        cv2.imwrite(str(images / f"{cid:03d}.png"), rng.integers(0, 256, (8, 8), np.uint8))
        masks = {i: np.zeros((8, 8), np.uint8) for i in (1, 2, 3)}
        masks[2][: cid % 7, :] = 1  # 86 -> 2 rows, 90 -> 6 rows
        predicted[cid] = masks
        write_mask_pngs(tmp_path / "masks", f"{cid:03d}", masks)
    truth = {i: np.stack([predicted[c][i] for c in (86, 90)]) for i in (1, 2, 3)}
    truth[2][1, 6:, :] = 1  # the second case's NA misses 2 rows in the prediction
    write_submission(tmp_path / "gt", truth)
    scores = evaluate_paths(tmp_path / "gt", tmp_path / "masks", images)
    assert np.isnan(scores.classes[1].dice) and np.isnan(scores.classes[3].dice)
    # dice per image: 1.0 and 2*48 / (48 + 64); the challenge averages over images
    assert scores.classes[2].dice == pytest.approx((1.0 + 96 / 112) / 2)
    assert read_submission(tmp_path / "gt")[2].shape == (2, 8, 8)
