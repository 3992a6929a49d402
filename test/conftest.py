"""Shared fixtures, built on :mod:`helpers` (which test modules import for the plain helpers):

- ``make_drac``: a tiny DRAC Task 1 tree of small PNGs, the cases and masks given;
- ``phantom_release``: a DRAC release of phantom data (:mod:`drac_algo.tools.synth`), one per
  set of arguments for the whole session (read-only);
- ``tiny_bundle`` (one per test module, read-only) and ``make_bundle`` (a factory): tiny model
  bundles, all built by :func:`helpers.write_bundle`;
- ``container_bundle``: a writable copy of the container test's trained bundle.

Tests marked ``gpu`` are skipped, with the reason, where torch cannot use CUDA."""

import os

import numpy as np
import pytest
import torch
from helpers import copy_container_bundle, tiny_manifest, write_bundle, write_png

from drac_algo.common.classes import LESION_CLASSES


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """The tiny bundle: classes 1-3, one 32 px Unet member each, every TTA view valid, no ONNX
    files; IRMA positive everywhere, NV nowhere, NA random (:data:`helpers.KNOWN_HEADS`).
    Shared by the tests of a module: copy it before changing it."""
    return write_bundle(tmp_path_factory.mktemp("tiny_bundle") / "model")


@pytest.fixture
def make_bundle(tmp_path):
    """Factory for a tiny bundle in ``tmp_path / name``: ``make_bundle(name="model", *,
    classes=(1, 2, 3), members=1, input_size=32, tta=TTA_NAMES, heads=KNOWN_HEADS, onnx=False,
    bundle=None)``; ``bundle`` (a :class:`Bundle`) replaces the manifest the other knobs
    describe. See :func:`helpers.tiny_manifest` and :func:`helpers.write_bundle`."""

    def make(name="model", *, bundle=None, heads=None, onnx=False, seed=0, **manifest):
        if bundle is None:
            bundle = tiny_manifest(**manifest)
        elif manifest:
            raise TypeError(f"pass either bundle or {sorted(manifest)}, not both")
        kwargs = {} if heads is None else {"heads": heads}
        return write_bundle(tmp_path / name, bundle, onnx=onnx, seed=seed, **kwargs)

    return make


@pytest.fixture
def container_bundle(tmp_path):
    """A writable copy of the container fixture bundle (3 classes, 1 tiny member each at 128 px,
    tied ONNX files) in ``tmp_path / "model"``."""
    return copy_container_bundle(tmp_path / "model")


@pytest.fixture(scope="session")
def phantom_release(tmp_path_factory):
    """Factory for a phantom DRAC release: ``phantom_release(n_train, n_test, size, seed)``
    returns the folder :func:`drac_algo.tools.synth.write_dataset` wrote (release layout, test
    ground truth, ``phantom.json``, ``preview.png``). Written once per set of arguments and
    shared by every test that asks for it: never write into it."""
    from drac_algo.tools.synth import write_dataset

    written = {}

    def make(n_train, n_test, size, seed):
        key = (n_train, n_test, size, seed)
        if key not in written:
            folder = tmp_path_factory.mktemp(f"phantom_{n_train}_{n_test}_{size}px_seed{seed}")
            written[key] = write_dataset(folder / "drac", n_train, n_test, size, seed=seed)
        return written[key]

    return make


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
                write_png(images / f"{cid:03d}.png", rng.integers(0, 256, (size, size), np.uint8))
                for index, mask in masks.items() if gt else ():
                    folder = truths / LESION_CLASSES[index - 1].folder.replace(". ", sep, 1)
                    write_png(folder / f"{cid:03d}.png", (np.asarray(mask) * 255).astype(np.uint8))
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
