"""End-to-end tests of the container entry point on a tiny real model bundle.

The bundle's IRMA network has a zeroed output head with bias +6 (every pixel positive), its NV
network bias -6 (none positive), and its NA network keeps random weights, so the first two
classes have known masks and NA is checked against the inference engine run directly.
"""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import (
    REPO,
    SIZE,
    SLUGS,
    counting_predictions,
    gray,
    invoke,
    ok,
    read_png_mask,
    rejected,
    results_of,
    tree,
    write_job,
    write_png,
    write_sitk,
)

from drac_algo.common.classes import BY_INDEX, LESION_CLASSES
from drac_algo.common.hardware import native_bf16
from drac_algo.data.images import load_image
from drac_algo.data.submission import read_submission
from drac_algo.engine.gpu import GpuStatus
from drac_algo.engine.postprocess import postprocess_mask, threshold_probability
from drac_algo.engine.predictor import Predictor
from drac_algo.serve.batch import OWNED_MARKER

# The tiny bundle (conftest's ``tiny_bundle``) and the helpers are :mod:`helpers`'.


@pytest.fixture(scope="module")
def tiny_bundle_without_nv(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle_without_nv") / "model"
    shutil.copytree(tiny_bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["classes"]["3"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "nv.pt").unlink()
    return folder


def batch_files(names, classes, submission=False, report=True):
    """What a batch run of the images ``names`` writes (as :func:`tree` lists it) with the masks
    of ``classes``, the three submission stacks when ``submission``, and the report page with
    a thumbnail per case and class unless not ``report``."""
    return sorted(
        [
            *(["1.nii.gz", "2.nii.gz", "3.nii.gz"] if submission else []),
            "masks/.drac-algo-output",
            "overlays/.drac-algo-output",
            "results.json",
            *[f"masks/{c.folder}/{n}.png" for c in classes for n in names],
            *[f"overlays/{n}.png" for n in names],
            *(["report.html", "report/.drac-algo-output"] if report else []),
            *[f"report/{n}_{c.key}.png" for c in classes for n in names if report],
        ]
    )


def reference(bundle_dir, tta, image):
    """The engine run directly on one (H, W) image: class index -> mask."""
    return Predictor.from_bundle(bundle_dir, device="cpu", tta=tta).predict(image).masks


def check_record(record, masks):
    """A results.json case entry against the masks it describes."""
    for index, mask in masks.items():
        stats = record["classes"][str(index)]
        assert stats["key"] == BY_INDEX[index].key
        assert stats["area_px"] == int(mask.sum())
        assert stats["area_fraction"] == pytest.approx(mask.mean())
        count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert stats["components"] == count - 1
    assert record["non_perfusion_index"] == pytest.approx(masks[2].mean())


# ------------------------------------------------------------------------------------------
# Batch mode


def test_batch_folder_end_to_end(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "090.png", gray(90))
    rgb = np.stack([gray(1200), gray(1201), gray(1202)], axis=-1)
    write_png(images / "1200.png", rgb)  # RGB, distinct channels: converted to gray
    write_sitk(images / "086.tif", gray(86))
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    result = ok(
        invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "flips")
    )

    names = ["086", "090", "1200"]  # integer order, whatever the suffix
    assert tree(out) == batch_files(names, LESION_CLASSES, submission=True)
    stacks = read_submission(out)
    results = results_of(out)
    log_text = (out / "process.log").read_text()
    assert "drac-process 0.1.0 (torch " in log_text and '"git_commit"' in log_text
    assert "mode: batch; 3 image(s)" in log_text and "done: 3 image(s)" in log_text
    assert results["settings"]["environment"]["torch"] == torch.__version__
    sources = [images / "086.tif", images / "090.png", images / "1200.png"]
    for slot, (name, source) in enumerate(zip(names, sources, strict=True)):
        pixels = load_image(source).pixels
        expected = reference(tiny_bundle, "flips", pixels)
        masks = {
            c.index: read_png_mask(out / f"masks/{c.folder}/{name}.png") for c in LESION_CLASSES
        }
        assert masks[1].all() and not masks[3].any()
        assert np.array_equal(masks[2], expected[2])
        for index in (1, 2, 3):
            assert np.array_equal(stacks[index][slot], masks[index])
        record = results["cases"][slot]
        assert record["case"] == name and record["case_id"] == int(name)
        assert record["file"] == str(source) and record["shape"] == [SIZE, SIZE]
        check_record(record, masks)
        overlay = cv2.imread(str(out / f"overlays/{name}.png"), cv2.IMREAD_COLOR)
        assert overlay.shape == (SIZE, SIZE, 3)
    assert {s.shape for s in stacks.values()} == {(3, SIZE, SIZE)}

    assert results["cases"][2]["converted"] == "RGB converted to grayscale (luminance)"
    assert results["cases"][0]["converted"] is None
    assert f"{images / '1200.png'}: RGB converted to grayscale" in result.stderr
    assert any("1200.png: RGB converted" in w for w in results["warnings"])

    assert results["format"] == "drac-algo-results" and results["mode"] == "batch"
    assert results["submission"] == {
        "written": True,
        "files": ["1.nii.gz", "2.nii.gz", "3.nii.gz"],
        "reason": None,
        "cause": None,
    }
    settings = results["settings"]
    assert settings["tta"] == "flips" and settings["device"] == "cpu"
    cpu_autocast = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    assert settings["precision"] == "auto" and settings["autocast"] == cpu_autocast
    assert settings["max_views_per_batch"] == 1  # the CPU default
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert settings["bundle"] == {
        "path": str(tiny_bundle),
        "created": manifest["created"],
        "drac_algo_version": manifest["drac_algo_version"],
        "classes": [1, 2, 3],
        "id": hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()[:12],
    }
    views = settings["classes"]["2"]["members"][0]["views"]
    assert views == ["identity", "hflip", "vflip", "rot180"]
    timings = results["timings"]
    assert timings["images"] == 3
    assert 0 < timings["model_load_s"] < timings["total_s"]
    assert 0 < timings["per_image_mean_s"] <= timings["per_image_max_s"]
    assert [results["classes"][str(i)]["status"] for i in (1, 2, 3)] == ["written"] * 3
    diagnostics = results["diagnostics"]
    assert diagnostics["device"] == "cpu" and diagnostics["autocast"] == cpu_autocast
    assert diagnostics["views_per_batch"] == 1
    assert diagnostics["bundle_id"] == settings["bundle"]["id"]
    # The id names the exact weights: the manifest's own hash (it lists every file's sha256).
    manifest_hash = hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()
    assert settings["bundle"]["id"] == manifest_hash[:12]
    assert diagnostics["gpu"]["torch_version"] == torch.__version__
    assert diagnostics["gpu"]["usable"] is torch.cuda.is_available()
    stages = diagnostics["stages"]
    assert set(stages) == {"model_load_s", "decode_s", "inference_s", "write_s"}
    assert all(stages[k] > 0 for k in stages)
    assert stages["model_load_s"] == timings["model_load_s"]
    # The cold start, part by part: the GPU probe, the bundle's checks and each member's build,
    # which together are the model load. The process's age (startup_s) only where the process
    # was started as the command: this one is pytest's (test_jobcost measures a real start).
    cold = diagnostics["cold_start"]
    assert set(cold) == {"startup_s", "gpu_probe_s", "bundle_check_s", "members_s", "members"}
    assert cold["startup_s"] is None and cold["gpu_probe_s"] >= 0
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    classes = manifest["classes"]
    files = [m["file"] for c in sorted(classes) for m in classes[c]["members"]]
    assert [m["file"] for m in cold["members"]] == files
    assert cold["members_s"] >= max(m["seconds"] for m in cold["members"])
    parts = cold["bundle_check_s"] + cold["members_s"]
    assert 0 < parts <= stages["model_load_s"] + 1e-3
    assert 100 * 2**20 < diagnostics["peak_rss_bytes"] < 16 * 2**30
    assert settings["job"]["sources"]["output_socket_irma"] == "default"


def test_batch_rerun_replaces_the_previous_outputs(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    write_png(images / "090.png", gray(90))
    out = tmp_path / "out"
    args = ("--output", out, "--bundle", tiny_bundle, "--tta", "none")
    ok(invoke("--input", images, *args))
    (images / "090.png").unlink()
    ok(invoke("--input", images, *args))
    assert not any("090" in name for name in tree(out))
    assert read_submission(out)[1].shape == (1, SIZE, SIZE)
    assert len(results_of(out)["cases"]) == 1


def test_batch_refuses_to_replace_a_folder_it_did_not_write(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    write_png(out / "masks" / "mine.png", gray(1))
    rejected(
        invoke("--input", images, "--output", out, "--bundle", tiny_bundle),
        f"refusing to replace {out / 'masks'}",
    )
    assert tree(out) == ["masks/mine.png"]


def test_images_of_different_sizes_fail_without_the_stacks_unless_not_asked(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    write_png(images / "090.png", gray(90, (SIZE, SIZE + 8)))
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "none")
    out = tmp_path / "out"
    stderr = rejected(
        invoke(*args, "--output", out),
        "the challenge submission stacks were not written: the images differ in size",
        "pass --no-submission",
    )
    assert not any(name.endswith(".nii.gz") for name in tree(out))
    assert read_png_mask(out / f"masks/{LESION_CLASSES[0].folder}/090.png").shape == (40, 48)
    submission = results_of(out)["submission"]
    assert (submission["written"], submission["cause"]) == (False, "sizes")
    assert "086 is 40 x 40, 090 is 40 x 48" in submission["reason"]
    assert "not written: the images differ in size" in stderr
    # --no-submission: the same masks, exit 0, the stacks "not asked for".
    quiet = tmp_path / "quiet"
    result = ok(invoke(*args, "--output", quiet, "--no-submission"))
    assert tree(quiet) == tree(out)
    submission = results_of(quiet)["submission"]
    assert (submission["written"], submission["cause"]) == (False, "not asked")
    assert "not written" not in result.stderr


def test_a_bad_image_mid_batch_leaves_no_summary_and_no_partial_files(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    bad = write_png(images / "090.png", gray(90))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    write_png(images / "1200.png", gray(1200))
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "none")

    fresh = tmp_path / "fresh"
    rejected(invoke(*args, "--output", fresh), bad, "truncated")
    assert tree(fresh) == []
    # No staging folders left either; the log stays, and ends with what went wrong.
    assert [p.name for p in fresh.iterdir()] == ["process.log"]
    last = (fresh / "process.log").read_text().strip().splitlines()[-1]
    assert " ERROR drac-process: error: " in last and "truncated" in last

    # Over a previous successful run: the output folder is left exactly as it was.
    previous = tmp_path / "previous"
    good = tmp_path / "good"
    write_png(good / "086.png", gray(86))
    ok(invoke("--input", good, "--output", previous, "--bundle", tiny_bundle, "--tta", "none"))
    before = {name: (previous / name).read_bytes() for name in tree(previous)}
    rejected(invoke(*args, "--output", previous), bad)
    assert {name: (previous / name).read_bytes() for name in tree(previous)} == before
    assert sorted(p.name for p in previous.iterdir()) == [
        "1.nii.gz",
        "2.nii.gz",
        "3.nii.gz",
        "masks",
        "overlays",
        "process.log",
        "report",
        "report.html",
        "results.json",
    ]


def test_a_class_missing_from_the_bundle_is_skipped_and_reported(tiny_bundle_without_nv, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    args = ("--bundle", tiny_bundle_without_nv, "--tta", "none")
    result = ok(invoke("--input", images, "--output", out, *args))
    assert "has no class 3 (nv, Neovascularization): no output is written" in result.stderr
    assert tree(out) == batch_files(["086"], LESION_CLASSES[:2])
    results = results_of(out)
    assert results["classes"]["3"] == {
        "key": "nv",
        "name": "Neovascularization",
        "status": "missing from the model bundle",
        "output": None,
    }
    assert list(results["cases"][0]["classes"]) == ["1", "2"]
    assert results["submission"]["written"] is False
    assert results["submission"]["reason"] == "the model bundle lacks class 3 (nv)"

    job = write_job(tmp_path / "job")
    job_out = tmp_path / "job_out"
    ok(invoke("--input", job, "--output", job_out, *args))
    assert tree(job_out) == sorted(
        ["results.json", *[f"images/{SLUGS[i]}/output.mha" for i in (1, 2)]]
    )


# ------------------------------------------------------------------------------------------
# Grand Challenge mode


def test_grand_challenge_job_end_to_end(tiny_bundle, tmp_path):
    geometry = {"spacing": (0.3, 0.25), "origin": (12.5, -4.0), "direction": (0.0, -1.0, 1.0, 0.0)}
    job = write_job(tmp_path / "input", **geometry)
    out = tmp_path / "output"
    result = ok(
        invoke(
            "--input", job, "--output", out, "--bundle", tiny_bundle,
            "--tta", "d4", "--views-per-batch", "3", "--output-slug", "irma=my-irma",
        )
    )  # fmt: skip
    slugs = {**SLUGS, 1: "my-irma"}
    assert tree(out) == sorted(
        ["results.json", *[f"images/{s}/output.mha" for s in slugs.values()]]
    )
    pixels = load_image(job / "images/uw-octa-image/5a3e-uuid.mha").pixels
    expected = reference(tiny_bundle, "d4", pixels)
    masks = {}
    for index, slug in slugs.items():
        image = sitk.ReadImage(str(out / f"images/{slug}/output.mha"))
        assert image.GetDimension() == 2 and image.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(image.GetSpacing(), geometry["spacing"])
        np.testing.assert_allclose(image.GetOrigin(), geometry["origin"])
        np.testing.assert_allclose(image.GetDirection(), geometry["direction"])
        masks[index] = sitk.GetArrayFromImage(image)
        assert set(np.unique(masks[index])) <= {0, 1}
        assert np.array_equal(masks[index], expected[index])
    assert masks[1].all() and not masks[3].any()

    results = results_of(out)
    assert results["mode"] == "grand-challenge"
    assert results["settings"]["input_slug"] == "uw-octa-image"
    assert results["settings"]["output_slugs"] == {str(i): s for i, s in slugs.items()}
    assert results["settings"]["tta"] == "d4"
    assert results["settings"]["max_views_per_batch"] == 3
    assert len(results["settings"]["classes"]["1"]["members"][0]["views"]) == 8
    assert results["classes"]["1"]["output"] == "images/my-irma/output.mha"
    assert "submission" not in results
    [record] = results["cases"]
    assert record["case"] == "5a3e-uuid" and record["case_id"] is None
    check_record(record, masks)
    assert results["timings"]["images"] == 1
    assert "mode: grand-challenge" in result.stderr


def test_the_old_flag_spellings_still_run(tiny_bundle, tmp_path):
    """--model-dir (now --bundle) and --batch-size (now --views-per-batch): hidden from --help,
    kept for one release. The default /opt/ml/model does not exist here, so a run that
    succeeds read the bundle given as --model-dir."""
    job = write_job(tmp_path / "input")
    out = tmp_path / "output"
    ok(invoke("--input", job, "--output", out, "--model-dir", tiny_bundle, "--batch-size", "2",
              "--tta", "flips"))  # fmt: skip
    results = results_of(out)
    assert results["settings"]["max_views_per_batch"] == 2


def test_platform_json_in_the_model_folder_retargets_the_sockets(
    tiny_bundle, tmp_path, monkeypatch
):
    model = tmp_path / "model"
    shutil.copytree(tiny_bundle, model)
    (model / "platform.json").write_text(
        json.dumps(
            {
                "output_sockets": {
                    "irma": "phase-two-irma",
                    "nv": {"slug": "phase-two-nv", "relative_path": "masks/nv"},
                }
            }
        )
    )
    monkeypatch.setenv("DRAC_OUTPUT_SOCKETS", "na=env-na")
    job = write_job(tmp_path / "input")
    out = tmp_path / "output"
    result = ok(invoke("--input", job, "--output", out, "--bundle", model, "--tta", "none"))
    assert tree(out) == sorted(
        [
            "results.json",
            "images/phase-two-irma/output.mha",
            "images/env-na/output.mha",
            "masks/nv/output.mha",
        ]
    )
    results = results_of(out)
    assert results["classes"]["3"]["output"] == "masks/nv/output.mha"
    assert results["settings"]["output_slugs"] == {
        "1": "phase-two-irma",
        "2": "env-na",
        "3": "phase-two-nv",
    }
    sources = results["settings"]["job"]["sources"]
    assert sources["output_socket_irma"] == str(model / "platform.json")
    assert sources["output_socket_na"] == "environment DRAC_OUTPUT_SOCKETS"
    assert "nv -> masks/nv/" in result.stderr

    (model / "platform.json").write_text(json.dumps({"output_sockets": {"nv": "env-na"}}))
    rejected(
        invoke("--input", job, "--output", tmp_path / "o2", "--bundle", model),
        "classes na (environment DRAC_OUTPUT_SOCKETS) and nv",
        "share the slug 'env-na'",
    )
    assert not (tmp_path / "o2" / "results.json").exists()


UNUSABLE = GpuStatus(
    visible=True,
    evidence=["/dev/nvidia0", "NVIDIA_VISIBLE_DEVICES=all"],
    usable=False,
    reason="The NVIDIA driver on your system is too old (found version 12020)",
    driver="470.256.02",
    torch_version=torch.__version__,
    cuda_runtime="12.8",
)


def test_a_visible_but_unusable_gpu_is_loud_and_can_be_required(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("drac_algo.serve.pipeline.gpu_status", lambda: UNUSABLE)
    job = write_job(tmp_path / "input")
    out = tmp_path / "output"
    args = ("--input", job, "--bundle", tiny_bundle, "--tta", "none", "--device", "auto")
    result = ok(invoke(*args, "--output", out))
    [line] = [x for x in result.stderr.splitlines() if "NVIDIA GPU visible" in x]
    assert "ERROR" in line and "too old (found version 12020)" in line
    assert "driver 470.256.02" in line and "needs an NVIDIA driver >= 525" in line
    results = results_of(out)
    assert results["diagnostics"]["gpu"]["reason"] == UNUSABLE.reason
    assert results["diagnostics"]["gpu"]["visible"] is True
    assert results["diagnostics"]["device"] == "cpu"
    assert any("GPU is visible but this run uses cpu" in w for w in results["warnings"])

    for extra, env in [(("--require-gpu",), None), ((), "1")]:
        if env is not None:
            monkeypatch.setenv("DRAC_REQUIRE_GPU", env)
        required = invoke(*args, *extra, "--output", tmp_path / f"req{env}")
        assert required.exit_code == 1, (required.stderr, required.exception)
        assert "error: the GPU is required" in required.stderr
        assert "too old (found version 12020)" in required.stderr
        assert not (tmp_path / f"req{env}" / "results.json").exists()
    # The command line wins over the environment.
    ok(invoke(*args, "--no-require-gpu", "--output", tmp_path / "opt-out"))
    rejected(
        invoke(*args[:-2], "--device", "cpu", "--require-gpu", "--output", tmp_path / "x"),
        "--device cpu asks for the CPU",
    )


@pytest.mark.slow
def test_python_dash_m_process_runs_a_job_with_a_tif(tiny_bundle, tmp_path):
    job = write_job(tmp_path / "input", image_name="upload.tif")
    out = tmp_path / "output"
    command = [sys.executable, "-m", "process", "--input", job, "--output", out]
    command += ["--bundle", tiny_bundle, "--tta", "none", "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree(out) == sorted(
        ["results.json", *[f"images/{s}/output.mha" for s in SLUGS.values()]]
    )
    for index, slug in SLUGS.items():
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"images/{slug}/output.mha")))
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 1}
        assert mask.all() == (index == 1) and mask.any() != (index == 3)


@pytest.mark.slow
def test_sigterm_mid_run_removes_partial_outputs_and_exits_143(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    for i in range(400):
        write_png(images / f"{i:03d}.png", gray(i))
    out = tmp_path / "out"
    command = [sys.executable, "process.py", "--input", images, "--output", out]
    command += ["--bundle", tiny_bundle, "--tta", "d4", "--device", "cpu"]
    proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # Mid-run: the staged masks folder exists and holds some cases.
    while not any(len(list(p.glob("*"))) > 3 for p in out.glob(".masks.*.partial")):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-2000:]
    assert "error: terminated by SIGTERM" in stderr and "Traceback" not in stderr
    assert tree(out) == []  # nothing half-written, nothing that looks complete


def test_a_killed_runs_partial_outputs_are_removed_by_the_next_run(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "001.png", gray(1))
    out = tmp_path / "out"
    (out / ".masks.k3j.partial" / "1. Intraretinal").mkdir(parents=True)
    (out / ".masks.k3j.partial" / "1. Intraretinal" / "001.png").write_bytes(b"x")
    (out / ".overlays.9a.partial").mkdir()
    (out / ".1.nii.gz.x1.partial.nii.gz").write_bytes(b"x")
    (out / ".results.json.x2.partial.json").write_bytes(b"{")
    (out / ".mine.partial").write_text("not ours")  # another program's: left alone
    # A --continue run writes case by case into the final folders: a kill mid-case leaves
    # its temporaries inside them.
    (out / "masks" / "2. Nonperfusion Areas").mkdir(parents=True)
    (out / "masks" / "2. Nonperfusion Areas" / ".001.png.u7x.partial.png").write_bytes(b"x")
    (out / "cases").mkdir()
    (out / "cases" / ".001.json.a1b.partial.json").write_bytes(b"{")
    for folder in ("masks", "cases"):
        (out / folder / OWNED_MARKER).write_text("")
    result = ok(
        invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none")
    )
    assert "removed 6 half-written output(s) of an interrupted earlier run" in result.stderr
    assert not list(out.rglob(".001.*.partial*"))
    assert not [p for p in out.iterdir() if ".partial" in p.name and p.name != ".mine.partial"]
    assert (out / ".mine.partial").is_file()
    warnings = results_of(out)["warnings"]
    assert any("half-written" in w for w in warnings)


@pytest.mark.slow
def test_python_process_py_fails_cleanly_on_an_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    command = [sys.executable, "process.py", "--input", empty, "--output", tmp_path / "out"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    rejected(done, "error: no images", f"{empty} holds: readme.txt, sub/")


# ------------------------------------------------------------------------------------------
# Bad input: each fails with exit status 2 and a message naming the file


def test_empty_or_missing_input_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rejected(invoke("--input", empty, "--output", tmp_path / "out"), f"{empty} is empty")
    missing = tmp_path / "missing"
    rejected(invoke("--input", missing), f"input folder not found: {missing} does not exist")


def test_malformed_inputs_json(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "inputs.json").write_text('[{"interface": ')
    rejected(invoke("--input", job, "--output", tmp_path / "out"), job / "inputs.json", "JSON")


def test_inputs_json_naming_no_image(tmp_path):
    job = write_job(tmp_path / "job")
    entries = json.loads((job / "inputs.json").read_text())[:1]
    (job / "inputs.json").write_text(json.dumps(entries))
    rejected(
        invoke("--input", job, "--output", tmp_path / "out"),
        job / "inputs.json",
        "names no image socket; it holds age-in-years (Value)",
    )


def test_input_slug_without_inputs_json(tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    rejected(invoke("--input", images, "--input-slug", "x"), "holds no inputs.json")


@pytest.mark.parametrize("problem", ["truncated", "3d"])
def test_unusable_job_image(tiny_bundle, tmp_path, problem):
    if problem == "3d":
        job = write_job(tmp_path / "job", array=np.zeros((3, 16, 16), np.uint8))
        expected = "expected a 2D image, found a 3D volume"
    else:
        job = write_job(tmp_path / "job")
        path = job / "images/uw-octa-image/5a3e-uuid.mha"
        path.write_bytes(path.read_bytes()[:-200])
        expected = "unreadable or truncated"
    out = tmp_path / "out"
    rejected(
        invoke("--input", job, "--output", out, "--bundle", tiny_bundle), expected, "5a3e-uuid.mha"
    )
    assert tree(out) == []


def test_missing_or_incomplete_bundle(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    args = ("--input", images, "--output", tmp_path / "out")
    rejected(invoke(*args, "--bundle", tmp_path / "nowhere"), "no model bundle at")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "na.pt").unlink()
    rejected(
        invoke(*args, "--bundle", broken),
        f"model bundle {broken} is incomplete",
        "class 2: member file na.pt missing",
    )
    assert tree(tmp_path / "out") == []


def test_output_folder_not_writable(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rejected(
        invoke("--input", images, "--output", blocker / "out", "--bundle", tiny_bundle),
        f"output folder {blocker / 'out'} is not writable",
    )


def test_cuda_on_a_machine_without_it(tiny_bundle, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    rejected(
        invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--device", "cuda"),
        "CUDA is not available",
    )


@pytest.mark.slow
def test_backend_flag_is_recorded_and_onnxruntime_needs_onnx_files(tiny_bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    from drac_algo.training.onnx_export import add_onnx

    images = tmp_path / "images"
    write_png(images / "001.png", gray(1))
    args = ("--input", images, "--tta", "none", "--precision", "fp32")
    rejected(
        invoke(
            *args, "--bundle", tiny_bundle, "--output", tmp_path / "o1", "--backend", "onnxruntime"
        ),
        "--backend onnxruntime cannot run: no ONNX file for irma.pt",
        "python -m drac_algo.onnx_export BUNDLE",
    )
    assert not (tmp_path / "o1" / "results.json").exists()
    outputs = {}
    with_onnx = tmp_path / "model"
    shutil.copytree(tiny_bundle, with_onnx)
    add_onnx(with_onnx)
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        ok(invoke(*args, "--bundle", with_onnx, "--output", out, "--backend", backend))
        results = results_of(out)
        assert results["settings"]["backend"] == backend
        assert results["diagnostics"]["backend"] == backend
        assert results["diagnostics"]["threads"] >= 1
        outputs[backend] = read_submission(out)
    for a, b in zip(outputs["torch"], outputs["onnxruntime"], strict=True):
        assert np.array_equal(a, b)


# --- --classes and --save-probabilities (batch runs) -------------------------------------------


def test_classes_runs_only_those_classes(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    args = ("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none")
    result = ok(invoke(*args, "--classes", "nv, 1,irma"))  # keys or indices, repeats merged
    assert "has no class" not in result.stderr and "not written" not in result.stderr
    assert tree(out) == batch_files(["086"], [LESION_CLASSES[i] for i in (0, 2)])
    results = results_of(out)
    assert results["settings"]["requested_classes"] == [1, 3]
    assert results["classes"]["2"]["status"] == "not requested (--classes)"
    assert [results["classes"][k]["status"] for k in "13"] == ["written", "written"]
    assert list(results["cases"][0]["classes"]) == ["1", "3"]
    assert results["submission"] == {
        "written": False,
        "files": [],
        "reason": "--classes irma,nv: the submission needs all three classes",
        "cause": "not asked",
    }
    # The same masks as a full run: a class's answer does not depend on the others.
    full = tmp_path / "full"
    ok(invoke("--input", images, "--output", full, "--bundle", tiny_bundle, "--tta", "none"))
    for i in (0, 2):
        rel = f"masks/{LESION_CLASSES[i].folder}/086.png"
        assert (out / rel).read_bytes() == (full / rel).read_bytes()


def test_classes_loads_no_network_of_the_other_classes(tiny_bundle, monkeypatch):
    from drac_algo.engine import predictor as predictor_module

    built = []
    original = predictor_module.build_member
    monkeypatch.setattr(
        predictor_module,
        "build_member",
        lambda f, m, **kw: built.append(m.file) or original(f, m, **kw),
    )
    Predictor.from_bundle(tiny_bundle, device="cpu", classes=[2], backend="torch")
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert built == [m["file"] for m in manifest["classes"]["2"]["members"]]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("irma,xx", "unknown lesion class 'xx'; valid: irma (1), na (2), nv (3)"),
        ("4", "unknown lesion class '4'"),
        (" , ", "--classes: expected class keys or indices (irma,na,nv or 1-3), found ' , '"),
    ],
)
def test_bad_classes_are_refused_before_anything_is_written(tiny_bundle, tmp_path, value, message):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    rejected(
        invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--classes", value),
        message,
    )
    assert not out.exists()


def test_batch_only_options_are_refused_for_a_grand_challenge_job(tiny_bundle, tmp_path):
    job = write_job(tmp_path / "job")
    for extra in (["--classes", "irma"], ["--save-probabilities"], ["--continue"]):
        out = tmp_path / f"out{extra[0]}"
        rejected(
            invoke("--input", job, "--output", out, "--bundle", tiny_bundle, *extra),
            f"{extra[0]}: for a folder of images only",
        )
        assert not out.exists()


def test_saved_probabilities_reproduce_the_masks(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    write_png(images / "090.png", gray(90, shape=(40, 48)))
    out = tmp_path / "out"
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "flips", "--no-submission")
    ok(invoke(*args, "--output", out, "--save-probabilities"))
    results = results_of(out)
    assert results["probabilities"] == "probabilities/<case>.npz"
    assert sorted(p.name for p in (out / "probabilities").iterdir()) == [
        ".drac-algo-output",
        "086.npz",
        "090.npz",
    ]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    for name, shape in (("086", (SIZE, SIZE)), ("090", (40, 48))):
        with np.load(out / "probabilities" / f"{name}.npz") as maps:
            assert sorted(maps.files) == ["irma", "na", "nv"]
            for c in LESION_CLASSES:
                p = maps[c.key]
                assert p.dtype == np.float16 and p.shape == shape
                assert p.min() >= 0.0 and p.max() <= 1.0
                entry = manifest["classes"][str(c.index)]
                mask = read_png_mask(out / "masks" / c.folder / f"{name}.png")
                again = postprocess_mask(
                    threshold_probability(p.astype(np.float32), entry["threshold"]),
                    entry["min_component_px"],
                    entry["fill_holes"],
                )
                # The engine's own threshold and clean-up on the saved map give the written
                # mask, but for float16 rounding next to the threshold (2^-11 apart at 0.5,
                # many pixels here: random weights) and what the clean-up of a 2-pixel minimum
                # changes next to such a pixel.
                near = np.abs(p.astype(np.float32) - entry["threshold"]) <= 2.0**-11
                near = cv2.dilate(near.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                assert not ((again != mask) & ~near).any(), (name, c.key)
    # A later run without the option does not leave maps that no longer match its masks.
    ok(invoke(*args, "--output", out))
    assert not (out / "probabilities").exists()
    assert results_of(out)["probabilities"] is None


# --- --continue --------------------------------------------------------------------------------


@pytest.mark.slow
def test_continue_recomputes_only_cases_that_are_not_complete(tiny_bundle, tmp_path, monkeypatch):
    images = tmp_path / "images"
    for seed in (86, 90, 285, 1200):
        write_png(images / f"{seed:03d}.png", gray(seed))
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "flips")
    fresh = tmp_path / "fresh"
    ok(invoke(*args, "--output", fresh))
    out = tmp_path / "out"
    ran = counting_predictions(monkeypatch)
    ok(invoke(*args, "--output", out, "--continue", "--save-probabilities"))
    assert ran == ["086.png", "090.png", "285.png", "1200.png"]
    assert sorted(p.name for p in (out / "cases").glob("*.json")) == [
        "086.json",
        "090.json",
        "1200.json",
        "285.json",
    ]

    # A crash, simulated: one case lost a mask, one record is truncated, one overlay changed,
    # and results.json and the stacks of the finished run are gone.
    (out / "masks" / LESION_CLASSES[1].folder / "090.png").unlink()
    record = out / "cases" / "285.json"
    record.write_text(record.read_text()[:40])
    (out / "overlays" / "1200.png").write_bytes(b"not the overlay")
    for name in ("results.json", "1.nii.gz"):
        (out / name).unlink()
    untouched = (out / "masks" / LESION_CLASSES[0].folder / "086.png").stat().st_mtime_ns
    ran.clear()
    result = ok(invoke(*args, "--output", out, "--continue", "--save-probabilities"))
    assert ran == ["090.png", "285.png", "1200.png"]
    assert f"090: recomputed, masks/{LESION_CLASSES[1].folder}/090.png is missing" in (
        result.stderr
    )
    assert "285: recomputed, its record 285.json is unreadable" in result.stderr
    assert "1200: recomputed, overlays/1200.png changed since it was written" in result.stderr
    assert "--continue: 1 case(s) complete, 3 to run" in result.stderr
    assert (out / "masks" / LESION_CLASSES[0].folder / "086.png").stat().st_mtime_ns == untouched

    # The assembled outputs equal an uninterrupted run's.
    a, b = (
        results_of(out),
        results_of(fresh),
    )
    assert [c["case"] for c in a["cases"]] == [c["case"] for c in b["cases"]]
    assert [c["classes"] for c in a["cases"]] == [c["classes"] for c in b["cases"]]
    assert a["continued"] == {"complete_before": 1, "run": 3}
    # The stacks are written deterministically (no time stamp inside the gzip stream), so a
    # resumed run's files equal an uninterrupted run's byte for byte, like the masks.
    assert {"1.nii.gz", "2.nii.gz", "3.nii.gz"} <= set(tree(fresh))
    for rel in tree(fresh):
        if rel.endswith(".nii.gz") or (
            rel.startswith("masks/") and not rel.endswith(".drac-algo-output")
        ):
            assert (out / rel).read_bytes() == (fresh / rel).read_bytes(), rel


@pytest.mark.slow
def test_continue_with_other_settings_or_inputs_recomputes(tiny_bundle, tmp_path, monkeypatch):
    images = tmp_path / "images"
    for seed in (86, 90):
        write_png(images / f"{seed:03d}.png", gray(seed))
    out = tmp_path / "out"
    args = ("--input", images, "--output", out, "--bundle", tiny_bundle, "--continue")
    ok(invoke(*args, "--tta", "flips"))
    ran = counting_predictions(monkeypatch)
    ok(invoke(*args, "--tta", "flips"))
    assert ran == []  # everything complete: nothing recomputed
    result = ok(invoke(*args, "--tta", "none"))
    assert ran == ["086.png", "090.png"]
    assert "made with other settings or another model bundle" in result.stderr
    # A case no longer in the input: its files and record go.
    (images / "090.png").unlink()
    ran.clear()
    ok(invoke(*args, "--tta", "none"))
    assert ran == []
    assert not (out / "cases" / "090.json").exists() and not (out / "overlays/090.png").exists()
    assert [c["case"] for c in results_of(out)["cases"]] == ["086"]
    # A run without --continue replaces the outputs and drops the records.
    ok(invoke("--input", images, "--output", out, "--bundle", tiny_bundle))
    assert not (out / "cases").exists()
