"""The phantom data's command-line options, one spelling for every command that makes phantom
data (``python -m drac_algo.synth``, the quickstart, the ablation). Imports only click, so that
``--help`` stays fast."""

from collections.abc import Callable

import click

SIDE = click.IntRange(min=16)  # the phantom generator's smallest image (drac_algo.tools.synth.case)


def phantom_options(n_train: int, n_test: int, size: int, min_cases: int = 1) -> Callable:
    """``--n-train`` and ``--n-test`` (at least ``min_cases`` images each) and ``--image-size``
    (its earlier name ``--size`` still parses, hidden from ``--help``), with these defaults, for
    a command's ``n_train``, ``n_test`` and ``size`` parameters."""
    cases = click.IntRange(min=min_cases)
    options = [
        click.option(flag, type=cases, default=default, show_default=True, help=text)
        for flag, default, text in (
            ("--n-train", n_train, "Phantom training images."),
            ("--n-test", n_test, "Phantom test images (with ground truth)."),
        )
    ]
    options.append(
        click.option(
            "--image-size",
            "size",
            type=SIDE,
            default=size,
            show_default=True,
            help="Phantom image side in pixels.",
        )
    )
    options.append(click.option("--size", "size", type=SIDE, hidden=True))  # the earlier name

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate
