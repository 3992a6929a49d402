"""What ``drac-bundle check`` runs beyond the checksums: every member's weights loaded into the
network its manifest entry declares (strictly, as inference loads them), and every ONNX file
run beside its torch network on one seeded random image, their probabilities agreeing within
:data:`AGREEMENT_ATOL`. The checksums prove that the files are the ones the manifest names; this
proves that they compute what it says, so that a bundle the check passes gives one answer on
every backend.

The image is small (:data:`CHECK_SIDE`): the check is about agreement, not speed, and a shape
baked into an export shows at any side other than the traced one (the bundle's input size). The
15-member default ensemble (Unet++ resnet34 + CAM for IRMA and NA, Unet resnet34 for NV) takes
11.8 s (16 s with the imports) on a quiet 2-core Xeon (avx2, avx512f): hashing the files, building
each network and each ONNX Runtime session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from drac_algo.bundle.manifest import Bundle, MemberSpec
from drac_algo.bundle.store import build_member
from drac_algo.common.errors import DracInputError
from drac_algo.networks.spec import input_multiple

# Largest |p_onnx - p_torch| accepted over an image's probabilities: float32 reordering gives
# ~1e-6 on trained networks; a graph of other weights or another network gives O(0.1).
AGREEMENT_ATOL = 1e-4
CHECK_SIDE = 64  # the random image's side, rounded up to each member's input multiple
CHECK_SEED = 0


def runtime_problem() -> str | None:
    """Why ONNX Runtime cannot run here (``None``: it can)."""
    try:
        import onnxruntime  # optional: torch alone runs every bundle
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    if "CPUExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CPUExecutionProvider"
    return None


def onnx_difference(network: nn.Module, path: Path, batch: torch.Tensor) -> float:
    """Largest difference between the probabilities (sigmoid of the logits) of ``network`` and
    of the ONNX file ``path`` run by ONNX Runtime on the CPU, for ``batch`` ((n, 1, H, W)
    float32); ``nan`` when either gives a non-finite value."""
    import onnxruntime as ort  # optional at import time: torch alone runs every bundle

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: its warnings are about unused initialisers
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise DracInputError(f"ONNX Runtime cannot run {path}: {exc}") from None
    with torch.inference_mode():
        expected = torch.sigmoid(network(batch))
    difference = float((torch.sigmoid(torch.from_numpy(logits)) - expected).abs().max())
    return difference if math.isfinite(difference) else math.nan


def check_image(member: MemberSpec, side: int = CHECK_SIDE, seed: int = CHECK_SEED) -> torch.Tensor:
    """The seeded random (1, 1, S, S) float32 image a member is checked on: standard normal (the
    normalised input's scale), S = ``side`` rounded up to the member's input multiple."""
    multiple = input_multiple(member.model)
    side = -(-side // multiple) * multiple
    return torch.randn(1, 1, side, side, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class MemberCheck:
    """One member's result: its weights load; ``onnx_difference`` is the largest probability
    difference from its ONNX file (``None``: no ONNX file compared)."""

    file: str
    onnx_difference: float | None


def check_members(
    folder: str | Path, bundle: Bundle, *, agreement: bool = True, side: int = CHECK_SIDE
) -> list[MemberCheck]:
    """Load every member of ``bundle`` (read from ``folder``) into its declared network, and
    (``agreement``) compare each tied ONNX file with it; raises :class:`DracInputError` listing
    every member that fails."""
    folder = Path(folder)
    results, problems = [], []
    for index, member in bundle.members():
        where = f"class {index} member {member.file}"
        try:
            network = build_member(folder, member).float().eval()
        except DracInputError as exc:
            problems.append(f"{where}: {exc}")
            continue
        difference = None
        if agreement and member.onnx is not None and member.onnx.tied:
            try:
                difference = onnx_difference(
                    network, folder / member.onnx.file, check_image(member, side)
                )
            except DracInputError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if not difference <= AGREEMENT_ATOL:  # also catches nan
                problems.append(
                    f"{where}: its ONNX file {member.onnx.file} disagrees with the weights: "
                    f"probabilities differ by up to {difference:.2e} (allowed "
                    f"{AGREEMENT_ATOL:.0e}) on a seeded random image"
                )
        results.append(MemberCheck(member.file, difference))
        del network
    if problems:
        raise DracInputError(
            f"model bundle {folder} does not compute what its manifest says:\n  - "
            + "\n  - ".join(problems)
        )
    return results
