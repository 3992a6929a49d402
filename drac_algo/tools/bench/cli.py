"""``python -m drac_algo.bench`` (``drac-bench``): the options, then the run.

Imports click and nothing that imports torch, so ``--help`` answers at once; the run imports
the benchmark's modules (torch, smp, the engine) when it starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from drac_algo.common.cli import DEVICE, tool_command
from drac_algo.common.fsutil import atomic_write_text


def _parse_methods(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    if value is None:
        return None  # BenchConfig's default: every method
    return tuple(m.strip() for m in value.split(",") if m.strip())


def _parse_channels(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@tool_command("drac-bench")
@click.option(
    "--image-size",
    "size",
    type=click.IntRange(min=16),
    default=None,
    help="Image side (and random-weight input size).  [default: 1024; --quick: 64]",
)
@click.option("--size", "size", type=click.IntRange(min=16), hidden=True)  # the old name
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    default=None,
    help="A trained model bundle (default: recipe architectures with random weights).",
)
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of real images (default: seeded phantom images).",
)
@click.option("--n-images", type=int, default=1, show_default=True, help="Images per timed pass.")
@click.option(
    "--members",
    type=int,
    default=1,
    show_default=True,
    help="Random-weight networks per class (the default training makes 5: folds x seeds; "
    "speed ratios do not depend on it, memory does).",
)
@click.option("--arch", default=None, help="Override the recipes' architecture (random weights).")
@click.option(
    "--encoder",
    default=None,
    help="Override the recipes' encoder (random weights).  [--quick: resnet18]",
)
@click.option(
    "--decoder-channels",
    callback=_parse_channels,
    default=None,
    help="Override decoder widths, e.g. 32,32,16,16,16.",
)
@click.option("--tta", default="d4", show_default=True, help="TTA set: none, flips, d4.")
@click.option(
    "--device",
    type=DEVICE,
    default="cpu",
    show_default=True,
    help="auto = CUDA when available; the CPU by default, the machine this is usually run on.",
)
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    help="The engine's precision: auto, fp32, bf16 or fp16 (auto: the Predictor's: bf16 where "
    "native, else fp16 on CUDA and fp32 on the CPU). A comma-separated list adds one engine "
    "row per precision (e.g. bf16,fp32). PRECISION:BACKEND picks the backend (torch, "
    "onnxruntime; default auto, the Predictor's rule), e.g. auto,fp32:onnxruntime,fp32:torch.",
)
@click.option(
    "--views-per-batch",
    type=int,
    default=None,
    help="The engine's views per forward.  [default: the engine's: 8 on CUDA, 1 on the CPU]",
)
@click.option(
    "--methods",
    callback=_parse_methods,
    default=None,
    help="Comma-separated subset of naive, ttach, engine.  [default: all three]",
)
@click.option(
    "--repeats",
    type=int,
    default=None,
    help="Timed passes (median reported).  [default: 3; --quick: 1]",
)
@click.option("--warmup", type=int, default=None, help="Untimed passes first.  [default: 1]")
@click.option(
    "--isolate/--no-isolate",
    default=None,
    help="Each method in a fresh process (clean memory figures).  [default: isolate; --quick: no]",
)
@click.option(
    "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)."
)
@click.option(
    "--train/--no-train", default=True, show_default=True, help="Also time training steps."
)
@click.option(
    "--train-task", default="irma", show_default=True, help="Whose network the training step uses."
)
@click.option(
    "--train-size", type=int, default=None, help="Training input side.  [default: --image-size]"
)
@click.option(
    "--train-batch",
    type=int,
    default=None,
    help="Training batch size.  [default: the recipe's on CUDA, 1 on the CPU]",
)
@click.option(
    "--train-repeats",
    type=int,
    default=None,
    help="Timed training steps.  [default: 3; --quick: 1]",
)
@click.option(
    "--matmul-side",
    type=int,
    default=None,
    help="Side of the peak matmul.  [default: 2048 CPU, 8192 CUDA]",
)
@click.option(
    "--engine-module",
    default="drac_algo.engine.predictor",
    show_default=True,
    help="Engine to benchmark: a module name or a .py file (A/B a patched copy).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weights and phantom seed.")
@click.option(
    "--quick", is_flag=True, help="Tiny smoke run (64 x 64, resnet18, one repeat, in-process)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the report as JSON.",
)
def main(json_path: Path | None, **options: Any) -> None:
    """Time naive, ttach and engine inference of the D4 TTA ensemble (and training steps)."""
    # Deliberately lazy: these import torch, smp and the engine (seconds), which --help and
    # option errors must not wait for.
    from drac_algo.tools.bench.config import config_from_options
    from drac_algo.tools.bench.report import format_report
    from drac_algo.tools.bench.run import run_bench

    cfg = config_from_options(**options)
    report = run_bench(cfg)
    click.echo(format_report(report))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        click.echo(f"\nwrote {json_path}")
