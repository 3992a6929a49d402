import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from drac_algo.data.release import find_layout
from drac_algo.data.submission import write_submission
from drac_algo.tools.evaluate import main

REPO = Path(__file__).resolve().parents[1]
IDS = [86, 285, 1299]  # integer order; "1299" sorts before "285" as text


def _box(r0, r1, c0, c1, size=32):
    mask = np.zeros((size, size), np.uint8)
    mask[r0:r1, c0:c1] = 1
    return mask


# Ground truth per case and class (only lesions present get a file) and a prediction whose
# scores are worked out by hand:
#   class 1: case 86 gt 16 px, pred 8 px inside -> dice 16/24, iou 8/16; case 285 gt empty (FP
#            ignored); case 1299 gt 4 px, pred empty -> 0, 0.  Class: dice 1/3, iou 1/4, 2 scored.
#   class 2: case 285 exact -> 1, 1 (FP on case 86 ignored).  Class: 1, 1, 1 scored.
#   class 3: no gt anywhere -> NaN (null), 0 scored.  Means over classes 1 and 2: 2/3, 5/8.
GT = {86: {1: _box(0, 4, 0, 4)}, 285: {2: _box(0, 8, 0, 8)}, 1299: {1: _box(10, 12, 10, 12)}}
PRED = {
    86: {1: _box(0, 4, 0, 2), 2: _box(20, 22, 20, 22)},
    285: {1: _box(30, 31, 30, 31), 2: _box(0, 8, 0, 8)},
    1299: {3: _box(1, 2, 1, 2)},
}
EXPECTED = {
    "classes": {
        "1": {"dice": pytest.approx(1 / 3), "iou": pytest.approx(1 / 4), "n_scored": 2},
        "2": {"dice": 1.0, "iou": 1.0, "n_scored": 1},
        "3": {"dice": None, "iou": None, "n_scored": 0},
    },
    "mean_dice": pytest.approx(2 / 3),
    "mean_iou": pytest.approx(5 / 8),
}


def _stacks(cases):
    zeros = np.zeros((32, 32), np.uint8)
    return {i: np.stack([cases[cid].get(i, zeros) for cid in IDS]) for i in (1, 2, 3)}


@pytest.fixture
def gt_root(make_drac):
    return make_drac({"b": GT}, name="gt")


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def _scores(tmp_path, *args):
    out = tmp_path / "scores.json"
    result = _run(*args, "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    cases = data.pop("cases")
    assert data == EXPECTED
    assert list(data) == ["classes", "mean_dice", "mean_iou"]
    assert len(cases) == 3 * len(IDS)
    return result


def test_png_ground_truth_against_a_submission(tmp_path, gt_root):
    layout = find_layout(gt_root)
    write_submission(tmp_path / "sub", _stacks(PRED))
    result = _scores(
        tmp_path, "--gt", layout.test_masks, "--pred", tmp_path / "sub", "--images",
        layout.test_images,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[1].split()[-3:] == ["0.3333", "0.2500", "2/3"]
    assert lines[4].split()[-2:] == ["0.6667", "0.6250"]
    assert "class 3 (Neovascularization): no image has a ground-truth lesion" in result.stderr


def test_per_case_rows_csv_plot_and_worst_cases(tmp_path, gt_root):
    layout = find_layout(gt_root)
    write_submission(tmp_path / "sub", _stacks(PRED))
    out = tmp_path / "scores.json"
    result = _run(
        "--gt", layout.test_masks, "--pred", tmp_path / "sub", "--images", layout.test_images,
        "--json", out, "--per-case", tmp_path / "cases.csv", "--plot", tmp_path / "cases.png",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = [p.name for p in sorted(layout.test_images.iterdir(), key=lambda p: int(p.stem))]
    rows = list(csv.DictReader((tmp_path / "cases.csv").open()))
    assert [(r["case"], r["class"]) for r in rows] == [
        (n, str(i)) for n in names for i in (1, 2, 3)
    ]
    by = {(r["case"], r["class"]): r for r in rows}
    # class 1, case 86: gt 16 px, pred 8 px inside; case 285: not scored (FP ignored); 1299: 0.
    assert by[names[0], "1"] == {
        "case": names[0], "class": "1", "lesion": "irma", "dice": "0.666667", "iou": "0.500000",
        "gt_pixels": "16", "pred_pixels": "8", "scored": "yes", "overlap_pixels": "8",
        "precision": "1.000000", "recall": "0.500000", "gt_components": "1",
        "pred_components": "1", "found_components": "1", "false_components": "0",
    }  # fmt: skip
    # case 285 class 1: one predicted pixel, no lesion: a false component, recall undefined.
    assert (by[names[1], "1"]["false_components"], by[names[1], "1"]["recall"]) == ("1", "")
    assert (by[names[1], "1"]["dice"], by[names[1], "1"]["pred_pixels"]) == ("", "1")
    assert by[names[1], "1"]["scored"] == "no"
    assert (by[names[2], "1"]["dice"], by[names[2], "1"]["gt_pixels"]) == ("0.000000", "4")
    assert by[names[1], "2"]["dice"] == "1.000000"
    assert all(r["scored"] == "no" for r in rows if r["class"] == "3")
    cases = json.loads(out.read_text())["cases"]
    assert cases[0] == {
        "case": names[0], "class": 1, "lesion": "irma", "dice": pytest.approx(2 / 3),
        "iou": 0.5, "gt_pixels": 16, "pred_pixels": 8, "scored": True, "overlap_pixels": 8,
        "precision": 1.0, "recall": 0.5, "gt_components": 1, "pred_components": 1,
        "found_components": 1, "false_components": 0,
    }  # fmt: skip
    assert cases[1]["dice"] is None and cases[1]["scored"] is False  # class 2 absent in case 86
    assert f"worst irma: {names[2]} 0.000, {names[0]} 0.667" in result.stdout
    assert "worst na:" in result.stdout and "worst nv" not in result.stdout
    assert (tmp_path / "cases.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_prediction_class_folder_is_warned_about(tmp_path, gt_root, make_drac):
    pred = find_layout(make_drac({"b": {86: {2: _box(0, 2, 0, 2)}}}, name="pred")).test_masks
    result = _run("--gt", gt_root, "--pred", pred)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "holds no mask file" in line]
    assert len(warned) == 2 and "class 1 (irma)" in warned[0] and "class 3 (nv)" in warned[1]


def test_outputs_into_a_missing_folder_are_refused_before_scoring(tmp_path, gt_root):
    write_submission(tmp_path / "sub", _stacks(PRED))
    result = _run("--gt", gt_root, "--pred", tmp_path / "sub", "--per-case", tmp_path / "no/c.csv")
    assert result.exit_code == 2
    assert f"expected a writable folder {tmp_path / 'no'}; it does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


def test_submissions_without_a_case_list_name_cases_by_slice(tmp_path, gt_root):
    write_submission(tmp_path / "gt", _stacks(GT))
    write_submission(tmp_path / "pred", _stacks(PRED))
    result = _run("--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--per-case",
                  tmp_path / "c.csv")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert [r["case"] for r in rows[::3]] == ["#1", "#2", "#3"]
    assert "worst irma: #3 0.000, #1 0.667" in result.stdout


def test_whole_drac_root_picks_test_ground_truth_and_images(tmp_path, make_drac):
    root = make_drac({"a": {1: {1: _box(0, 1, 0, 1)}}, "b": GT}, sep="._", outer="copy")
    write_submission(tmp_path / "sub", _stacks(PRED))
    _scores(tmp_path, "--gt", root, "--pred", tmp_path / "sub")


def test_png_folders_on_both_sides(tmp_path, gt_root, make_drac):
    pred = find_layout(make_drac({"b": PRED}, name="pred")).test_masks
    _scores(tmp_path, "--gt", gt_root, "--pred", pred)


def test_submissions_on_both_sides(tmp_path, gt_root):
    write_submission(tmp_path / "gt", _stacks(GT))
    write_submission(tmp_path / "pred", _stacks(PRED))
    _scores(tmp_path, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred")
    images = find_layout(gt_root).test_images
    _scores(tmp_path, "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--images", images)


def test_png_masks_need_a_case_list(tmp_path, gt_root):
    write_submission(tmp_path / "sub", _stacks(PRED))
    result = _run("--gt", find_layout(gt_root).test_masks, "--pred", tmp_path / "sub")
    assert result.exit_code == 2
    assert "--images is needed" in result.stderr


def test_case_count_mismatch_is_an_error(tmp_path, gt_root):
    stacks = {i: s[:2] for i, s in _stacks(PRED).items()}
    write_submission(tmp_path / "sub", stacks)
    result = _run("--gt", gt_root, "--pred", tmp_path / "sub")
    assert result.exit_code == 2
    assert "differ in (cases, H, W)" in result.stderr and "(3, 32, 32)" in result.stderr


def test_image_size_mismatch_is_an_error(tmp_path, gt_root):
    stacks = {i: s[:, :16] for i, s in _stacks(PRED).items()}
    write_submission(tmp_path / "sub", stacks)
    result = _run("--gt", gt_root, "--pred", tmp_path / "sub")
    assert result.exit_code == 2 and "(3, 16, 32)" in result.stderr


def test_0_255_prediction_is_an_error(tmp_path, gt_root):
    write_submission(tmp_path / "sub", _stacks(PRED))
    sitk.WriteImage(sitk.GetImageFromArray(_stacks(PRED)[1] * 255), str(tmp_path / "sub/1.nii.gz"))
    result = _run("--gt", gt_root, "--pred", tmp_path / "sub")
    assert result.exit_code == 2
    assert "1.nii.gz: values must be {0, 1}; found {0, 255}" in result.stderr


def test_png_prediction_with_bad_values_is_an_error(tmp_path, gt_root, make_drac):
    pred = find_layout(make_drac({"b": PRED}, name="pred")).test_masks
    bad = pred / "2. Nonperfusion Areas" / "285.png"
    cv2.imwrite(str(bad), np.full((32, 32), 7, np.uint8))
    result = _run("--gt", gt_root, "--pred", pred)
    assert result.exit_code == 2 and "285.png: mask values" in result.stderr


def test_unrecognised_folder_lists_its_children(tmp_path, gt_root):
    (tmp_path / "odd" / "masks").mkdir(parents=True)
    result = _run("--gt", gt_root, "--pred", tmp_path / "odd")
    assert result.exit_code == 2
    assert "neither a submission folder" in result.stderr and "holds: masks/" in result.stderr


@pytest.mark.slow
def test_module_entry_point(tmp_path):
    stacks = _stacks(GT)
    write_submission(tmp_path / "gt", stacks)
    args = ["-m", "drac_algo.evaluate", "--gt", tmp_path / "gt", "--pred", tmp_path / "gt"]
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    mean = [line for line in done.stdout.splitlines() if line.startswith("mean over classes")]
    assert mean[0].split()[-2:] == ["1.0000", "1.0000"]
