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
- ``"dice_skeleton_recall"``: the batch soft Dice plus ``weight`` times skeleton recall
  (Kirchhoff et al., ECCV 2024): ``1 - (sum(p * K) + smooth) / (sum(K) + smooth)`` with ``K``
  the target's skeleton, thickened by one pixel ("tubed"). Dice rewards overlap by area, so a
  thin segment of a few dozen pixels weighs little against a blob; recall on the skeleton
  weighs every stretch of a thin structure by its length and so asks the network to keep the
  segment whole. The skeleton is computed from the target on the loss's device
  (:func:`skeleton`, morphological, no gradient needed): no data-loader change and no CPU
  round trip on a GPU.
- ``"dice_cldice"``: ``(1 - alpha)`` times the batch soft Dice plus ``alpha`` times clDice
  (Shit et al., CVPR 2021): one minus the harmonic mean of the prediction's soft skeleton's
  precision (the part inside the target) and the target skeleton's recall (the part the
  prediction covers). Unlike skeleton recall alone, its precision half penalises predicted
  structure whose centre line leaves the target (false branches, smeared segments), and its
  Dice share keeps an all-positive map expensive: skeleton recall alone is perfect there.

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


def _positive_int(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DracInputError(f"loss parameter {name} must be an int >= 1; got {value!r}")


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


def skeleton(target: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Binary ``(N, 1, H, W)`` target -> its morphological skeleton thickened by one pixel, same
    shape, float {0, 1}.

    Lantuejoul's skeleton: the union over k of ``erode^k(X) - open(erode^k(X))`` (3 x 3 cross
    erosion by min-pooling, 3 x 3 dilation by max-pooling; the same operators as clDice's soft
    skeleton, Shit et al. CVPR 2021, here on a binary mask). ``iterations`` bounds the half-width
    of the structures it thins (10 covers segments up to ~20 px wide; a wider part keeps the
    core left after the last erosion, so every structure is represented). Then a 3 x 3
    dilation, kept inside the target.
    """
    x = (target > 0.5).float()
    skel = torch.zeros_like(x)
    for _ in range(iterations):
        eroded = _erode(x)
        skel = torch.maximum(skel, torch.relu(x - F.max_pool2d(eroded, 3, 1, 1)))
        x = eroded
    skel = torch.maximum(skel, x)  # the core left after the last erosion (none when thin)
    return F.max_pool2d(skel, 3, 1, 1) * (target > 0.5).float()


def _erode(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 cross erosion of a {0, 1} map (outside the image counts as foreground, so a
    structure touching a crop's border is not eaten from the border)."""
    vertical = -F.max_pool2d(-x, (3, 1), 1, (1, 0))
    horizontal = -F.max_pool2d(-x, (1, 3), 1, (0, 1))
    return torch.minimum(vertical, horizontal)


class DiceSkeletonRecallLoss(nn.Module):
    """Batch soft Dice + ``weight`` x (1 - soft recall of the target's tubed skeleton)."""

    def __init__(self, weight: float = 1.0, smooth: float = 1.0, iterations: int = 10) -> None:
        super().__init__()
        _non_negative(weight=weight, smooth=smooth)
        _positive_int(iterations=iterations)
        self.dice = DiceLoss(smooth)
        self.weight = float(weight)
        self.smooth = float(smooth)
        self.iterations = iterations

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(logits, target)
        probs = torch.sigmoid(logits.float())
        with torch.no_grad():
            skel = skeleton(target.float(), self.iterations)
        recall = ((probs * skel).sum() + self.smooth) / (skel.sum() + self.smooth)
        return dice + self.weight * (1 - recall)


def soft_skeleton(x: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Differentiable soft skeleton of a probability map (Shit et al.'s iterative min/max-pool
    skeletonisation), same shape, values in [0, 1]."""
    opened = F.max_pool2d(_erode(x), 3, 1, 1)
    skel = torch.relu(x - opened)
    for _ in range(iterations):
        x = _erode(x)
        opened = F.max_pool2d(_erode(x), 3, 1, 1)
        delta = torch.relu(x - opened)
        skel = skel + torch.relu(delta - skel * delta)
    return skel


class DiceClDiceLoss(nn.Module):
    """``(1 - alpha)`` x batch soft Dice + ``alpha`` x clDice, both over the whole batch."""

    def __init__(self, alpha: float = 0.5, smooth: float = 1.0, iterations: int = 10) -> None:
        super().__init__()
        _non_negative(smooth=smooth)
        if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
            raise DracInputError(f"loss parameter alpha must be in [0, 1]; got {alpha!r}")
        _positive_int(iterations=iterations)
        self.dice = DiceLoss(smooth)
        self.alpha = float(alpha)
        self.smooth = float(smooth)
        self.iterations = iterations

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(logits, target)
        probs = torch.sigmoid(logits.float())
        target = target.float()
        skel_pred = soft_skeleton(probs, self.iterations)
        with torch.no_grad():
            skel_true = soft_skeleton(target, self.iterations)
        precision = ((skel_pred * target).sum() + self.smooth) / (skel_pred.sum() + self.smooth)
        recall = ((skel_true * probs).sum() + self.smooth) / (skel_true.sum() + self.smooth)
        cldice = 1 - 2 * precision * recall / (precision + recall)
        return (1 - self.alpha) * dice + self.alpha * cldice


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
    "dice_skeleton_recall": DiceSkeletonRecallLoss,
    "dice_cldice": DiceClDiceLoss,
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
