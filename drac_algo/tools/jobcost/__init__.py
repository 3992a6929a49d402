"""What one Grand Challenge job costs, and where its cold start goes.

    python -m drac_algo.jobcost --out job-cost.md --json job-cost.json   # docker, image drac-algo
    python -m drac_algo.jobcost --sizes 2:8g --jobs 3 --image drac-algo:test
    python -m drac_algo.jobcost --bundle runs/drac/model -- --precision fp32
    python -m drac_algo.jobcost --local --sizes 2:8g                      # no Docker: this checkout
    python -m drac_algo.jobcost --local --quick                           # smoke test: a minute

The platform runs every job as the image in a fresh container: Python and its imports, the model
bundle's checks and networks, one image segmented, the masks written. So each job here runs the
same way, once per instance size (``--sizes CPUS:MEMORY,...``; default Grand Challenge's CPU-only
2 vCPU / 8 GB and T4 GPU 4 vCPU / 16 GB): ``docker run`` with ``test.sh``'s restrictions plus
``--cpus``/``--memory``/``--memory-swap``, or with ``--local`` ``python -m process`` from this
checkout with the size's CPUs (threads and ``taskset``; memory not limited). A size with more
CPUs than the host has is skipped, saying why, and the report lists it as skipped.

Measured per job: on the host, the wall time from launch to exit and to the first line on stderr;
from the job's own ``results.json`` (never its log text), ``diagnostics.cold_start`` (startup =
interpreter and imports, GPU probe, bundle check = manifest and every file's sha256, each
member's network build), ``diagnostics.stages`` (model load, decode, inference, write) and the
peak RSS. ``--jobs N`` runs N jobs per size, each with a fresh output folder, and reports the
median and range. The 65-job figure (the DRAC test set: 65 images, one job each) is 65 x the
median wall time per job: extrapolated, and labelled so.

The bundle, by default: the default recipes' ensemble (``drac_algo/training/recipes/best``:
Unet++ resnet34 + CAM for IRMA and NA, Unet resnet34 for NV; each class 5 folds x 1 seed = 5
members, 15 in all) with seeded random weights, saved and given ONNX files exactly as
``train.export`` does, and cached by its parameters under ``--cache``; ``--bundle DIR`` measures
a real one. A job that fails stops the run with an error naming it and the tail of its stderr,
and nothing is written.

Modules: :mod:`~drac_algo.tools.jobcost.cli` (the options; no torch, so ``--help`` is instant),
:mod:`~drac_algo.tools.jobcost.config` (sizes, ``JobCostConfig``),
:mod:`~drac_algo.tools.jobcost.bundle` (the random-weight bundle and its cache),
:mod:`~drac_algo.tools.jobcost.job` (the job input), :mod:`~drac_algo.tools.jobcost.runners`
(docker and local, the timing), :mod:`~drac_algo.tools.jobcost.run` (the whole run, each job's
numbers) and :mod:`~drac_algo.tools.jobcost.report` (the table). This package stays out of the
inference image (``.dockerignore``).
"""
