"""The phantom generator: determinism, the exact DRAC layout, names, and lesion statistics."""

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.data import release as data
from drac_algo.tools.synth import case_ids, generate_case, preview_grid, write_dataset
from drac_algo.tools.synth import dataset as synth_dataset
from drac_algo.tools.synth.__main__ import main

TASK = "A. Segmentation"
IMAGES = f"{TASK}/1. Original Images"
TRUTHS = f"{TASK}/2. Groundtruths"
SPLITS = {"train": "a. Training Set", "test": "b. Testing Set"}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(phantom_release):
    """5 training and 3 test images of 64 x 64, with the preview."""
    return phantom_release(5, 3, 64, seed=3)


def test_generate_case_shapes_and_values():
    image, masks = generate_case(np.random.default_rng(0), 96)
    assert image.shape == (96, 96) and image.dtype == np.uint8
    assert sorted(masks) == [1, 2, 3]
    for mask in masks.values():
        assert mask.shape == (96, 96) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
    assert image.std() > 5  # not a blank picture


def test_generate_case_is_deterministic_per_seed():
    a, ma = generate_case(np.random.default_rng(7), 64)
    b, mb = generate_case(np.random.default_rng(7), 64)
    c, _ = generate_case(np.random.default_rng(8), 64)
    assert np.array_equal(a, b)
    assert all(np.array_equal(ma[k], mb[k]) for k in ma)
    assert not np.array_equal(a, c)


def test_rejects_tiny_size():
    with pytest.raises(DracInputError, match="at least 16"):
        generate_case(np.random.default_rng(0), 8)


def test_exact_layout(small_dataset):
    manifest = json.loads((small_dataset / "phantom.json").read_text())
    assert {p.name for p in small_dataset.iterdir()} == {TASK, "phantom.json", "preview.png"}
    assert {p.name for p in (small_dataset / TASK).iterdir()} == {
        "1. Original Images",
        "2. Groundtruths",
    }
    for split, folder in SPLITS.items():
        names = set(manifest["cases"][split])
        images = small_dataset / IMAGES / folder
        assert {p.name for p in images.iterdir()} == names
        truths = small_dataset / TRUTHS / folder
        assert {p.name for p in truths.iterdir()} == {c.folder for c in LESION_CLASSES}
        for name in names:
            image = cv2.imread(str(images / name), cv2.IMREAD_UNCHANGED)
            assert image.shape == (64, 64) and image.dtype == np.uint8
        for cls in LESION_CLASSES:
            written = {p.name for p in (truths / cls.folder).iterdir()}
            expected = {n for n, keys in manifest["cases"][split].items() if cls.key in keys}
            assert written == expected
            for name in written:
                mask = cv2.imread(str(truths / cls.folder / name), cv2.IMREAD_UNCHANGED)
                assert mask.shape == (64, 64) and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}  # present, and only 0/255


def test_dataset_is_read_by_the_project_reader(small_dataset):
    layout = data.find_layout(small_dataset)
    train = data.list_cases(layout, "train")
    test = data.list_cases(layout, "test")
    assert len(train) == 5 and len(test) == 3
    assert [c.case_id for c in train] == sorted(c.case_id for c in train)


def test_same_arguments_same_bytes_other_seed_other_bytes(tmp_path):
    write_dataset(tmp_path / "a", n_train=3, n_test=2, size=48, seed=1, preview=False)
    write_dataset(tmp_path / "b", n_train=3, n_test=2, size=48, seed=1, preview=False)
    write_dataset(tmp_path / "c", n_train=3, n_test=2, size=48, seed=2, preview=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    images_a = {k: v for k, v in _files(tmp_path / "a").items() if "Original" in k}
    images_c = {k: v for k, v in _files(tmp_path / "c").items() if "Original" in k}
    assert set(images_a.values()).isdisjoint(images_c.values())


def test_test_split_does_not_depend_on_n_train(tmp_path):
    write_dataset(tmp_path / "a", n_train=1, n_test=3, size=48, seed=5, preview=False)
    write_dataset(tmp_path / "b", n_train=6, n_test=3, size=48, seed=5, preview=False)
    test_a = {k: v for k, v in _files(tmp_path / "a").items() if SPLITS["test"] in k}
    test_b = {k: v for k, v in _files(tmp_path / "b").items() if SPLITS["test"] in k}
    assert test_a and test_a == test_b


@pytest.mark.parametrize(
    ("n_train", "n_test", "seed"), [(3, 3, 0), (24, 8, 0), (5, 0, 1), (0, 4, 2), (60, 20, 9)]
)
def test_case_ids_are_distinct_and_sort_differently_as_text(n_train, n_test, seed):
    train, test = case_ids(n_train, n_test, seed)
    assert len(train) == n_train and len(test) == n_test
    assert len(set(train) | set(test)) == n_train + n_test
    assert all(v >= 1 for v in train + test)
    for ids in (train, test):
        if len(ids) >= 3:
            assert max(ids) >= 1000 and min(ids) < 100
            names = [synth_dataset.case_name(v) for v in ids]
            assert sorted(names) != [synth_dataset.case_name(v) for v in sorted(ids)]
    assert all(len(synth_dataset.case_name(v)) in (7, 8) for v in train + test)  # 3 or 4 digits


def test_case_ids_of_small_splits():
    train, test = case_ids(1, 1, 0)
    assert len(train) == len(test) == 1 and train != test


def test_refuses_non_empty_output_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DracInputError, match="not empty"):
        write_dataset(out, n_train=1, n_test=1, size=32, preview=False)
    assert (out / "keep.txt").exists()
    write_dataset(out, n_train=1, n_test=1, size=32, overwrite=True, preview=False)
    assert not (out / "keep.txt").exists()
    assert (out / IMAGES / SPLITS["train"]).is_dir()


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "ds").mkdir()
    write_dataset(tmp_path / "ds", n_train=1, n_test=0, size=32, preview=False)
    assert len(list((tmp_path / "ds" / IMAGES / SPLITS["train"]).iterdir())) == 1


def test_failure_leaves_no_partial_dataset(tmp_path, monkeypatch):
    calls = []

    def failing(rng, size, params=None):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("boom")
        return generate_case(rng, size, params)

    monkeypatch.setattr(synth_dataset, "generate_case", failing)
    with pytest.raises(RuntimeError, match="boom"):
        write_dataset(tmp_path / "ds", n_train=4, n_test=1, size=32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"n_train": 0, "n_test": 0}, {"n_train": -1}, {"size": 8}, {"seed": -1}],
)
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(DracInputError):
        write_dataset(tmp_path / "ds", **{"n_train": 1, "n_test": 1, "size": 32, **kwargs})


def test_cli_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ds"
    args = [str(out), "--n-train", "2", "--n-test", "1", "--image-size", "32", "--seed", "4"]
    result = CliRunner().invoke(main, [*args, "--no-preview"])
    assert result.exit_code == 0, result.output
    assert len(list((out / IMAGES / SPLITS["train"]).iterdir())) == 2
    assert not (out / "preview.png").exists()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2
    assert "not empty" in again.output
    replaced = CliRunner().invoke(main, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (out / "preview.png").exists()


def test_preview_grid_shape():
    cases = [(f"case {i}", *generate_case(np.random.default_rng(i), 64)) for i in range(3)]
    grid = preview_grid(cases)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[1] == 4 * 64  # two cases per row, image + overlay each
    assert grid.shape[0] == 2 * 64 + 32  # two rows (odd count padded) + legend
    with pytest.raises(DracInputError):
        preview_grid([])


# Drawing these 40 cases takes about 7 s: every test that uses them is marked slow.
@pytest.fixture(scope="module")
def many_cases():
    return [generate_case(np.random.default_rng([11, i]), 256) for i in range(40)]


@pytest.mark.slow
def test_lesion_statistics_match_the_reference(many_cases):
    """Area fractions and presence rates near the DRAC training set / organisers' masks."""
    fraction = {k: np.array([m[k].mean() for _, m in many_cases]) for k in (1, 2, 3)}
    present = {k: np.mean(v > 0) for k, v in fraction.items()}
    assert 0.10 <= fraction[2].mean() <= 0.30  # NA ~19 %
    assert 0.0005 <= fraction[1].mean() <= 0.003  # IRMA ~0.12 %
    assert 0.002 <= fraction[3].mean() <= 0.015  # NV ~0.6 %
    assert abs(present[1] - 0.79) <= 0.15
    assert present[2] >= 0.85
    assert abs(present[3] - 0.32) <= 0.15


@pytest.mark.slow
def test_lesion_component_sizes(many_cases):
    """Median component areas (scaled to 1024 px) near the organisers' medians."""
    scale = (1024 / 256) ** 2
    for index, lo, hi in ((1, 500, 2500), (2, 8000, 60000), (3, 1000, 5000)):
        areas = []
        for _, masks in many_cases:
            n, _, stats, _ = cv2.connectedComponentsWithStats(masks[index])
            areas += list(stats[1:n, cv2.CC_STAT_AREA] * scale)
        assert lo <= np.median(areas) <= hi, (index, np.median(areas))


@pytest.mark.slow
def test_masks_match_what_is_drawn(many_cases):
    """NA is darker than the retina around it; IRMA and NV are brighter than their ring."""
    ring = np.ones((9, 9), np.uint8)
    darker, brighter = [], {1: [], 3: []}
    for image, masks in many_cases:
        img = image.astype(np.float32)
        na = masks[2].astype(bool)
        near = cv2.dilate(masks[2], np.ones((41, 41), np.uint8)).astype(bool) & ~na
        if na.any() and near.any():
            darker.append(img[na].mean() < img[near].mean())
        for index in (1, 3):
            lesion = masks[index].astype(bool)
            if lesion.any():
                around = cv2.dilate(masks[index], ring).astype(bool) & ~lesion
                brighter[index].append(img[lesion].mean() > img[around].mean())
    assert np.mean(darker) >= 0.9
    assert np.mean(brighter[1]) >= 0.8
    assert np.mean(brighter[3]) >= 0.8


@pytest.mark.slow
def test_irma_and_nv_sit_at_nonperfusion(many_cases):
    near_na = []
    for _, masks in many_cases:
        if masks[2].any() and masks[1].any():
            zone = cv2.dilate(masks[2], np.ones((15, 15), np.uint8))
            near_na.append(bool((zone & masks[1]).any()))
    assert np.mean(near_na) >= 0.9
