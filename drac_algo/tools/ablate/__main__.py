"""``python -m drac_algo.ablate``: see :mod:`drac_algo.tools.ablate`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from drac_algo.common.cli import tool_command, workdir_option
from drac_algo.common.errors import DracInputError
from drac_algo.tools.synth.options import phantom_options

log = logging.getLogger("ablate")


def _seeds(value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError:
        raise DracInputError(f"--seeds takes integers separated by commas, got {value!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise DracInputError(f"--seeds needs distinct integers, got {value!r}")
    return seeds


@tool_command("drac-ablate")
@workdir_option(
    "ablation",
    "Folder for the data, the trained runs (reused when the command is run again) and the report.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    help="A DRAC root with test ground truth (default: phantom data made in WORKDIR/data).",
)
@click.option("--seeds", default="0,1", show_default=True, help="Training seeds, comma-separated.")
@click.option(
    "--rows",
    "row_names",
    multiple=True,
    metavar="NAME",
    help="Only these rows (repeatable; the names in the table, e.g. 'best recipe'). The best "
    "recipe's row is always included: every other row is compared with it. Default: every row.",
)
@phantom_options(n_train=48, n_test=24, size=256)
@click.option("--data-seed", type=int, default=1, show_default=True, help="Phantom data seed.")
@click.option(
    "--quick",
    is_flag=True,
    help="Smoke test: 64 px phantom, 2 epochs, one seed (numbers mean nothing).",
)
def main(workdir, data, seeds, row_names, n_train, n_test, size, data_seed, quick):
    """Train and score every ablation row; write ablation.md/.json/.png in WORKDIR."""
    # Imported here: training, scoring and the phantom generator pull in torch, smp,
    # albumentations and OpenCV, not needed to print --help.
    from drac_algo.tools.ablate.plan import DERIVED, TRAINED, select_rows, variant
    from drac_algo.tools.ablate.report import Row, write_report
    from drac_algo.tools.ablate.run import Ablation
    from drac_algo.tools.synth import write_dataset

    seed_list = _seeds("0" if quick else seeds)
    trained, derived = select_rows(TRAINED, DERIVED, row_names)
    workdir = workdir.resolve()
    if data is None:
        if quick:
            n_train, n_test, size = 12, 4, 64
        data = workdir / "data"
        if not (data / "phantom.json").is_file():
            write_dataset(data, n_train, n_test, size, data_seed, overwrite=True)
        # Described by what is on disk: a rerun with other sizes reuses the data made first.
        made = json.loads((data / "phantom.json").read_text())
        source = (
            f"phantom data ({made['n_train']} training / {made['n_test']} test images of "
            f"{made['size']} px, seed {made['seed']})"
        )
    else:
        source = f"{data} (its test split)"
    t0 = time.perf_counter()
    ablation = Ablation(data, workdir, seed_list, quick)
    caption = (
        f"**Ablation on {source}; {len(seed_list)} seed(s) ({', '.join(map(str, seed_list))}), "
        f"{'the --quick smoke budget' if quick else 'the quickstart training budget'}.** "
        "Challenge Dice on the test split, mean ± standard deviation over seeds; train min = "
        "CPU minutes to train the three classes. Phantom data at a small budget: this ranks "
        "components, it is not a claim about the real test set."
    )
    meta = {"data": str(data), "seeds": list(seed_list), "quick": quick}
    best = variant("best recipe")
    rows: list[Row] = []

    def report() -> str:
        # Written after every row, so a long run that is stopped still leaves its table.
        done = rows if any(r.name == best.name for r in rows) else []
        return write_report(workdir, done, best.name, caption, meta) if done else ""

    # Seed by seed, so that a stopped run still has every row for its first seeds.
    per_row: dict[str, Row] = {}
    for seed in seed_list:
        for v in trained:
            scores, seconds = ablation.score_trained(v, seed)
            row = per_row.setdefault(v.name, Row(v.name, [], [], v.note))
            row.scores.append(scores)
            row.seconds.append(seconds)
            log.info("%s, seed %d: mean Dice %.4f", v.name, seed, scores.mean_dice)
            if row not in rows:
                rows.append(row)
            report()
    for d in derived:
        if d.ensemble_seeds:
            if len(seed_list) < 2:
                continue
            scores = [ablation.score_derived(best, d, seed_list)]
        else:
            scores = [ablation.score_derived(best, d, [s]) for s in seed_list]
        rows.append(Row(d.name, scores, [], d.note))
    text = report()
    click.echo("\n" + text)
    click.echo(
        f"ablation written to {workdir}/ablation.{{md,json,png}} "
        f"({(time.perf_counter() - t0) / 60:.1f} min)"
    )


if __name__ == "__main__":
    main()
