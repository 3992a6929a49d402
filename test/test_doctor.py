"""drac-doctor: the machine's findings, a GPU that is visible but unusable, a bundle's routes and
their agreement, and the cgroup memory limit."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import copy_container_bundle

from drac_algo.bundle.store import sha256_file
from drac_algo.engine.gpu import GpuStatus
from drac_algo.serve import doctor

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "test" / "container" / "model"  # the container test's 3-member bundle


def run(*args):
    return CliRunner().invoke(doctor.main, [str(a) for a in args])


def test_the_machine_is_described_and_a_cpu_machine_has_no_problem(monkeypatch):
    monkeypatch.setattr(doctor, "gpu_findings", lambda: [doctor.Finding("gpu", "visible", "none")])
    result = run()
    assert result.exit_code == 0, result.output
    for line in ("versions torch", "cpu instruction sets", "cpu --precision auto", "cpu threads"):
        assert line in result.output, line
    assert result.output.rstrip().endswith("no problems found")


def test_a_visible_gpu_that_torch_cannot_use_is_a_problem(monkeypatch):
    status = GpuStatus(
        visible=True,
        evidence=["/dev/nvidia0"],
        reason="The NVIDIA driver on your system is too old (found version 11040)",
        driver="470.57.02",
        torch_version="2.10.0+cu128",
        cuda_runtime="12.8",
    )
    monkeypatch.setattr("drac_algo.engine.gpu.gpu_status", lambda: status)
    result = run()
    assert result.exit_code == 1, result.output
    assert "1 problem(s):" in result.output
    assert "driver 470.57.02" in result.output and "too old" in result.output


def test_cgroup_memory_limit(tmp_path):
    assert doctor.cgroup_memory_limit(tmp_path) is None
    (tmp_path / "memory.max").write_text("max\n")
    assert doctor.cgroup_memory_limit(tmp_path) is None
    (tmp_path / "memory.max").write_text("8589934592\n")
    assert doctor.cgroup_memory_limit(tmp_path) == 8 * 2**30
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert doctor.cgroup_memory_limit(tmp_path) is None


@pytest.mark.slow
def test_every_route_of_a_bundle_runs_and_agrees(monkeypatch):
    monkeypatch.setattr(doctor, "gpu_findings", lambda: [])
    result = run("--bundle", MODEL)
    assert result.exit_code == 0, result.output
    assert "bundle check" in result.output and "valid: 3 classes, 3 members" in result.output
    assert "routes cpu fp32 torch" in result.output
    assert "routes cpu fp32 onnxruntime" in result.output
    assert "masks agree 100.0000%" in result.output


@pytest.mark.slow
def test_a_float32_route_that_disagrees_is_a_problem(monkeypatch, tmp_path):
    """An ONNX file of other weights (here NA's network as IRMA's), with its checksum updated:
    ONNX Runtime's probabilities differ from torch's, and the doctor says so."""
    monkeypatch.setattr(doctor, "gpu_findings", lambda: [])
    bundle = tmp_path / "model"
    copy_container_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    irma = manifest["classes"]["1"]["members"][0]
    na = manifest["classes"]["2"]["members"][0]
    if irma["model"] != na["model"] or irma["input_size"] != na["input_size"]:
        pytest.skip("the fixture's IRMA and NA networks differ in shape")
    shutil.copy(bundle / na["onnx"]["file"], bundle / irma["onnx"]["file"])
    irma["onnx"]["sha256"] = sha256_file(bundle / irma["onnx"]["file"])
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    result = run("--bundle", bundle)
    assert result.exit_code == 1, result.output
    problems = result.output.split("problem(s):")[1]
    assert "cpu fp32 onnxruntime differs from cpu fp32 torch by" in problems, result.output
