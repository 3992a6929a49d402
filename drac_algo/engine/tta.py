"""Test-time augmentation: the D4 group (rotations by multiples of 90 degrees and flips) on the last
two dimensions of a tensor, each transform held together with its inverse.

All transforms act on tensors of shape (..., H, W), typically (N, C, H, W), and touch only the
last two dimensions. ``rot90`` rotates counter-clockwise as displayed with row 0 at the top
(``torch.rot90(x, 1, (-2, -1))``); ``transpose`` swaps rows and columns; ``antitranspose``
mirrors across the anti-diagonal. ``rot90``, ``rot270``, ``transpose`` and ``antitranspose`` swap
H and W, so the inference engine pads images to a square before applying them (a batch of views
must share one shape).

Sets of transforms are named in :data:`TTA_SETS`:

- ``"none"``: identity only;
- ``"flips"``: identity, hflip, vflip, rot180 (= hflip then vflip): the mirrors that keep H and W;
- ``"d4"``: all 8 elements of the group.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from drac_algo.common.errors import DracInputError

logger = logging.getLogger(__name__)

_H, _W = -2, -1


@dataclass(frozen=True)
class TTATransform:
    """A named view of an image and the map that takes the network output back.

    ``forward`` and ``inverse`` map a tensor (..., H, W) to a tensor (..., H', W') (H' = W and
    W' = H for the transforms that swap axes); ``inverse(forward(x)) == x`` exactly.
    """

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]
    swaps_axes: bool = False


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(_W,))


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(_H,))


def _rot90(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 1, dims=(_H, _W))


def _rot180(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(_H, _W))


def _rot270(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, -1, dims=(_H, _W))


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(_H, _W)


def _antitranspose(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x.transpose(_H, _W), dims=(_H, _W))


TRANSFORMS: dict[str, TTATransform] = {
    t.name: t
    for t in (
        TTATransform("identity", _identity, _identity),
        TTATransform("hflip", _hflip, _hflip),
        TTATransform("vflip", _vflip, _vflip),
        TTATransform("rot90", _rot90, _rot270, swaps_axes=True),
        TTATransform("rot180", _rot180, _rot180),
        TTATransform("rot270", _rot270, _rot90, swaps_axes=True),
        TTATransform("transpose", _transpose, _transpose, swaps_axes=True),
        TTATransform("antitranspose", _antitranspose, _antitranspose, swaps_axes=True),
    )
}

TTA_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips": ("identity", "hflip", "vflip", "rot180"),
    "d4": tuple(TRANSFORMS),
}


def get_transform(name: str) -> TTATransform:
    """The transform called ``name``; an unknown name raises :class:`DracInputError` listing the
    valid ones."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise DracInputError(
            f"unknown TTA transform {name!r}; valid: {', '.join(TRANSFORMS)}"
        ) from None


def tta_set(tta: str | Sequence[str]) -> tuple[TTATransform, ...]:
    """Resolve a set name from :data:`TTA_SETS` (``"none"``, ``"flips"``, ``"d4"``) or an explicit
    sequence of transform names. Duplicates are dropped, order kept."""
    if isinstance(tta, str):
        if tta not in TTA_SETS:
            raise DracInputError(f"unknown TTA set {tta!r}; valid: {', '.join(TTA_SETS)}")
        names: Iterable[str] = TTA_SETS[tta]
    else:
        names = tta
    transforms = tuple(get_transform(n) for n in dict.fromkeys(names))
    if not transforms:
        raise DracInputError("empty TTA transform list; give at least 'identity'")
    return transforms


def select_transforms(
    tta: str | Sequence[str], valid: Iterable[str] | None, where: str = "member"
) -> tuple[TTATransform, ...]:
    """The requested transforms that are also valid for one network, in the requested order.

    ``valid`` is the list of transform names stored with the network (``None`` = every transform
    is valid). ``identity`` is always valid; when nothing requested is valid the result is
    ``(identity,)``, so it is never empty. Dropped names are logged at INFO level, naming
    ``where``. Unknown names in ``valid`` raise :class:`DracInputError`.
    """
    requested = tta_set(tta)
    if valid is None:
        return requested
    allowed = {get_transform(n).name for n in valid} | {"identity"}
    kept = tuple(t for t in requested if t.name in allowed) or (TRANSFORMS["identity"],)
    dropped = [t.name for t in requested if t.name not in allowed]
    if dropped:
        logger.info(
            "%s: TTA transforms %s are not valid for this network and are skipped; views: %s",
            where,
            ", ".join(dropped),
            ", ".join(t.name for t in kept),
        )
    return kept
