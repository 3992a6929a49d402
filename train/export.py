"""``python -m train.export RUN_DIR [--bundle DIR]``: rebuild the model bundle from the finished
members of an existing training run. ``--out``, this option's earlier name, still works for one
release (hidden from ``--help``)."""

from pathlib import Path

import click

from drac_algo.common.cli import tool_command

_BUNDLE = click.Path(path_type=Path, file_okay=False)


@tool_command("drac-export")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--bundle", type=_BUNDLE, help="Bundle folder to write (default RUN_DIR/model).")
@click.option("--out", "bundle", type=_BUNDLE, hidden=True)  # --bundle's old name
def main(run_dir: Path, bundle: Path | None) -> None:
    """Write the model bundle of RUN_DIR's finished members."""
    # Imported here: the export pulls in torch and the ONNX exporter, not needed for --help.
    from drac_algo.training.bundle_export import export_bundle

    click.echo(export_bundle(run_dir, bundle))


if __name__ == "__main__":
    main()
