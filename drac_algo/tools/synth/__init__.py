"""Phantom DRAC2022 Task 1 data: synthetic UW-OCTA angiograms with lesion masks.

The real DRAC images cannot be downloaded here, so the whole pipeline is built and tested on
this phantom. Write a dataset in the release layout (plus test ground truth and a preview)::

    python -m drac_algo.synth runs/phantom --n-train 24 --n-test 8 --image-size 1024 --seed 0
    python -m drac_algo.synth runs/phantom256 --image-size 256 --overwrite --no-preview

or from code::

    from drac_algo.tools.synth import generate_case, write_dataset
    image, masks = generate_case(np.random.default_rng(0), 256)  # (256, 256) uint8, {1,2,3: mask}
    write_dataset("runs/phantom", n_train=24, n_test=8, size=256, seed=0)

Modules: ``anatomy`` (fovea, disc, vessel trees), ``lesions`` (NA, IRMA, NV regions and their
signal), ``case`` (one image: capillaries, distractors, acquisition), ``dataset`` (names, layout,
preview), ``fields`` (random fields), ``options`` (the command-line options of every command
that makes phantom data).

The names below are loaded on first use (PEP 562): ``python -m drac_algo.synth`` imports this
package before its command, and ``--help`` should not wait for OpenCV.
"""

import importlib
from typing import Any

# Public name -> the module of this package that defines it.
_PUBLIC = {
    "IRMA": "case",
    "NA": "case",
    "NV": "case",
    "PhantomParams": "case",
    "generate_case": "case",
    "case_ids": "dataset",
    "case_rng": "dataset",
    "preview_grid": "dataset",
    "write_dataset": "dataset",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
