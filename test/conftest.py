"""Shared fixtures: ``make_drac`` writes a tiny DRAC Task 1 tree of small PNGs. Tests marked
``gpu`` are skipped, with the reason, where torch cannot use CUDA."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from drac_algo.common.classes import LESION_CLASSES


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path


@pytest.fixture
def make_drac(tmp_path):
    """Factory writing a DRAC Task 1 tree; returns the folder to hand to ``find_layout``.

    ``cases[split][case_id] = {class_index: (H, W) {0, 1} mask}`` with split "a" (training) or
    "b" (testing). Only the masks given get a file (0/255 PNG), as in the release. ``sep`` is the
    separator after each token (". " or "._"), ``outer`` an extra outer folder name, ``size``
    the image side, ``gt=False`` leaves out "2. Groundtruths".
    """

    def make(cases, *, sep=". ", outer=None, size=32, gt=True, name="drac"):
        root = tmp_path / name
        seg = (root / outer if outer else root) / f"A{sep}Segmentation"
        split_names = {"a": f"a{sep}Training Set", "b": f"b{sep}Testing Set"}
        for split, split_cases in cases.items():
            images = seg / f"1{sep}Original Images" / split_names[split]
            images.mkdir(parents=True, exist_ok=True)
            truths = seg / f"2{sep}Groundtruths" / split_names[split]
            for c in LESION_CLASSES if gt else ():
                (truths / c.folder.replace(". ", sep, 1)).mkdir(parents=True, exist_ok=True)
            for cid, masks in split_cases.items():
                rng = np.random.default_rng(cid)
                _png(images / f"{cid:03d}.png", rng.integers(0, 256, (size, size), np.uint8))
                for index, mask in masks.items() if gt else ():
                    folder = truths / LESION_CLASSES[index - 1].folder.replace(". ", sep, 1)
                    _png(folder / f"{cid:03d}.png", (np.asarray(mask) * 255).astype(np.uint8))
        return root

    return make


def pytest_collection_modifyitems(config, items):
    """Skip the ``gpu`` tests where no GPU is usable, saying so once per test (not inside the
    test bodies, so that a GPU machine runs exactly the tests ``-m gpu`` selects)."""
    if torch.cuda.is_available() or os.environ.get("DRAC_GPU_TESTS_ON") == "cpu":
        return
    skip = pytest.mark.skip(
        reason="needs a usable CUDA GPU (scripts/gpu-check.sh runs these where one is lent)"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
