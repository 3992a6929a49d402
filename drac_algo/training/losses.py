"""Training losses for one binary lesion model: logits ``(N, 1, H, W)`` against a target
``(N, 1, H, W)`` float in {0, 1}; each returns a scalar tensor (float32, also under autocast).

- ``"dice"`` (the method's): one soft Dice over the whole batch, i.e. intersections and sums
  are taken over every pixel of every image at once: ``1 - (2 * sum(p * t) + smooth) /
  (sum(p) + sum(t) + smooth)`` with ``p = sigmoid(logits)``. The smoothing term keeps an
  all-empty batch defined (the loss then pushes predictions towards 0).
- ``"positive_dice_bce"`` / ``"positive_dice_focal"``: per-image soft Dice averaged over the
  images whose mask is not empty (the challenge scores a class only on images that contain it),
  plus ``aux_weight`` times a pixel-wise BCE or focal term over all images, so images without
  the lesion still teach something. A batch without any positive image gives Dice term 0.

Build by name with :func:`build_loss`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drac_algo.common.errors import DracInputError


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape or logits.ndim != 4 or logits.shape[1] != 1:
        raise DracInputError(
            f"loss expects logits and target of the same shape (N, 1, H, W); got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )


def _non_negative(**values: float) -> None:
    for name, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise DracInputError(f"loss parameter {name} must be a number >= 0; got {value!r}")


def soft_dice_per_image(
    probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """``(N, 1, H, W)`` probabilities and targets -> ``(N,)`` soft Dice coefficients."""
    dims = tuple(range(1, probs.ndim))
    intersection = (probs * target).sum(dims)
    denominator = probs.sum(dims) + target.sum(dims)
    return (2 * intersection + smooth) / (denominator + smooth)


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Mean over all pixels of ``-w * (1 - p_t) ** gamma * log(p_t)``, ``p_t`` the probability
    given to the true label; ``w = alpha`` on positives and ``1 - alpha`` on negatives
    (``alpha=None``: ``w = 1``). ``gamma = 0`` and no alpha is plain BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    loss = (1 - p_t) ** gamma * bce
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


class DiceLoss(nn.Module):
    """Soft Dice over the whole batch (one coefficient for all pixels of all images)."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        _non_negative(smooth=smooth)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target)
        probs = torch.sigmoid(logits.float())
        target = target.float()
        intersection = (probs * target).sum()
        denominator = probs.sum() + target.sum()
        return 1 - (2 * intersection + self.smooth) / (denominator + self.smooth)


class PositiveDiceLoss(nn.Module):
    """``mean over positive images of (1 - soft Dice) + aux_weight * aux`` where ``aux`` is
    pixel-wise BCE (``aux="bce"``) or focal loss (``aux="focal"``) over the whole batch.

    An image is positive when its target has at least one pixel > 0.5. Without any positive
    image in the batch the Dice term is 0 and only the auxiliary term is left.
    """

    AUX = ("bce", "focal")

    def __init__(
        self,
        aux: str = "bce",
        aux_weight: float = 1.0,
        smooth: float = 1.0,
        gamma: float = 2.0,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        if aux not in self.AUX:
            raise DracInputError(f"unknown auxiliary loss {aux!r}; valid: {', '.join(self.AUX)}")
        _non_negative(aux_weight=aux_weight, smooth=smooth, gamma=gamma)
        if alpha is not None and not (isinstance(alpha, int | float) and 0 <= alpha <= 1):
            raise DracInputError(f"focal alpha must be in [0, 1] or unset; got {alpha!r}")
        self.aux = aux
        self.aux_weight = float(aux_weight)
        self.smooth = float(smooth)
        self.gamma = float(gamma)
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target)
        logits = logits.float()
        target = target.float()
        positive = target.flatten(1).amax(1) > 0.5
        if positive.any():
            dice = soft_dice_per_image(
                torch.sigmoid(logits[positive]), target[positive], self.smooth
            )
            dice_term = (1 - dice).mean()
        else:
            dice_term = logits.new_zeros(())
        if self.aux == "bce":
            aux_term = F.binary_cross_entropy_with_logits(logits, target)
        else:
            aux_term = focal_loss(logits, target, self.gamma, self.alpha)
        return dice_term + self.aux_weight * aux_term


def _positive_dice_bce(aux_weight: float = 1.0, smooth: float = 1.0) -> PositiveDiceLoss:
    return PositiveDiceLoss("bce", aux_weight=aux_weight, smooth=smooth)


def _positive_dice_focal(
    aux_weight: float = 1.0, smooth: float = 1.0, gamma: float = 2.0, alpha: float | None = None
) -> PositiveDiceLoss:
    return PositiveDiceLoss("focal", aux_weight=aux_weight, smooth=smooth, gamma=gamma, alpha=alpha)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice": DiceLoss,
    "positive_dice_bce": _positive_dice_bce,
    "positive_dice_focal": _positive_dice_focal,
}


def loss_parameters(name: str) -> list[str]:
    """The parameter names :func:`build_loss` accepts for ``name``."""
    if name not in LOSSES:
        raise DracInputError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return [p for p in inspect.signature(LOSSES[name]).parameters if p != "self"]


def loss_defaults(name: str) -> dict[str, Any]:
    """The parameters of loss ``name`` that have defaults, with them: ``params`` written out with
    these values build the same loss as ``params`` left out."""
    loss_parameters(name)  # raises on an unknown name
    return {
        p.name: p.default
        for p in inspect.signature(LOSSES[name]).parameters.values()
        if p.name != "self" and p.default is not inspect.Parameter.empty
    }


def build_loss(name: str, **params: Any) -> nn.Module:
    """The loss registered as ``name`` (a key of :data:`LOSSES`) with ``params``; unknown names
    and parameters raise :class:`DracInputError` listing the valid ones."""
    valid = loss_parameters(name)
    unknown = [p for p in params if p not in valid]
    if unknown:
        raise DracInputError(
            f"loss {name!r} takes no parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    return LOSSES[name](**params)
