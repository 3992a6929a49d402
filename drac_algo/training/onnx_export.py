"""Export a bundle's members to ONNX for the CPU backend (:mod:`drac_algo.engine.onnx_backend`).

    python -m drac_algo.onnx_export BUNDLE [--force]

``train.export`` calls :func:`add_onnx` on every bundle it writes; this command adds the files
to a bundle written before (or where the export failed), and ``--force`` re-exports all. Each
member ``<name>.pt`` gets ``<name>.onnx`` beside it and an ``onnx`` entry (file, sha256,
``source_sha256``: the sha256 of the weights it was exported from, opset) in the manifest, which
is rewritten last and atomically: an interrupted export leaves the bundle as it was. Members whose
ONNX file is untied (a version 1 manifest recorded no source) are exported again without
``--force``; a bundle whose ONNX file was exported from other weights than the member's current
ones is refused by every reader until ``--force`` replaces it.

Why at export time, into the bundle, rather than at first load in the container: the bundle is
read-only at run time (Grand Challenge mounts it), each platform job starts a fresh container
(a cache would be rebuilt in every job, 3-10 s per member), and the runtime image then needs
only ``onnxruntime``, not the exporter. The file is checked like the weights: sha256 in the
manifest, verified at load.

The exporter is torch's TorchScript-based one (``dynamo=False``), opset 17, with the batch and
both image sides dynamic. torch 2.10 (the pinned CUDA 12 build) still ships it; the dynamo
exporter also works on these networks but took 28 s instead of 3 s for a Unet++ resnet34 and
needs onnxscript. Every export is verified before it is kept: ONNX Runtime's probabilities on
a random image of another side than the traced one must match torch's within
:data:`VERIFY_ATOL`, so a shape baked into the trace cannot pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from drac_algo.common.cli import tool_command
from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_write_text

if TYPE_CHECKING:
    from torch import nn

    from drac_algo.bundle.manifest import Bundle, MemberSpec, OnnxFile

log = logging.getLogger(__name__)

OPSET = 17
# Largest |p_onnx - p_torch| accepted over a random image's probabilities: the bundle check's
# drac_algo.bundle.verify.AGREEMENT_ATOL (a test keeps them equal; that module needs torch).
VERIFY_ATOL = 1e-4


class OnnxExportError(DracInputError):
    """A member could not be exported, or its export does not reproduce the torch network."""


def onnx_name(member: MemberSpec) -> str:
    return Path(member.file).with_suffix(".onnx").name


def export_network(network: nn.Module, path: Path, side: int) -> None:
    """Write ``network`` (eval mode, CPU, float32) to ``path`` as ONNX traced on a (1, 1, side,
    side) input, with dynamic batch and image sides."""
    import torch  # heavy: kept out of the module import so that --help needs no torch

    dummy = torch.zeros(1, 1, side, side)
    with warnings.catch_warnings():
        # The deprecation notice of the TorchScript exporter (see the module docstring) and the
        # tracer's warnings about shape arithmetic: the verification below catches their effect.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
        )


def verify_export(network: nn.Module, path: Path, side: int, seed: int = 0) -> float:
    """Largest probability difference between ONNX Runtime and torch on a random (2, 1, side,
    side) batch; raises :class:`OnnxExportError` above :data:`VERIFY_ATOL`."""
    import torch  # heavy: kept out of the module import so that --help needs no torch

    from drac_algo.bundle.verify import onnx_difference  # imports torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, side, side, generator=generator)
    difference = onnx_difference(network, path, x)
    if not np.isfinite(difference) or difference > VERIFY_ATOL:
        raise OnnxExportError(
            f"{path.name}: ONNX Runtime's probabilities differ from torch's by {difference:.2e} "
            f"(allowed {VERIFY_ATOL:.0e}); the export is not kept"
        )
    return difference


def export_member(folder: Path, member: MemberSpec, path: Path) -> OnnxFile:
    """Export one member of the bundle in ``folder`` to ``path``, verified; the entry names the
    member's final file, ``<name>.onnx``."""
    # Import torch and smp: kept out of the module import so that --help needs neither.
    from drac_algo.bundle.manifest import OnnxFile
    from drac_algo.bundle.store import build_member
    from drac_algo.bundle.store import sha256_file as _sha256
    from drac_algo.networks.spec import input_multiple

    network = build_member(folder, member).float().eval()
    multiple = input_multiple(member.model)
    try:
        export_network(network, path, member.input_size)
    except Exception as exc:  # the exporter raises many types for unsupported graphs
        raise OnnxExportError(f"{member.file}: ONNX export failed: {exc}") from None
    # Another side than the traced one, so a constant shape in the graph shows.
    side = min(member.input_size, 4 * multiple) + multiple
    difference = verify_export(network, path, side)
    name = onnx_name(member)
    log.info("%s -> %s (max probability difference %.1e)", member.file, name, difference)
    # member.sha256 is the weights file's, verified by load_bundle before build_member read it.
    return OnnxFile(file=name, sha256=_sha256(path), opset=OPSET, source_sha256=member.sha256)


def add_onnx(folder: str | Path, force: bool = False) -> Bundle:
    """Give every member of the bundle in ``folder`` its ONNX export, tied to its weights (only
    those without one or with an untied one, unless ``force``, which also replaces ONNX files
    exported from other weights); returns the bundle as rewritten (version 2). Needs ``onnx``
    (the exporter) and ``onnxruntime`` (the verification).

    All exports are written under hidden temporary names and verified first; only then are they
    renamed and the manifest rewritten (atomically), so a failure leaves the bundle as it was."""
    # Import torch: kept out of the module import so that --help needs no torch.
    from drac_algo.bundle.manifest import MANIFEST
    from drac_algo.bundle.store import load_bundle
    from drac_algo.bundle.verify import runtime_problem

    folder = Path(folder)
    # With force every ONNX file is replaced, so one exported from other weights must not stop
    # the bundle from loading (without force, load_bundle refuses it and names this option).
    bundle = load_bundle(folder, ignore_onnx=force, warn_untied=False)
    problem = runtime_problem()
    if problem:
        raise OnnxExportError(f"cannot verify ONNX exports: {problem}")
    classes, partials = {}, {}
    try:
        for index, entry in bundle.classes.items():
            members = []
            for member in entry.members:
                if member.onnx is None or not member.onnx.tied or force:
                    partial = folder / f".{onnx_name(member)}.partial"
                    partials[partial] = folder / onnx_name(member)
                    member = dataclasses.replace(
                        member, onnx=export_member(folder, member, partial)
                    )
                members.append(member)
            classes[index] = dataclasses.replace(entry, members=members)
        for partial, final in partials.items():
            os.replace(partial, final)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
    updated = dataclasses.replace(bundle, classes=classes)
    atomic_write_text(folder / MANIFEST, json.dumps(updated.to_dict(), indent=2) + "\n")
    return updated


@tool_command("drac-onnx-export")
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False))
@click.option("--force", is_flag=True, help="Re-export members that already have an ONNX file.")
def main(bundle: Path, force: bool) -> None:
    """Add each member's ONNX export (for the CPU backend) to the model bundle BUNDLE."""
    updated = add_onnx(bundle, force=force)
    for _, member in updated.members():
        click.echo(f"{member.file} -> {member.onnx.file}")


if __name__ == "__main__":
    main()
