"""Issue 21, the input side: every malformed input is an ``error:`` naming it (exit 2), never a
traceback and never a silently smaller run. One test per case the issue lists."""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from drac_algo.common.errors import DracInputError

CONTAINER = Path(__file__).parent / "container"
DEEP = 100_000  # nested lists: Python's JSON parser gives up at ~1000 with RecursionError


def _png(path: Path, shape=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, 7, np.uint8))
    return path


def _stacks(n=2, size=(6, 5)):
    stack = np.zeros((n, *size), np.uint8)
    stack[:, 1:3, 1:3] = 1
    return {1: stack, 2: stack.copy(), 3: stack.copy()}


# --- 5. an input that cannot be read is named, not dropped ---------------------------------


@pytest.mark.parametrize("kind", ["dangling", "loop", "folder"])
def test_an_unreadable_image_entry_is_named_not_dropped(tmp_path, kind):
    from drac_algo.data.release import list_images

    _png(tmp_path / "001.png")
    bad = tmp_path / "002.png"
    if kind == "dangling":
        bad.symlink_to(tmp_path / "gone.png")
        reason = f"a symbolic link to {str(tmp_path / 'gone.png')!r}, which does not exist"
    elif kind == "loop":
        bad.symlink_to(bad)
        reason = "a symbolic link that loops"
    else:
        bad.mkdir()
        reason = "it is a folder"
    with pytest.raises(DracInputError) as caught:
        list_images(tmp_path)
    message = str(caught.value)
    assert f"{tmp_path}: 1 image entry cannot be read, so their cases would be missing" in message
    assert f"{bad}: cannot read this image file: {reason}" in message


def test_an_unreadable_case_of_a_drac_tree_is_named(make_drac):
    from drac_algo.data.release import find_layout, list_cases

    root = make_drac({"a": {1: {1: np.ones((32, 32))}, 2: {}}})
    layout = find_layout(root)
    image = layout.train_images / "002.png"
    image.unlink()
    image.symlink_to(layout.train_images / "nowhere.png")
    with pytest.raises(DracInputError, match="002.png: cannot read this image file"):
        list_cases(layout, "train")


# --- 6. tracebacks on malformed files -----------------------------------------------------


def test_a_deeply_nested_manifest_is_an_error(tmp_path):
    from drac_algo.bundle.store import load_bundle

    (tmp_path / "manifest.json").write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(DracInputError, match=r"manifest.json: nested deeper than 64 levels"):
        load_bundle(tmp_path)


def test_a_deeply_nested_inputs_json_is_an_error(tmp_path):
    from drac_algo.serve.gc_io import read_inputs_json

    (tmp_path / "inputs.json").write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(DracInputError, match=r"inputs.json: nested deeper than 64 levels"):
        read_inputs_json(tmp_path)


def test_a_deeply_nested_platform_json_is_an_error(tmp_path):
    from drac_algo.serve.job_settings import resolve_job_settings

    (tmp_path / "platform.json").write_text('{"a":' * DEEP + "1" + "}" * DEEP)
    with pytest.raises(DracInputError, match=r"platform.json: nested deeper than 64 levels"):
        resolve_job_settings(tmp_path, environ={})


def test_a_platform_json_that_cannot_be_read_is_not_taken_for_absent(tmp_path):
    from drac_algo.serve.job_settings import resolve_job_settings

    (tmp_path / "platform.json").mkdir()
    with pytest.raises(DracInputError, match="cannot read platform settings .*platform.json"):
        resolve_job_settings(tmp_path, environ={})


def test_a_deeply_nested_config_file_is_an_error(tmp_path):
    from drac_algo.training.config import load_config

    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * DEEP + "]" * DEEP + "\n")
    with pytest.raises(DracInputError, match=r"deep.toml: nested deeper than 64 levels"):
        load_config("irma", path)


def test_a_malformed_results_json_case_list_is_an_error(tmp_path):
    from drac_algo.data.submission import main, write_submission

    write_submission(tmp_path, _stacks())
    results = {"mode": "batch", "cases": [{"file": "1.png", "shape": [6]}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    done = CliRunner().invoke(main, ["zip", str(tmp_path), str(tmp_path / "T.zip"), "--team", "T"])
    assert done.exit_code == 2, done.output
    assert "case 0 is not {'file': NAME, 'shape': [H, W]}" in done.stderr


def test_an_image_beyond_the_size_bound_is_refused_before_decoding(tmp_path):
    from drac_algo.data.images import image_size, load_image

    wide = _png(tmp_path / "1.png", (1, 20_000))
    for read in (load_image, image_size):
        with pytest.raises(DracInputError) as caught:
            read(wide)
        assert str(caught.value) == (
            f"{wide}: image size 20000 x 1 (W x H) exceeds the bound of 16384 pixels per side "
            "and 268435456 (2^28) pixels in all; not decoded"
        )


def test_a_png_header_claiming_a_huge_image_is_refused(tmp_path):
    from drac_algo.data.images import load_image

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 30_000, 30_000, 8, 0, 0, 0, 0)
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr
    path = tmp_path / "1.png"
    path.write_bytes(header + struct.pack(">I", zlib.crc32(ihdr)))
    with pytest.raises(DracInputError, match="image size 30000 x 30000 .* exceeds the bound"):
        load_image(path)


def test_an_input_size_of_a_million_is_an_error_not_an_opencv_failure():
    from drac_algo.data.preprocess import to_network_input

    with pytest.raises(DracInputError, match=r"input_size must be within 1\.\.16384"):
        to_network_input(np.zeros((8, 8), np.uint8), 1_000_000, 0.5, 0.25)


@pytest.fixture
def scored(tmp_path):
    """Two identical submission folders to score."""
    from drac_algo.data.submission import write_submission

    write_submission(tmp_path / "gt", _stacks())
    write_submission(tmp_path / "pred", _stacks())
    return tmp_path


@pytest.mark.parametrize("option", ["--json", "--per-case", "--plot"])
def test_evaluate_refuses_an_output_path_that_is_a_folder(scored, option):
    from drac_algo.tools.evaluate import main

    folder = scored / "out.file"
    folder.mkdir()
    args = ["--gt", scored / "gt", "--pred", scored / "pred", option, folder]
    done = CliRunner().invoke(main, list(map(str, args)))
    assert done.exit_code == 2, done.output
    expected = f"error: {option} {folder}: is a folder; expected the name of a file to write"
    assert expected in done.stderr
    assert not any(p.name.startswith(".") for p in scored.iterdir())


def test_evaluate_reports_a_read_only_folder_by_name(scored, monkeypatch):
    from drac_algo.tools.evaluate import main

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    out = scored / "scores.json"
    done = CliRunner().invoke(
        main, ["--gt", str(scored / "gt"), "--pred", str(scored / "pred"), "--json", str(out)]
    )
    assert done.exit_code == 2, done.output
    assert f"error: --json {out}: cannot write in {scored}: Read-only file system" in done.stderr
    assert not out.exists()


def test_submission_zip_refuses_a_folder_and_a_read_only_place(tmp_path, monkeypatch):
    from drac_algo.data.submission import main, write_submission

    write_submission(tmp_path / "sub", _stacks())
    _png(tmp_path / "images" / "1.png", (6, 5))
    _png(tmp_path / "images" / "2.png", (6, 5))
    target = tmp_path / "T.zip"
    target.mkdir()

    def zip_to(path):
        args = ["zip", tmp_path / "sub", path, "--team", "T", "--images", tmp_path / "images"]
        return CliRunner().invoke(main, list(map(str, args)))

    done = zip_to(target)
    assert done.exit_code == 2, done.output
    assert f"error: TEAM_ZIP {target}: is a folder" in done.stderr

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    done = zip_to(tmp_path / "U.zip")
    assert done.exit_code == 2, done.output
    assert f"error: cannot write {tmp_path / 'U.zip'}: No space left on device" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T.zip", "images", "sub"]


def test_a_write_error_names_the_final_file(tmp_path, monkeypatch):
    from drac_algo.common.fsutil import atomic_write_text

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError) as caught:
        atomic_write_text(tmp_path / "out.json", "{}")
    assert str(caught.value) == f"cannot write {tmp_path / 'out.json'}: No space left on device"
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


# --- 7. team names, a JPEG named .png, where --require-gpu came from ------------------------


@pytest.mark.parametrize("team", ["a\nb", "a:b", "t*", "a?b", "<t>", "a|b", "x" * 300, ".t", ""])
def test_team_names_follow_a_stated_rule(tmp_path, team):
    from drac_algo.data.submission import write_submission, zip_submission

    write_submission(tmp_path / "sub", _stacks())
    with pytest.raises(DracInputError) as caught:
        zip_submission(tmp_path / "sub", tmp_path / "t.zip", team)
    shown = repr(team) if len(repr(team)) <= 200 else repr(team)[:197] + "..."
    assert str(caught.value) == (
        f"team name {shown}: expected 1 to 64 ASCII letters, digits, '-', '_' or '.', not "
        "starting with '.' (it names the folder in the zip)"
    )
    assert not (tmp_path / "t.zip").exists()


def test_a_png_holding_a_jpeg_is_read_with_a_warning(tmp_path, caplog):
    from drac_algo.data.images import load_image

    path = tmp_path / "1.png"
    ok, encoded = cv2.imencode(".jpg", np.full((8, 8), 100, np.uint8))
    path.write_bytes(encoded.tobytes())
    with caplog.at_level(logging.WARNING):
        assert load_image(path).pixels.shape == (8, 8)
    assert (
        f"{path}: named .png but its content is a JPEG file (lossy: its pixels are not the "
        "original's); reading it as JPEG"
    ) in caplog.text


def test_require_gpu_on_the_command_line_is_reported_as_the_command_line(tmp_path, monkeypatch):
    from drac_algo.engine.gpu import GpuStatus, GpuUnavailableError
    from drac_algo.serve import pipeline
    from drac_algo.serve.job_settings import resolve_job_settings

    monkeypatch.setattr(pipeline, "gpu_status", lambda: GpuStatus(visible=False, torch_version="x"))
    job = resolve_job_settings(tmp_path, require_gpu=True, environ={})
    with pytest.raises(GpuUnavailableError, match=r"^the GPU is required \(command line\) but"):
        pipeline._check_device(SimpleNamespace(device="auto"), job)
    job = resolve_job_settings(tmp_path, environ={"DRAC_REQUIRE_GPU": "1"})
    with pytest.raises(GpuUnavailableError, match=r"required \(environment DRAC_REQUIRE_GPU\)"):
        pipeline._check_device(SimpleNamespace(device="auto"), job)


def test_fixtures_still_read():
    """The checked-in job and bundle pass the stricter readers unchanged."""
    from drac_algo.bundle.store import load_bundle
    from drac_algo.serve.gc_io import find_job_image

    assert load_bundle(CONTAINER / "model").classes
    assert find_job_image(CONTAINER / "inputs" / "gc-job")[1].suffix == ".mha"
