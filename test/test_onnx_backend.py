"""The ONNX Runtime CPU backend: export into the bundle, checksum, backend choice and fallback,
and the engine giving torch's answer through it."""

import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import copy_container_bundle

from drac_algo.bundle import verify
from drac_algo.bundle.manifest import MANIFEST
from drac_algo.bundle.store import build_member, load_bundle
from drac_algo.common.errors import DracInputError
from drac_algo.engine import onnx_backend
from drac_algo.engine import predictor as predictor_module
from drac_algo.engine.onnx_backend import OnnxNetwork, choose_backend
from drac_algo.engine.predictor import Predictor
from drac_algo.training import onnx_export
from drac_algo.training.onnx_export import OnnxExportError, add_onnx

pytest.importorskip("onnxruntime")  # a requirement; the skip keeps the reason readable

CPU = torch.device("cpu")


@pytest.fixture
def container_bundle_without_onnx(tmp_path):
    """The container fixture bundle as a bundle trained before the ONNX backend existed."""
    return copy_container_bundle(tmp_path / "model", onnx=False)


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    folder = copy_container_bundle(tmp_path_factory.mktemp("onnx") / "model", onnx=False)
    add_onnx(folder)
    return folder


def blocky_image(shape=(96, 112), seed=0):
    """A random ``uint8`` image of 8 x 8 pixel blocks (edges for the backends to disagree on)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(shape[0] // 8 + 1, shape[1] // 8 + 1), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8), dtype=np.uint8))[: shape[0], : shape[1]]


# --- export ---------------------------------------------------------------------------------


def test_add_onnx_writes_verified_files_with_checksums(onnx_bundle):
    bundle = load_bundle(onnx_bundle)  # checks every file's sha256, the ONNX ones included
    for _, member in bundle.members():
        assert member.onnx is not None
        assert member.onnx.file == Path(member.file).with_suffix(".onnx").name
        assert member.onnx.opset == onnx_export.OPSET
        assert (onnx_bundle / member.onnx.file).is_file()
    assert not list(onnx_bundle.glob(".*partial"))


@pytest.mark.parametrize("side", [64, 96, 160])
def test_exported_member_reproduces_the_torch_member(onnx_bundle, side):
    """Probabilities within 1e-4 at the traced side and at others (dynamic H, W and batch)."""
    for _, member in load_bundle(onnx_bundle).members():
        network = build_member(onnx_bundle, member)
        x = torch.randn(3, 1, side, side, generator=torch.Generator().manual_seed(side))
        with torch.inference_mode():
            expected = torch.sigmoid(network(x))
        found = torch.sigmoid(OnnxNetwork(onnx_bundle / member.onnx.file, threads=1)(x))
        assert found.shape == expected.shape
        assert float((found - expected).abs().max()) < 1e-4


def test_engine_gives_the_same_masks_on_both_backends(onnx_bundle):
    image = blocky_image()
    runs = {
        backend: Predictor.from_bundle(
            onnx_bundle, device="cpu", precision="fp32", tta="d4", backend=backend
        )
        for backend in ("torch", "onnxruntime")
    }
    assert {b: p.backend.name for b, p in runs.items()} == {
        "torch": "torch",
        "onnxruntime": "onnxruntime",
    }
    torch_run, ort_run = (runs[b].predict(image) for b in ("torch", "onnxruntime"))
    for index in torch_run.probabilities:
        difference = np.abs(torch_run.probabilities[index] - ort_run.probabilities[index])
        assert difference.max() < 1e-4
        assert np.array_equal(torch_run.masks[index], ort_run.masks[index])
    assert runs["onnxruntime"].settings()["backend"] == "onnxruntime"


@pytest.mark.parametrize("threads", [1, 2])
def test_sessions_build_several_at_once_and_keep_the_manifest_order(
    onnx_bundle, monkeypatch, threads
):
    built_in: dict[str, str] = {}

    class Recording(OnnxNetwork):
        def __init__(self, path, threads):
            built_in[Path(path).name] = threading.current_thread().name
            super().__init__(path, threads)

    monkeypatch.setattr(predictor_module, "OnnxNetwork", Recording)
    monkeypatch.setattr(predictor_module, "cpu_threads", lambda: threads)
    predictor = Predictor.from_bundle(onnx_bundle, device="cpu", backend="onnxruntime")
    specs = [m for _, m in load_bundle(onnx_bundle).members()]
    assert sorted(built_in) == sorted(m.onnx.file for m in specs)
    pooled = {name.startswith("drac-session") for name in built_in.values()}
    assert pooled == ({True} if threads > 1 else {False})
    # Each class's members are the manifest's, in its order, whatever thread built them.
    networks = [m.network.path.name for e in predictor.ensembles.values() for m in e.members]
    assert networks == [m.onnx.file for m in specs]
    timings = predictor.load_timings
    assert [m["file"] for m in timings["members"]] == [m.file for m in specs]
    assert timings["members_s"] > 0


def test_a_session_that_fails_to_build_in_a_worker_is_named(onnx_bundle, monkeypatch):
    def broken(path, threads):
        raise DracInputError(f"cannot load the ONNX model {path}: broken")

    monkeypatch.setattr(predictor_module, "OnnxNetwork", broken)
    monkeypatch.setattr(predictor_module, "cpu_threads", lambda: 2)
    with pytest.raises(DracInputError, match=r"cannot load the ONNX model .*\.onnx: broken"):
        Predictor.from_bundle(onnx_bundle, device="cpu", backend="onnxruntime")


def test_a_corrupt_onnx_file_fails_its_checksum(onnx_bundle, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(onnx_bundle, folder)
    path = folder / "nv_fold0-seed0.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DracInputError, match=r"nv_fold0-seed0\.onnx fails its sha256 check"):
        load_bundle(folder)
    path.unlink()
    with pytest.raises(DracInputError, match=r"member file nv_fold0-seed0\.onnx missing"):
        load_bundle(folder)


def test_bad_onnx_entries_are_named(onnx_bundle, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(onnx_bundle, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    members = [m for c in manifest["classes"].values() for m in c["members"]]
    members[0]["onnx"]["file"] = "../elsewhere.onnx"
    members[1]["onnx"] = {"file": "x.onnx", "sha256": "abc", "source_sha256": "abc", "opset": 0}
    members[2]["onnx"] = "yes"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DracInputError) as caught:
        load_bundle(folder)
    message = str(caught.value)
    assert "file must be a plain name ending in .onnx; got '../elsewhere.onnx'" in message
    assert "sha256 must be 64 lowercase hex digits" in message
    assert "source_sha256 must be 64 lowercase hex digits" in message
    assert "opset must be an integer in [1, 64]; got 0" in message
    assert "onnx: expected an object or null, got 'yes'" in message


def test_a_failed_export_leaves_the_bundle_as_it_was(container_bundle_without_onnx, monkeypatch):
    """The second member fails: the first one's verified export is not kept either."""
    before = {p.name: p.read_bytes() for p in container_bundle_without_onnx.iterdir()}
    real_export, calls = torch.onnx.export, []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real_export(*args, **kwargs)
        raise RuntimeError("Unsupported: ONNX export of operator foo")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(OnnxExportError, match="ONNX export failed: Unsupported"):
        add_onnx(container_bundle_without_onnx)
    assert len(calls) == 2
    assert {p.name: p.read_bytes() for p in container_bundle_without_onnx.iterdir()} == before


def test_an_export_that_differs_from_torch_is_not_kept(container_bundle_without_onnx, monkeypatch):
    before = sorted(p.name for p in container_bundle_without_onnx.iterdir())
    original = verify.onnx_difference
    monkeypatch.setattr(verify, "onnx_difference", lambda *args: original(*args) + 0.5)
    with pytest.raises(OnnxExportError, match="differ from torch's by"):
        add_onnx(container_bundle_without_onnx)
    assert sorted(p.name for p in container_bundle_without_onnx.iterdir()) == before
    assert all(m.onnx is None for _, m in load_bundle(container_bundle_without_onnx).members())


@pytest.mark.slow
def test_the_command_adds_onnx_and_skips_members_that_have_it(container_bundle_without_onnx):
    result = CliRunner().invoke(onnx_export.main, [str(container_bundle_without_onnx)])
    assert result.exit_code == 0, result.output
    assert "irma_fold0-seed0.pt -> irma_fold0-seed0.onnx" in result.output
    stamp = (container_bundle_without_onnx / "irma_fold0-seed0.onnx").stat().st_mtime_ns
    assert CliRunner().invoke(onnx_export.main, [str(container_bundle_without_onnx)]).exit_code == 0
    assert (container_bundle_without_onnx / "irma_fold0-seed0.onnx").stat().st_mtime_ns == stamp
    missing = CliRunner().invoke(onnx_export.main, [str(container_bundle_without_onnx / "nothing")])
    assert missing.exit_code == 2 and "no model bundle" in missing.output


# --- the backend choice ---------------------------------------------------------------------


def test_auto_runs_float32_cpu_work_on_onnxruntime():
    choice = choose_backend("auto", CPU, None)
    assert choice.name == "onnxruntime"


@pytest.mark.parametrize(
    ("device", "autocast", "without", "reason"),
    [
        (torch.device("cuda", 0), None, (), "runs on the CPU here, the device is cuda:0"),
        (CPU, torch.bfloat16, (), "resolved to bfloat16 autocast"),
        (CPU, None, ("nv.pt",), "no ONNX file for nv.pt (add them with python -m"),
    ],
)
def test_auto_falls_back_to_torch_and_says_why(device, autocast, without, reason):
    choice = choose_backend("auto", device, autocast, without)
    assert choice.name == "torch"
    assert reason in choice.reason
    with pytest.raises(DracInputError, match="--backend onnxruntime cannot run: "):
        choose_backend("onnxruntime", device, autocast, without)


def test_a_missing_runtime_falls_back_or_fails_when_asked_for(monkeypatch, onnx_bundle):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert "onnxruntime is not installed" in onnx_backend.runtime_problem()
    assert choose_backend("auto", CPU, None).name == "torch"
    predictor = Predictor.from_bundle(onnx_bundle, device="cpu", precision="fp32")
    assert predictor.backend.name == "torch"
    assert "onnxruntime is not installed" in predictor.settings()["backend_reason"]
    with pytest.raises(DracInputError, match="onnxruntime is not installed"):
        Predictor.from_bundle(onnx_bundle, device="cpu", backend="onnxruntime")


def test_unknown_backend_and_torch_on_request():
    with pytest.raises(DracInputError, match="unknown backend 'tensorrt'; valid: auto, torch"):
        choose_backend("tensorrt", CPU, None)
    assert choose_backend("torch", CPU, None).name == "torch"


def test_onnxruntime_with_auto_precision_means_float32(onnx_bundle):
    predictor = Predictor.from_bundle(onnx_bundle, device="cpu", backend="onnxruntime")
    assert predictor.dtype is None and predictor.backend.name == "onnxruntime"
    with pytest.raises(DracInputError, match="resolved to bfloat16 autocast"):
        Predictor.from_bundle(onnx_bundle, device="cpu", precision="bf16", backend="onnxruntime")


def test_a_bundle_without_onnx_runs_on_torch(container_bundle_without_onnx):
    predictor = Predictor.from_bundle(container_bundle_without_onnx, device="cpu", precision="fp32")
    assert predictor.backend.name == "torch"
    assert "no ONNX file for irma_fold0-seed0.pt" in predictor.backend.reason
