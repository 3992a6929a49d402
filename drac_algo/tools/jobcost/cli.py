"""``python -m drac_algo.jobcost`` (``drac-jobcost``): the options, then the run.

Imports click and nothing that imports torch, so ``--help`` answers at once; the run imports
the benchmark's modules (torch, smp, the exporter) when it starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from drac_algo.common.cli import tool_command
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_write_text, check_output_file
from drac_algo.tools.jobcost.config import (
    DEFAULT_CACHE,
    DEFAULT_SIZES,
    QUICK_SIDE,
    JobCostConfig,
    parse_sizes,
)


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    try:
        return parse_sizes(value)
    except DracInputError as exc:
        raise click.BadParameter(str(exc).removeprefix("--sizes: ")) from None


@tool_command("drac-jobcost")
@click.option(
    "--local",
    is_flag=True,
    help="Run `python -m process` from this checkout instead of the image (no Docker needed; "
    "threads and CPUs limited to each size's, memory not).",
)
@click.option(
    "--sizes",
    default=DEFAULT_SIZES,
    show_default=True,
    callback=_sizes,
    help="Instance sizes, CPUS:MEMORY (docker's --cpus and --memory): Grand Challenge's CPU "
    "jobs (2 vCPU / 8 GB) and T4 GPU jobs (4 vCPU / 16 GB).",
)
@click.option(
    "--jobs",
    type=int,
    default=1,
    show_default=True,
    help="Jobs per size, back to back (median and range reported).",
)
@click.option("--image", default="drac-algo", show_default=True, help="The algorithm image's tag.")
@click.option(
    "--gpus",
    type=click.Choice(["auto", "all", "none"]),
    default="auto",
    show_default=True,
    help="docker run --gpus all: auto = where the docker engine has an NVIDIA runtime.",
)
@click.option(
    "--bundle",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="A real model bundle (default: the default recipes' ensemble with random weights).",
)
@click.option(
    "--members",
    type=int,
    default=None,
    help="Random-weight members per class.  [default: the recipes' own, 5 folds x 1 seed; "
    "--quick: 1]",
)
@click.option(
    "--side",
    type=int,
    default=None,
    help="The job image's side (and the random networks' input size).  [default: 1024; "
    f"--quick: {QUICK_SIDE}]",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weights and phantom seed.")
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_CACHE,
    show_default=True,
    help="Where random-weight bundles are kept (one folder per set of parameters).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds a job may run before it is stopped (and the run fails).",
)
@click.option(
    "--quick",
    is_flag=True,
    help=f"Smoke run: one tiny (resnet18) member per class, a {QUICK_SIDE} px job.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the markdown table here (e.g. job-cost.md).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write every raw number as JSON.",
)
@click.argument("process_args", nargs=-1, type=click.UNPROCESSED)
def main(
    local: bool,
    side: int | None,
    out: Path | None,
    json_path: Path | None,
    process_args: tuple[str, ...],
    **options: Any,
) -> None:
    """What one Grand Challenge job costs per instance size: a fresh container (or, with
    --local, process) per job, import to exit, timed on the host and part by part from the
    job's results.json. Arguments after -- go to process.py in every job, e.g.
    -- --precision fp32."""
    # Output files checked before minutes of work; written only once every job has succeeded.
    for path, what in ((out, "--out"), (json_path, "--json")):
        if path is not None:
            check_output_file(path, what)
    # Deliberately lazy: these import torch, smp and the exporter (seconds), which --help and
    # option errors must not wait for.
    from drac_algo.tools.jobcost.report import format_report
    from drac_algo.tools.jobcost.run import run_jobcost

    cfg = JobCostConfig(
        runner="local" if local else "docker",
        side=side if side is not None else (QUICK_SIDE if options["quick"] else 1024),
        process_args=process_args,
        **options,
    )
    report = run_jobcost(cfg)
    text = format_report(report)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    if out is not None:
        atomic_write_text(out, text)
    click.echo(text, nl=False)
    for path in (out, json_path):
        if path is not None:
            click.echo(f"wrote {path}")
