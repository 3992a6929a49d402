"""``python -m drac_algo.synth OUT``: write a phantom DRAC2022 Task 1 dataset (see
:mod:`drac_algo.tools.synth`). ``--size``, ``--image-size``'s earlier name, still works for one
release (hidden from ``--help``)."""

import logging
from pathlib import Path

import click

from drac_algo.common.cli import tool_command
from drac_algo.tools.synth.options import phantom_options


@tool_command("drac-synth")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@phantom_options(n_train=24, n_test=8, size=1024, min_cases=0)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is not empty.")
@click.option(
    "--preview/--no-preview",
    default=True,
    show_default=True,
    help="Write OUT/preview.png with a few cases and their masks.",
)
def main(
    out: Path, n_train: int, n_test: int, size: int, seed: int, overwrite: bool, preview: bool
) -> None:
    """Write a phantom UW-OCTA dataset in the DRAC2022 Task 1 layout under OUT."""
    # Imported here: the generator pulls in OpenCV, not needed to print --help.
    from drac_algo.tools.synth.dataset import write_dataset

    write_dataset(out, n_train, n_test, size, seed, overwrite=overwrite, preview=preview)
    logging.getLogger(__name__).info("done: %s", out)


if __name__ == "__main__":
    main()
