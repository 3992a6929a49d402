"""``python -m train.export RUN_DIR [--out DIR]``: rebuild the model bundle from the finished
members of an existing training run."""

from pathlib import Path

import click

from drac_algo.cli import exits_on_bad_input, setup_logging


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--out", type=click.Path(path_type=Path), help="Bundle folder (default RUN_DIR/model)."
)
@exits_on_bad_input
def main(run_dir: Path, out: Path | None) -> None:
    """Write the model bundle of RUN_DIR's finished members."""
    setup_logging()
    from drac_algo.export import export_bundle

    click.echo(export_bundle(run_dir, out))


if __name__ == "__main__":
    main()
