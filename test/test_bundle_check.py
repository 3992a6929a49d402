"""``python -m drac_algo.bundle check DIR``: the summary of a valid bundle, and ``error: ...``
with exit 2 for each way a copy of the container fixture bundle can be broken."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from drac_algo.bundle import cli as bundle_check

REPO = Path(__file__).resolve().parents[1]
PLATFORM = REPO / "test/container/platform-sockets.json"


def edit_manifest(folder, change):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def check(*args):
    return CliRunner().invoke(bundle_check.main, ["check", *map(str, args)])


def test_valid_bundle_one_summary_line(container_bundle):
    result = check(container_bundle)
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    assert re.fullmatch(
        re.escape(
            f"{container_bundle}: valid model bundle: classes 1 irma (1 member), 2 na (1 member), "
            "3 nv (1 member); 3 members; ONNX files: all 3 members; weights load into their "
            "networks, ONNX Runtime agrees with torch within "
        )
        + r"\d\.\de-\d\d \(64 x 64 random image\); checked in \d+\.\d s",
        line,
    ), line


def test_bundle_without_onnx_files_and_with_some(container_bundle):
    edit_manifest(container_bundle, lambda d: d["classes"]["1"]["members"][0].update(onnx=None))
    assert "ONNX files: 2 of 3 members" in check(container_bundle).output
    edit_manifest(
        container_bundle,
        lambda d: [m.update(onnx=None) for c in d["classes"].values() for m in c["members"]],
    )
    for onnx in container_bundle.glob("*.onnx"):
        onnx.unlink()
    result = check(container_bundle)
    assert result.exit_code == 0, result.output
    assert "ONNX files: none (torch backend only" in result.output


def test_one_class_bundle_counts_its_members(container_bundle):
    def keep_na_twice(data):
        member = data["classes"]["2"]["members"][0]
        second = dict(member, file="na_copy.pt", onnx=None)
        data["classes"] = {"2": dict(data["classes"]["2"], members=[member, second])}

    shutil.copy(container_bundle / "na_fold0-seed0.pt", container_bundle / "na_copy.pt")
    edit_manifest(container_bundle, keep_na_twice)
    result = check(container_bundle)
    assert result.exit_code == 0, result.output
    assert "classes 2 na (2 members); 2 members; ONNX files: 1 of 2 members" in result.output


def test_missing_manifest(container_bundle):
    (container_bundle / "manifest.json").unlink()
    result = check(container_bundle)
    assert result.exit_code == 2
    assert result.output.startswith("error: no model bundle at ")
    assert "manifest.json missing (the folder holds: irma_fold0-seed0.onnx" in result.output


def test_no_such_folder(tmp_path):
    result = check(tmp_path / "nowhere")
    assert result.exit_code == 2
    assert f"error: no model bundle at {tmp_path / 'nowhere'}: no such folder" in result.output


def test_bad_sha256_in_the_manifest_and_a_changed_file(container_bundle):
    edit_manifest(
        container_bundle, lambda d: d["classes"]["1"]["members"][0].update(sha256="0" * 64)
    )
    with open(container_bundle / "nv_fold0-seed0.onnx", "ab") as fh:
        fh.write(b"\0")
    result = check(container_bundle)
    assert result.exit_code == 2
    assert "is incomplete" in result.output
    assert "class 1: member file irma_fold0-seed0.pt fails its sha256 check" in result.output
    assert "class 3: member file nv_fold0-seed0.onnx fails its sha256 check" in result.output
    assert "na_fold0-seed0" not in result.output


def test_sha256_that_is_not_a_checksum(container_bundle):
    edit_manifest(container_bundle, lambda d: d["classes"]["2"]["members"][0].update(sha256="abc"))
    result = check(container_bundle)
    assert result.exit_code == 2
    assert "class 2 member 0: sha256 must be 64 lowercase hex digits" in result.output


def test_missing_member_file(container_bundle):
    (container_bundle / "na_fold0-seed0.pt").unlink()
    (container_bundle / "irma_fold0-seed0.onnx").unlink()
    result = check(container_bundle)
    assert result.exit_code == 2
    assert "class 1: member file irma_fold0-seed0.onnx missing" in result.output
    assert "class 2: member file na_fold0-seed0.pt missing" in result.output


def test_platform_file_is_resolved_and_summarised(container_bundle):
    result = check(container_bundle, "--platform", PLATFORM)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert lines[1] == (
        f"platform.json from {PLATFORM}: output sockets "
        "irma=drac-irma-mask:images/drac-irma-mask, "
        "na=drac-nonperfusion-mask:images/drac-nonperfusion-mask, "
        "nv=drac-nv-mask:images/neovascularization; "
        "input socket the job's only image socket; GPU optional"
    )


def test_the_bundles_own_platform_json_unless_replaced(container_bundle, tmp_path):
    (container_bundle / "platform.json").write_text('{"input_socket": "octa", "require_gpu": true}')
    own = check(container_bundle).output.splitlines()
    assert own[1].startswith(
        f"platform.json from {container_bundle / 'platform.json'}: output sockets irma="
    )
    assert own[1].endswith("input socket octa; GPU required")
    replaced = check(container_bundle, "--platform", PLATFORM).output.splitlines()
    assert replaced[1].startswith(f"platform.json from {PLATFORM}:")


def test_bad_platform_files(container_bundle, tmp_path):
    bad = tmp_path / "sockets.json"
    bad.write_text('{"output_socket": {"irma": "x"}}')
    result = check(container_bundle, "--platform", bad)
    assert result.exit_code == 2
    assert f"error: {bad}: unknown key(s) 'output_socket'" in result.output
    bad.write_text('{"output_sockets": {"irma": "same", "nv": "same"}}')
    result = check(container_bundle, "--platform", bad)
    assert result.exit_code == 2
    assert "classes irma" in result.output and "share the slug 'same'" in result.output
    result = check(container_bundle, "--platform", tmp_path / "absent.json")
    assert result.exit_code == 2
    assert f"error: --platform {tmp_path / 'absent.json'}: no such file" in result.output


@pytest.mark.slow
def test_python_dash_m_drac_algo_bundle_runs_the_check(container_bundle):
    """``python -m drac_algo.bundle check`` (bundle/__main__.py), as the scripts run it."""

    def run(*args):
        return subprocess.run(
            [sys.executable, "-W", "error::RuntimeWarning", "-m", "drac_algo.bundle", *args],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip

    done = run("check", str(container_bundle))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{container_bundle}: valid model bundle: classes 1 irma")
    (container_bundle / "manifest.json").unlink()
    done = run("check", str(container_bundle))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(
        f"error: no model bundle at {container_bundle}: manifest.json missing"
    )
