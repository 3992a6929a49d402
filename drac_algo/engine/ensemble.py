"""What the engine runs: the members of each lesion class's ensemble and how their mean
probability becomes a mask, and the one mapping from a model bundle's manifest to them.

A :class:`Member`'s ``network`` is what runs it: a callable (an ``nn.Module``, an ONNX Runtime
session, a test's fake) for the engine, or a picklable description of how to build one for the
benchmark, which rebuilds the same networks in every worker process. Both come from
:func:`bundle_ensembles`, so a bundle's thresholds, clean-up, input sizes, normalisation and
valid TTA views reach the benchmark exactly as they reach ``process.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from drac_algo.bundle.manifest import Bundle, MemberSpec
from drac_algo.common.errors import DracInputError

N = TypeVar("N")


@dataclass(frozen=True)
class Member(Generic[N]):
    """One network of a class ensemble and the input contract it was trained with.

    ``network`` maps a float32 batch (n, 1, S, S) (S a multiple of 32) to logits (n, 1, S, S)
    when the engine runs it; ``input_size`` is the side the longer image side is scaled to;
    ``mean``/``std`` the normalisation of ``x / 255``; ``tta`` the transform names valid for
    this network (``None`` = all).
    """

    network: N
    input_size: int
    mean: float = 0.5
    std: float = 0.25
    tta: tuple[str, ...] | None = None
    name: str = "member"

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise DracInputError(f"{self.name}: input_size must be >= 1, found {self.input_size}")
        if not self.std > 0:
            raise DracInputError(f"{self.name}: normalisation std must be > 0, found {self.std}")


@dataclass(frozen=True)
class ClassEnsemble(Generic[N]):
    """The members of one lesion class and how their mean probability becomes a mask."""

    index: int
    members: tuple[Member[N], ...]
    threshold: float = 0.5
    min_component_px: int = 0
    fill_holes: bool = False
    key: str = ""
    keep_components: int = 0  # the k most confident components of each mask; 0 keeps all

    def __post_init__(self) -> None:
        if not self.members:
            raise DracInputError(f"class {self.index} ({self.key}): no members")
        if not 0.0 <= self.threshold <= 1.0:
            raise DracInputError(
                f"class {self.index} ({self.key}): threshold must lie in [0, 1], "
                f"found {self.threshold}"
            )

    def with_networks(self, networks: Callable[[int, Member[N]], object]) -> ClassEnsemble:
        """The same ensemble with member ``i``'s network replaced by ``networks(i, member)``."""
        return replace(
            self,
            members=tuple(replace(m, network=networks(i, m)) for i, m in enumerate(self.members)),
        )


@dataclass
class CasePrediction:
    """The engine's output for one image, keyed by class index.

    probabilities: (H, W) float32 in [0, 1]; masks: (H, W) uint8 in {0, 1} (after threshold and
    clean-up); seconds: engine wall time for this image; warnings: out-of-memory events.
    """

    probabilities: dict[int, np.ndarray]
    masks: dict[int, np.ndarray]
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def requested_classes(
    bundle: Bundle, folder: str | Path, classes: Iterable[int] | None = None
) -> list[int]:
    """The class indices to run, ascending: ``classes`` (all of the bundle's when ``None``),
    each of which the bundle must hold (:class:`DracInputError` names the ones it lacks)."""
    wanted = sorted(bundle.classes) if classes is None else sorted(set(classes))
    missing = [i for i in wanted if i not in bundle.classes]
    if missing:
        raise DracInputError(
            f"{folder}: classes {missing} requested, the bundle holds {sorted(bundle.classes)}"
        )
    return wanted


def bundle_ensembles(
    bundle: Bundle,
    folder: str | Path,
    network: Callable[[MemberSpec], N],
    classes: Iterable[int] | None = None,
) -> tuple[ClassEnsemble[N], ...]:
    """The ensembles of ``bundle`` (read from ``folder``), ascending by class index, each
    member's network made by ``network(spec)``. ``classes`` limits them to some class indices;
    one the bundle lacks raises :class:`DracInputError`."""
    ensembles = []
    for index in requested_classes(bundle, folder, classes):
        entry = bundle.classes[index]
        members = tuple(
            Member(
                network=network(spec),
                input_size=spec.input_size,
                mean=spec.normalization.mean,
                std=spec.normalization.std,
                tta=tuple(spec.tta),
                name=f"{entry.key} {spec.file}",
            )
            for spec in entry.members
        )
        ensembles.append(
            ClassEnsemble(
                index=entry.index,
                members=members,
                threshold=entry.threshold,
                min_component_px=entry.min_component_px,
                fill_holes=entry.fill_holes,
                key=entry.key,
                keep_components=entry.keep_components,
            )
        )
    return tuple(ensembles)
