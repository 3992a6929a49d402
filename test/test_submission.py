import dataclasses
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from drac_algo.common.errors import DracInputError
from drac_algo.data.submission import (
    NiftiHeader,
    main,
    read_header,
    read_submission,
    write_submission,
    zip_submission,
)

EXAMPLE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "reference"
    / "drac2022_task1_submission_example"
)
# The example's headers and per-slice lesion counts, recorded from those files (which stay
# outside the repository, as shared/reference/README.md asks), so every clone checks the writer.
RECORDED = Path(__file__).parent / "fixtures" / "organisers_example.json"
# Header keys whose value depends on the stack's size, not on how it was written.
SIZE_KEYS = {"dim[1]", "dim[2]", "dim[3]"}


def _stacks(n=4, h=6, w=5):
    rng = np.random.default_rng(0)
    return {i: (rng.random((n, h, w)) < 0.3).astype(np.uint8) for i in (1, 2, 3)}


def _recorded_header(name: str) -> NiftiHeader:
    entry = json.loads(RECORDED.read_text())["files"][name]
    fields = {f.name for f in dataclasses.fields(NiftiHeader)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k in fields}
    return NiftiHeader(**values)


def _example_or_skip() -> Path:
    if not all((EXAMPLE / f"{i}.nii.gz").is_file() for i in (1, 2, 3)):
        pytest.skip(f"organisers' example submission not found at {EXAMPLE}")
    return EXAMPLE


def test_round_trip_and_geometry(tmp_path):
    stacks = _stacks()
    paths = write_submission(tmp_path / "sub", stacks)
    assert [p.name for p in paths] == ["1.nii.gz", "2.nii.gz", "3.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [p.name for p in paths]
    back = read_submission(tmp_path / "sub")
    for i in (1, 2, 3):
        assert back[i].dtype == np.uint8
        np.testing.assert_array_equal(back[i], stacks[i])
    header = read_header(paths[0])
    assert header.size == (5, 6, 4)  # (W, H, N): GetImageFromArray without transpose
    assert header.spacing == (1.0, 1.0, 1.0) and header.origin == (0.0, 0.0, 0.0)
    assert np.allclose(header.direction, np.eye(3).ravel())
    assert header.pixel_type == "8-bit unsigned integer" and header.components == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: {**s, 2: s[2] * 255}, r"class 2: values must be \{0, 1\}; found \{0, 255\}"),
        (lambda s: {**s, 1: s[1].astype(np.float32)}, "class 1: expected dtype uint8"),
        (lambda s: {**s, 3: s[3][0]}, r"class 3: expected a non-empty \(N, H, W\)"),
        (lambda s: {1: s[1], 2: s[2]}, r"missing \[3\]"),
        (lambda s: {**s, 2: s[2][:3]}, "one .* shape"),
    ],
)
def test_writer_rejects_bad_stacks(tmp_path, change, message):
    with pytest.raises(DracInputError, match=message):
        write_submission(tmp_path / "sub", change(_stacks()))
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())


def test_reader_errors_name_the_file(tmp_path):
    write_submission(tmp_path, _stacks())
    (tmp_path / "3.nii.gz").unlink()
    with pytest.raises(DracInputError, match=r"lacks 3\.nii\.gz; it holds: 1\.nii\.gz, 2\.nii\.gz"):
        read_submission(tmp_path)
    sitk.WriteImage(sitk.GetImageFromArray(_stacks()[3] * 255), str(tmp_path / "3.nii.gz"))
    with pytest.raises(DracInputError, match=r"3\.nii\.gz: values must be \{0, 1\}"):
        read_submission(tmp_path)
    (tmp_path / "3.nii.gz").write_bytes(b"garbage")
    with pytest.raises(DracInputError, match=r"3\.nii\.gz: unreadable"):
        read_submission(tmp_path)


def test_reader_accepts_other_pixel_types_holding_0_1(tmp_path):
    stacks = _stacks()
    write_submission(tmp_path, stacks)
    sitk.WriteImage(sitk.GetImageFromArray(stacks[2].astype(np.int16)), str(tmp_path / "2.nii.gz"))
    back = read_submission(tmp_path)
    assert back[2].dtype == np.uint8
    np.testing.assert_array_equal(back[2], stacks[2])


def test_zip_submission(tmp_path):
    write_submission(tmp_path / "sub", _stacks())
    zip_path = zip_submission(tmp_path / "sub", tmp_path / "out" / "team.zip", "TEAM_X")
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["TEAM_X/1.nii.gz", "TEAM_X/2.nii.gz", "TEAM_X/3.nii.gz"]
        assert zf.read("TEAM_X/2.nii.gz") == (tmp_path / "sub" / "2.nii.gz").read_bytes()
    with pytest.raises(DracInputError, match="team name"):
        zip_submission(tmp_path / "sub", tmp_path / "bad.zip", "a/b")


def _zip_cli(*args):
    return CliRunner().invoke(main, ["zip", *map(str, args)])


def test_zip_command_checks_the_stacks_against_the_case_list(tmp_path):
    sub = tmp_path / "sub"
    write_submission(sub, _stacks(n=3, h=6, w=5))
    images = tmp_path / "images"
    images.mkdir()
    for name in ("086.png", "090.png", "1200.png"):
        cv2.imwrite(str(images / name), np.zeros((6, 5), np.uint8))
    done = _zip_cli(sub, tmp_path / "T.zip", "--team", "T", "--images", images)
    assert done.exit_code == 0, done.output
    assert f"3 cases ({images})" in done.stdout
    with zipfile.ZipFile(tmp_path / "T.zip") as zf:
        assert zf.namelist() == ["T/1.nii.gz", "T/2.nii.gz", "T/3.nii.gz"]

    # One image more than the stacks have slices: refused, no zip.
    cv2.imwrite(str(images / "1300.png"), np.zeros((6, 5), np.uint8))
    done = _zip_cli(sub, tmp_path / "U.zip", "--team", "T", "--images", images)
    assert done.exit_code == 2
    assert "holds 3 slices per class but the case list has 4 cases (086.png ... 1300.png)" in (
        done.stderr
    )
    assert not (tmp_path / "U.zip").exists()

    # The case list from process.py's results.json: a case of another size is named.
    cases = [{"file": f"{i}.png", "shape": [6, 5]} for i in (1, 2)] + [
        {"file": "3.png", "shape": [7, 5]}
    ]
    (sub / "results.json").write_text(json.dumps({"mode": "batch", "cases": cases}))
    done = _zip_cli(sub, tmp_path / "V.zip", "--team", "T")
    assert done.exit_code == 2 and "slices are 6 x 5 (H x W) but case 3.png is 7 x 5" in done.stderr
    (sub / "results.json").unlink()
    done = _zip_cli(sub, tmp_path / "V.zip", "--team", "T")
    assert done.exit_code == 2 and "pass --images" in done.stderr


@pytest.mark.parametrize("name", ["1.nii.gz", "2.nii.gz", "3.nii.gz"])
def test_recorded_headers_are_the_organisers_files(name):
    # Local check (the files live in ../shared/reference): the recorded fixture is their truth.
    assert _recorded_header(name) == read_header(_example_or_skip() / name)


def test_header_matches_the_organisers_example(tmp_path):
    example = _recorded_header("1.nii.gz")
    ours = read_header(write_submission(tmp_path, _stacks(n=3, h=8, w=7))[0])
    assert example.size == (1024, 1024, 65) and ours.size == (7, 8, 3)  # both (W, H, N)
    assert ours.spacing == example.spacing
    assert ours.origin == example.origin
    assert ours.direction == example.direction
    assert (ours.pixel_type, ours.components) == (example.pixel_type, example.components)
    assert set(ours.metadata) == set(example.metadata)
    differing = {k for k in example.metadata if ours.metadata[k] != example.metadata[k]}
    # xyzt_units: ITK 5.4 sets the time-unit bits (10 = mm + s), the example has 2 (mm only);
    # the spatial unit must agree. See the drac_algo.data.submission docstring.
    assert differing <= SIZE_KEYS | {"xyzt_units"}
    assert int(ours.metadata["xyzt_units"]) & 0x07 == int(example.metadata["xyzt_units"]) & 0x07
    assert [ours.metadata[k] for k in sorted(SIZE_KEYS)] == ["7", "8", "3"]


def test_reader_reads_the_organisers_example():
    stacks = read_submission(_example_or_skip())
    lesion_slices = {}
    for index, stack in stacks.items():
        assert stack.shape == (65, 1024, 1024) and stack.dtype == np.uint8
        lesion_slices[index] = int((stack.reshape(65, -1).max(axis=1) > 0).sum())
    assert lesion_slices == {1: 24, 2: 62, 3: 22}  # as counted in shared/reference/README.md
    recorded = json.loads(RECORDED.read_text())["files"]
    assert {i: recorded[f"{i}.nii.gz"]["lesion_slices"] for i in (1, 2, 3)} == lesion_slices
    assert {i: int(stacks[i].sum()) for i in (1, 2, 3)} == {
        i: recorded[f"{i}.nii.gz"]["positive_pixels"] for i in (1, 2, 3)
    }
