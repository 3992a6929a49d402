"""``python -m drac_algo.synth OUT``: write a phantom DRAC2022 Task 1 dataset (see
:mod:`drac_algo.synth`)."""

import logging
from pathlib import Path

import click

from drac_algo.cli import exits_on_bad_input, setup_logging
from drac_algo.synth.dataset import write_dataset


@click.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--n-train", default=24, show_default=True, type=click.IntRange(min=0), help="Training cases."
)
@click.option(
    "--n-test",
    default=8,
    show_default=True,
    type=click.IntRange(min=0),
    help="Testing cases (written with ground truth).",
)
@click.option(
    "--size",
    default=1024,
    show_default=True,
    type=click.IntRange(min=16),
    help="Image side in pixels.",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@click.option(
    "--preview/--no-preview",
    default=True,
    show_default=True,
    help="Write OUT/preview.png with a few cases and their masks.",
)
@click.option("-v", "--verbose", is_flag=True)
@exits_on_bad_input
def main(
    out: Path,
    n_train: int,
    n_test: int,
    size: int,
    seed: int,
    overwrite: bool,
    preview: bool,
    verbose: bool,
) -> None:
    """Write a phantom UW-OCTA dataset in the DRAC2022 Task 1 layout under OUT."""
    setup_logging(verbose)
    write_dataset(out, n_train, n_test, size, seed, overwrite=overwrite, preview=preview)
    logging.getLogger(__name__).info("done: %s", out)


if __name__ == "__main__":
    main()
