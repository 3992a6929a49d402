"""The GPU path, run where a GPU is usable (``pytest -m gpu``; scripts/gpu-check.sh): the engine on
CUDA agrees with the CPU's float32 masks, process.py runs a batch there, and one training epoch
runs with autocast and channels-last. Elsewhere each test is skipped with the reason
(test/conftest.py), unless ``DRAC_GPU_TESTS_ON=cpu`` runs them on the CPU instead (the dry run of
scripts/gpu-check.sh, which CI runs, so that this file cannot rot unseen)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drac_algo.data.images import load_image
from drac_algo.data.release import find_layout, list_cases
from drac_algo.engine.predictor import Predictor
from drac_algo.training.config import load_config
from drac_algo.training.dataset import load_samples
from drac_algo.training.distributed import init_distributed
from drac_algo.training.experiment import plan_members
from drac_algo.training.loop import train_member

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "test" / "container" / "model"  # 3 members, 128 px, with ONNX files

DEVICE = "cpu" if os.environ.get("DRAC_GPU_TESTS_ON") == "cpu" else "cuda"

SIZE = 128 if DEVICE == "cpu" else 256  # the dry run on the CPU stays quick

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_release(phantom_release) -> Path:
    """The phantom release of the GPU path: 8 training and 2 test images of SIZE x SIZE."""
    return phantom_release(8, 2, SIZE, seed=5)


def _test_images(release):
    return [load_image(c.image).pixels for c in list_cases(find_layout(release), "test")]


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_cuda_agrees_with_the_cpu_float32_masks(gpu_release, precision):
    cpu = Predictor.from_bundle(MODEL, device="cpu", precision="fp32", backend="torch")
    gpu = Predictor.from_bundle(MODEL, device=DEVICE, precision=precision, backend="torch")
    assert gpu.settings()["device"].startswith(DEVICE)
    for image in _test_images(gpu_release):
        a, b = cpu.predict(image), gpu.predict(image)
        for k in a.masks:
            agree = float(np.mean(a.masks[k] == b.masks[k]))
            diff = float(np.abs(a.probabilities[k] - b.probabilities[k]).max())
            # float32 on CUDA (cuDNN may use TF32 for convolutions) moves only pixels at the
            # threshold; bf16/fp16 autocast a few more.
            assert agree >= (0.999 if precision == "fp32" else 0.99), (k, agree, diff)


def test_process_py_runs_a_batch_on_cuda(gpu_release, tmp_path):
    images = find_layout(gpu_release).test_images
    done = subprocess.run(
        [sys.executable, "process.py", "--input", str(images), "--output", str(tmp_path / "out"),
         "--bundle", str(MODEL), "--device", DEVICE],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["diagnostics"]["gpu"]["usable"] is torch.cuda.is_available()
    assert results["settings"]["device"].startswith(DEVICE)


@pytest.mark.parametrize("recipe", ["method", "best"])
def test_one_training_epoch_on_cuda_with_autocast_and_channels_last(gpu_release, tmp_path, recipe):
    samples = load_samples(list_cases(find_layout(gpu_release), "train"), 1)
    cfg = load_config(
        "irma", None, recipe,
        input_size=SIZE, crop_size=SIZE // 2 if recipe == "best" else None, epochs=1, batch_size=4,
        num_workers=0, model__encoder="resnet18", val__folds=2, val__fold=0,
    )  # fmt: skip
    assert cfg.channels_last  # used on CUDA
    ctx = init_distributed(DEVICE)
    result = train_member(cfg, samples, plan_members(cfg, samples, tmp_path)[0], ctx)
    assert result.best_epoch == 1
    state = torch.load(tmp_path / "irma" / "fold0-seed0" / "last.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
