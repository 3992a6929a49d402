"""``python -m drac_algo.synth OUT``: write a phantom DRAC2022 Task 1 dataset (see
:mod:`drac_algo.synth`). ``--size``, ``--image-size``'s earlier name, still works for one
release (hidden from ``--help``)."""

import logging
from pathlib import Path

import click

from drac_algo.cli import (
    Command,
    exits_on_bad_input,
    setup_logging,
    verbose_option,
    version_option,
)


@click.command(cls=Command)
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
    "--image-size",
    "size",
    default=1024,
    show_default=True,
    type=click.IntRange(min=16),
    help="Image side in pixels.",
)
@click.option("--size", "size", type=click.IntRange(min=16), hidden=True)  # the old name
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@click.option(
    "--preview/--no-preview",
    default=True,
    show_default=True,
    help="Write OUT/preview.png with a few cases and their masks.",
)
@verbose_option
@version_option("drac-synth")
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
    # Imported here: the generator pulls in OpenCV, not needed to print --help.
    from drac_algo.synth.dataset import write_dataset

    write_dataset(out, n_train, n_test, size, seed, overwrite=overwrite, preview=preview)
    logging.getLogger(__name__).info("done: %s", out)


if __name__ == "__main__":
    main()
