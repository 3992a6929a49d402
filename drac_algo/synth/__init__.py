"""Phantom DRAC2022 Task 1 data: synthetic UW-OCTA angiograms with lesion masks.

The real DRAC images cannot be downloaded here, so the whole pipeline is built and tested on
this phantom. Write a dataset in the release layout (plus test ground truth and a preview)::

    python -m drac_algo.synth runs/phantom --n-train 24 --n-test 8 --size 1024 --seed 0
    python -m drac_algo.synth runs/phantom256 --size 256 --overwrite --no-preview

or from code::

    from drac_algo.synth import generate_case, write_dataset
    image, masks = generate_case(np.random.default_rng(0), 256)  # (256, 256) uint8, {1,2,3: mask}
    write_dataset("runs/phantom", n_train=24, n_test=8, size=256, seed=0)

Modules: ``anatomy`` (fovea, disc, vessel trees), ``lesions`` (NA, IRMA, NV regions and their
signal), ``case`` (one image: capillaries, distractors, acquisition), ``dataset`` (names, layout,
preview), ``fields`` (random fields).
"""

from drac_algo.synth.case import IRMA, NA, NV, PhantomParams, generate_case
from drac_algo.synth.dataset import case_ids, case_rng, preview_grid, write_dataset

__all__ = [
    "IRMA",
    "NA",
    "NV",
    "PhantomParams",
    "case_ids",
    "case_rng",
    "generate_case",
    "preview_grid",
    "write_dataset",
]
