"""Check a model bundle folder from the command line, before it is baked into an image or
packed into ``model.tar.gz``:

    python -m drac_algo.bundle check DIR [--platform FILE]
    drac-bundle check DIR [--platform FILE]     # installed

Loads ``DIR`` with :func:`drac_algo.bundle.store.load_bundle` (manifest, member files, ONNX files,
sha256 checksums, each ONNX file tied to its member's current weights), then
(:func:`drac_algo.bundle.verify.check_members`) loads every member's weights strictly into the
network its entry declares and runs each ONNX file beside it on a seeded random image, their
probabilities agreeing within 1e-4, and prints one summary line::

    /path/model: valid model bundle: classes 1 irma (1 member), 2 na (2 members); 3 members;
    ONNX files: all 3 members; weights load into their networks, ONNX Runtime agrees with
    torch within 3.0e-07 (64 x 64 random image); checked in 2.1 s

So the check, the torch backend and the ONNX Runtime backend give one answer: a bundle that
passes runs the same networks on both, and one that either backend would refuse fails here.
Where ``onnxruntime`` is not installed a ``warning:`` line on stderr says that the agreement was
not checked; the same for a version 1 manifest's ONNX files, which are not used.

With ``--platform FILE`` (or, without it, the bundle's own ``platform.json`` if it has one) the
socket settings that the image would read from ``/opt/ml/model/platform.json`` are resolved as
well (:mod:`drac_algo.serve.job_settings`, environment ignored) and a second line names them. Exit
status 0 when everything checks out, 2 with ``error: ...`` on stderr naming the problem
otherwise. ``build.sh --bundle`` and ``export.sh`` run this (``scripts/common.sh``).

The command lives here rather than in :mod:`drac_algo.bundle.store`, which defines the format; that
module only hands ``python -m drac_algo.bundle`` on to :func:`main`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.cli import Group, exits_on_bad_input, version_option
from drac_algo.common.errors import DracInputError

if TYPE_CHECKING:
    from drac_algo.bundle.manifest import Bundle
    from drac_algo.bundle.verify import MemberCheck
    from drac_algo.serve.job_settings import JobSettings

# drac_algo.serve.job_settings.PLATFORM_FILE (a test keeps them equal)
PLATFORM_FILE = "platform.json"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def bundle_summary(folder: Path, bundle: Bundle) -> str:
    """One line: the folder, each class with its member count, the total, and which members
    carry an ONNX file (all, some, none; untied ones are not counted: they never run)."""
    classes = ", ".join(
        f"{index} {BY_INDEX[index].key} ({_count(len(entry.members), 'member')})"
        for index, entry in sorted(bundle.classes.items())
    )
    members = bundle.members()
    with_onnx = sum(member.onnx is not None and member.onnx.tied for _, member in members)
    if with_onnx == len(members):
        onnx = f"all {len(members)} members" if len(members) > 1 else "its member"
    elif with_onnx:
        onnx = f"{with_onnx} of {len(members)} members (the others run on torch only)"
    else:
        onnx = "none (torch backend only; python -m drac_algo.onnx_export adds them)"
    return (
        f"{folder}: valid model bundle: classes {classes}; "
        f"{_count(len(members), 'member')}; ONNX files: {onnx}"
    )


def checks_summary(checks: list[MemberCheck], seconds: float) -> str:
    """The member checks' half of the summary line: weights, ONNX agreement, time."""
    from drac_algo.bundle.verify import CHECK_SIDE

    differences = [c.onnx_difference for c in checks if c.onnx_difference is not None]
    agreement = (
        f", ONNX Runtime agrees with torch within {max(differences):.1e} "
        f"({CHECK_SIDE} x {CHECK_SIDE} random image)"
        if differences
        else ""
    )
    return f"weights load into their networks{agreement}; checked in {seconds:.1f} s"


def platform_summary(source: Path, settings: JobSettings) -> str:
    """One line: where the platform settings came from, the output sockets per class, the input
    socket and whether the GPU is required."""
    sockets = ", ".join(
        f"{BY_INDEX[index].key}={socket.slug}:{socket.relative_path}"
        for index, socket in sorted(settings.output_sockets.items())
    )
    input_socket = settings.input_slug or "the job's only image socket"
    return (
        f"{PLATFORM_FILE} from {source}: output sockets {sockets}; input socket {input_socket}; "
        f"GPU {'required' if settings.require_gpu else 'optional'}"
    )


def check_bundle(folder: Path, platform: Path | None = None) -> tuple[list[str], list[str]]:
    """Check the bundle in ``folder`` (files, checksums, weights against their networks, ONNX
    agreement) and the platform settings that would go with it: ``platform`` if given, else
    ``folder/platform.json`` if present. Returns the summary lines (one, or two with platform
    settings) and the warnings; raises :class:`DracInputError` naming the problem."""
    # Imported here: these modules need torch (seconds), which --help must not wait for.
    from drac_algo.bundle.manifest import untied_onnx_warning
    from drac_algo.bundle.store import load_bundle
    from drac_algo.bundle.verify import check_members, runtime_problem
    from drac_algo.serve.job_settings import resolve_job_settings

    folder = folder.resolve()
    start = time.perf_counter()
    bundle = load_bundle(folder, warn_untied=False)
    warnings = []
    if bundle.untied_onnx():
        warnings.append(untied_onnx_warning(folder, bundle.untied_onnx()))
    problem = runtime_problem()
    if problem and any(m.onnx is not None and m.onnx.tied for _, m in bundle.members()):
        warnings.append(
            f"{problem}: the ONNX files' agreement with the weights was not checked (the "
            "weights were)"
        )
    checks = check_members(folder, bundle, agreement=problem is None)
    seconds = time.perf_counter() - start
    lines = [f"{bundle_summary(folder, bundle)}; {checks_summary(checks, seconds)}"]
    if platform is not None and not platform.is_file():
        raise DracInputError(
            f"--platform {platform}: no such file; expected a {PLATFORM_FILE} with the "
            "phase's socket names (README 'Sockets and the GPU requirement')"
        )
    source = platform if platform is not None else folder / PLATFORM_FILE
    if source.is_file():
        settings = resolve_job_settings(folder, environ={}, platform_file=source)
        lines.append(platform_summary(source, settings))
    return lines, warnings


@click.group(cls=Group)
@version_option("drac-bundle")
def main() -> None:
    """Model bundle tools."""


@main.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--platform",
    type=click.Path(path_type=Path),
    default=None,
    help="The platform.json to check with the bundle (default: the bundle's own, if any).",
)
@exits_on_bad_input
def check_command(folder: Path, platform: Path | None) -> None:
    """Check the model bundle FOLDER: manifest, member and ONNX files, checksums, weights against
    their networks, ONNX Runtime against torch (exit 0 and a summary line, or exit 2 and the
    problem)."""
    lines, warnings = check_bundle(folder, platform)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for line in lines:
        click.echo(line)


if __name__ == "__main__":
    main()
