import cv2
import numpy as np
import pytest

from drac_algo.common.errors import DracInputError
from drac_algo.data.release import (
    case_id,
    find_layout,
    folder_token,
    list_cases,
    list_images,
    load_case_masks,
    load_mask_stacks,
    sort_cases,
)


def _square(size=32, at=(2, 2), side=4):
    mask = np.zeros((size, size), np.uint8)
    mask[at[0] : at[0] + side, at[1] : at[1] + side] = 1
    return mask


TRAIN = {82: {1: _square()}, 1000: {2: _square(at=(5, 5))}, 999: {}}
TEST = {86: {3: _square()}}


@pytest.mark.parametrize(
    ("name", "token"),
    [("A. Segmentation", "a"), ("A._Segmentation", "a"), ("1._Original Images", "1"),
     ("b. Testing Set", "b"), ("Segmentation", None), ("086.png", None)],
)  # fmt: skip
def test_folder_token(name, token):
    assert folder_token(name) == token


def test_case_ids_are_integers_and_sorted_by_value():
    assert case_id("x/086.png") == 86
    names = ["1299.png", "999.png", "1000.png", "086.png", "100.png"]
    assert [p.name for p in sort_cases(names)] == [
        "086.png",
        "100.png",
        "999.png",
        "1000.png",
        "1299.png",
    ]


def test_non_integer_and_duplicate_names_are_errors():
    with pytest.raises(DracInputError, match=r"img_1\.png: case name 'img_1' is not an integer"):
        case_id("folder/img_1.png")
    with pytest.raises(DracInputError, match=r"two files for case 86: 086\.png and 86\.png"):
        sort_cases(["086.png", "86.png"])


def test_list_images_skips_hidden_and_other_files(tmp_path):
    for name in ["1000.png", "999.png", "._999.png", ".DS_Store", "readme.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["999.png", "1000.png"]
    (tmp_path / "scan.png").write_bytes(b"")
    with pytest.raises(DracInputError, match=r"scan\.png"):
        list_images(tmp_path)
    with pytest.raises(DracInputError, match="not found"):
        list_images(tmp_path / "missing")


def test_list_images_warns_about_image_types_it_does_not_read(tmp_path, caplog):
    for name in ["086.png", "090.jpg", "091.JPEG", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    with caplog.at_level("WARNING", logger="drac_algo.data.release"):
        assert [p.name for p in list_images(tmp_path)] == ["086.png"]
    (record,) = caplog.records
    assert "2 image file(s) of a type not read here are skipped" in record.getMessage()
    assert "090.jpg, 091.JPEG" in record.getMessage() and "notes.txt" not in record.getMessage()


@pytest.mark.parametrize("sep", [". ", "._"])
@pytest.mark.parametrize("outer", [None, "DRAC2022 copy"])
def test_find_layout_on_both_spellings_and_an_outer_folder(make_drac, sep, outer):
    root = make_drac({"a": TRAIN, "b": TEST}, sep=sep, outer=outer)
    layout = find_layout(root)
    seg = (root / outer if outer else root) / f"A{sep}Segmentation"
    assert layout.root == root
    assert layout.train_images == seg / f"1{sep}Original Images" / f"a{sep}Training Set"
    assert layout.test_images == seg / f"1{sep}Original Images" / f"b{sep}Testing Set"
    assert layout.train_masks == seg / f"2{sep}Groundtruths" / f"a{sep}Training Set"
    assert layout.test_masks == seg / f"2{sep}Groundtruths" / f"b{sep}Testing Set"
    assert find_layout(seg).train_images == layout.train_images  # the "A." folder itself


def test_find_layout_without_ground_truth_and_macos_residue(make_drac):
    root = make_drac({"b": TEST}, gt=False)
    (root / "__MACOSX" / "A. Segmentation").mkdir(parents=True)
    layout = find_layout(root)
    assert layout.train_images is None and layout.train_masks is None
    assert layout.test_masks is None
    assert layout.test_images.name == "b. Testing Set"


def test_find_layout_missing_segmentation_lists_children(tmp_path):
    (tmp_path / "B. Image Quality Assessment").mkdir()
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DracInputError, match=r"no DRAC Task 1 folder.*holds: B\. Image.*notes"):
        find_layout(tmp_path)


def test_find_layout_ambiguous_segmentation(make_drac):
    root = make_drac({"b": TEST})
    (root / "A._Segmentation" / "1._Original Images" / "b._Testing Set").mkdir(parents=True)
    with pytest.raises(DracInputError, match="ambiguous DRAC root.*'A.' folders"):
        find_layout(root)


def test_find_layout_ambiguous_across_outer_folders(make_drac, tmp_path):
    make_drac({"b": TEST}, outer="copy 1")
    make_drac({"b": TEST}, outer="copy 2")
    with pytest.raises(DracInputError, match=r"copy 1.*copy 2"):
        find_layout(tmp_path / "drac")


def test_find_layout_ambiguous_split_folder(make_drac):
    root = make_drac({"b": TEST})
    (root / "A. Segmentation" / "1. Original Images" / "b._Testing Set").mkdir()
    with pytest.raises(DracInputError, match="ambiguous test image folder.*'b. Testing Set'"):
        find_layout(root)


def test_find_layout_missing_class_folder_lists_children(make_drac):
    root = make_drac({"a": TRAIN})
    gt = root / "A. Segmentation" / "2. Groundtruths" / "a. Training Set"
    (gt / "3. Neovascularization").rename(gt / "Neovascularization")
    with pytest.raises(DracInputError, match=r"3\. Neovascularization.*holds: .*Neovasc"):
        find_layout(root)


def test_find_layout_missing_images_folder(tmp_path):
    (tmp_path / "A. Segmentation" / "2. Groundtruths").mkdir(parents=True)
    with pytest.raises(DracInputError, match=r"no original-images folder.*holds: 2\. Groundtruths"):
        find_layout(tmp_path)


def test_list_cases_integer_order_and_missing_masks(make_drac):
    layout = find_layout(make_drac({"a": TRAIN, "b": TEST}))
    cases = list_cases(layout, "train")
    assert [c.case_id for c in cases] == [82, 999, 1000]
    assert [c.image.name for c in cases] == ["082.png", "999.png", "1000.png"]
    assert cases[0].masks[1].name == "082.png"
    assert cases[0].masks[2] is None and cases[0].masks[3] is None
    assert cases[1].masks == {1: None, 2: None, 3: None}
    masks = load_case_masks(cases[0], (32, 32))
    np.testing.assert_array_equal(masks[1], _square())
    assert masks[2].dtype == np.uint8 and not masks[2].any() and masks[2].shape == (32, 32)


def test_list_cases_test_split_without_ground_truth(make_drac):
    layout = find_layout(make_drac({"a": TRAIN, "b": TEST}))
    layout.test_masks = None
    assert list_cases(layout, "test")[0].masks == {1: None, 2: None, 3: None}
    layout.train_masks = None
    with pytest.raises(DracInputError, match="no training ground truth"):
        list_cases(layout, "train")


def test_mask_without_image_is_an_error(make_drac):
    root = make_drac({"a": TRAIN})
    layout = find_layout(root)
    (layout.train_masks / "2. Nonperfusion Areas" / "1000.png").rename(
        layout.train_masks / "2. Nonperfusion Areas" / "1001.png"
    )
    with pytest.raises(DracInputError, match=r"mask without an image: 1001\.png.*Training Set"):
        list_cases(layout, "train")


def test_bad_mask_files_are_errors_naming_the_file(make_drac):
    layout = find_layout(make_drac({"a": TRAIN}))
    mask_path = layout.train_masks / "1. Intraretinal Microvascular Abnormalities" / "082.png"
    case = list_cases(layout, "train")[0]
    cv2.imwrite(str(mask_path), np.full((32, 32), 128, np.uint8))
    with pytest.raises(DracInputError, match=r"082\.png: mask values"):
        load_case_masks(case, (32, 32))
    cv2.imwrite(str(mask_path), np.zeros((16, 32), np.uint8))
    with pytest.raises(DracInputError, match=r"082\.png: mask size"):
        load_case_masks(case, (32, 32))
    mask_path.write_bytes(mask_path.read_bytes()[:30])
    with pytest.raises(DracInputError, match=r"082\.png: unreadable or truncated"):
        load_case_masks(case, (32, 32))


def test_load_mask_stacks(make_drac):
    layout = find_layout(make_drac({"a": TRAIN}))
    images = list_images(layout.train_images)
    stacks = load_mask_stacks(layout.train_masks, images[::-1])  # order comes from the names
    assert sorted(stacks) == [1, 2, 3]
    assert all(s.shape == (3, 32, 32) and s.dtype == np.uint8 for s in stacks.values())
    np.testing.assert_array_equal(stacks[1][0], _square())
    np.testing.assert_array_equal(stacks[2][2], _square(at=(5, 5)))
    assert stacks[1][1:].sum() == 0 and stacks[2][:2].sum() == 0 and stacks[3].sum() == 0


def test_load_mask_stacks_needs_one_image_size(make_drac):
    layout = find_layout(make_drac({"a": TRAIN}))
    cv2.imwrite(str(layout.train_images / "999.png"), np.zeros((16, 32), np.uint8))
    with pytest.raises(DracInputError, match=r"images differ in size.*999\.png is \(16, 32\)"):
        load_mask_stacks(layout.train_masks, list_images(layout.train_images))
