"""The whole product on built-in data, in minutes on a CPU:

    python -m drac_algo.quickstart [--workdir quickstart]

1. ``python -m drac_algo.synth``: a phantom DRAC2022 Task 1 release at 256 x 256;
2. ``python -m train``: a small bundle (the default recipe family with the quickstart's budget,
   ``drac_algo/training/recipes/quickstart.toml``: ResNet-18 encoder, 128 px crops), one fold per
   class;
3. ``python process.py``: the D4 test-time-augmented ensemble on the phantom test images;
4. ``python -m drac_algo.evaluate --report``: the challenge metric against the phantom test
   ground truth, next to what an all-zero and an all-one prediction score, and the results on
   one page (``evaluation/report.html``: worst cases first, what the model missed and
   over-segmented, the training curves).

Each step is the library call behind the command named; the equivalent commands are printed.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from drac_algo.common.choices import DEFAULT_RECIPE, RECIPE_FAMILIES
from drac_algo.common.cli import tool_command, workdir_option
from drac_algo.tools.synth.options import phantom_options
from drac_algo.training import RECIPES_DIR
from drac_algo.training.run_layout import CURVES_PNG, TRAIN_LOG

log = logging.getLogger("quickstart")
QUICKSTART_RECIPE = RECIPES_DIR / "quickstart.toml"


def baseline_scores(data_root: Path) -> dict[str, float]:
    """Mean challenge Dice of the trivial predictions on the test split: all zeros, all ones."""
    # Imported here: reading the masks pulls in OpenCV, not needed to print --help.
    from drac_algo.data.metrics import score
    from drac_algo.data.release import find_layout, list_images, load_mask_stacks

    layout = find_layout(data_root)
    images = list_images(layout.test_images)
    gt = load_mask_stacks(layout.test_masks, images)
    zeros = {i: np.zeros_like(s) for i, s in gt.items()}
    ones = {i: np.ones_like(s) for i, s in gt.items()}
    return {"all zeros": score(gt, zeros).mean_dice, "all ones": score(gt, ones).mean_dice}


def run_quickstart(
    workdir: Path,
    n_train: int,
    n_test: int,
    size: int,
    epochs: int | None,
    seed: int,
    recipe: str = DEFAULT_RECIPE,
) -> None:
    # Imported here: each step pulls in torch, smp, albumentations or OpenCV, not needed to
    # print --help.
    from drac_algo.data.metrics import score
    from drac_algo.data.release import find_layout
    from drac_algo.serve.outputs import PROCESS_LOG
    from drac_algo.serve.pipeline import RunConfig, run
    from drac_algo.serve.report import REPORT_FILE
    from drac_algo.serve.results import RESULTS_FILE
    from drac_algo.tools.evaluate import load_cases
    from drac_algo.tools.evaluate_report import write_scored_report
    from drac_algo.tools.synth import write_dataset
    from drac_algo.training.config import load_config
    from drac_algo.training.distributed import init_distributed
    from drac_algo.training.experiment import run_training, summary_table

    workdir = workdir.resolve()
    data, run_dir, output = workdir / "data", workdir / "run", workdir / "output"
    report = workdir / "evaluation" / REPORT_FILE
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    click.echo(
        f"\n== 1/4 phantom data: python -m drac_algo.synth {data} --n-train {n_train} "
        f"--n-test {n_test} --image-size {size} --seed {seed}"
    )
    write_dataset(data, n_train, n_test, size, seed, overwrite=True)
    timings["phantom data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    epochs_flag = f" --epochs {epochs}" if epochs else ""
    click.echo(
        f"\n== 2/4 training: python -m train --data {data} --out {run_dir} --recipe {recipe} "
        f"--config {QUICKSTART_RECIPE}{epochs_flag}"
    )
    if run_dir.exists():
        shutil.rmtree(run_dir)
    configs = [
        load_config(task, QUICKSTART_RECIPE, recipe, epochs=epochs) for task in ("irma", "na", "nv")
    ]
    summary = run_training(data, run_dir, configs, init_distributed("cpu"))
    click.echo(summary_table(summary))
    timings["training"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    test_images = find_layout(data).test_images
    click.echo(
        f"\n== 3/4 inference: python process.py --input '{test_images}' --output {output} "
        f"--bundle {summary.bundle} --tta d4 --device cpu"
    )
    if output.exists():
        shutil.rmtree(output)
    run(
        RunConfig(
            input_dir=test_images,
            output_dir=output,
            bundle=summary.bundle,
            tta="d4",
            device="cpu",
        )
    )
    timings["inference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    click.echo(
        f"\n== 4/4 evaluation: python -m drac_algo.evaluate --gt {data} --pred {output} "
        f"--report {report} --run {run_dir}"
    )
    cases = load_cases(data, output)
    scores = score(cases.gt, cases.pred)
    report.parent.mkdir(parents=True, exist_ok=True)
    write_scored_report(report, scores, cases, gt=data, pred=output, run_dir=run_dir)
    baselines = baseline_scores(data)
    timings["evaluation"] = time.perf_counter() - t0

    click.echo("\nWhere things are:")
    click.echo(f"  phantom data + preview    {data}  ({data / 'preview.png'})")
    click.echo(f"  training curves           {run_dir}/<task>/<member>/{CURVES_PNG}")
    click.echo(f"  model bundle              {summary.bundle}")
    click.echo(f"  submission files          {output}/1.nii.gz 2.nii.gz 3.nii.gz")
    click.echo(f"  PNG masks, overlays       {output}/masks/  {output}/overlays/")
    click.echo(f"  per-case results          {output / RESULTS_FILE}")
    click.echo(f"  run logs (with versions)  {run_dir / TRAIN_LOG}  {output / PROCESS_LOG}")
    click.echo("\nTimings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    click.echo(
        "Trivial predictions, mean Dice: " + ", ".join(f"{k} {v:.4f}" for k, v in baselines.items())
    )
    click.echo(f"\nScore on the phantom test set ({n_test} images):\n{scores.table()}")
    click.echo(
        f"\nThe results on one page, worst cases first (open it in a browser): {report}\n"
        f"(the run's own page, without ground truth: {output / REPORT_FILE})"
    )


@tool_command("drac-quickstart")
@workdir_option(
    "quickstart", "Folder for the data, the run and the outputs (replaced on each run)."
)
@phantom_options(n_train=48, n_test=12, size=256)
@click.option("--epochs", type=int, help="Override the quickstart recipe's epochs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--recipe",
    type=click.Choice(RECIPE_FAMILIES),
    default=DEFAULT_RECIPE,
    show_default=True,
    help="Recipe family to train (see python -m train --help).",
)
def main(**options: Any) -> None:
    """Generate phantom data, train a small bundle, run the container's job and score it."""
    run_quickstart(**options)


if __name__ == "__main__":
    main()
