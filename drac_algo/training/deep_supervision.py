"""Unet++ deep supervision for training (the method's option): auxiliary 1 x 1 heads on the
decoder's main path, whose logits are scored with the same loss as the final output.

In smp 0.6.0 the Unet++ decoder's main path is the nodes ``x_0_j``: ``x_0_1`` ...
``x_0_{depth-1}`` sit at 1/8, 1/4 and 1/2 of the input side (depth 5); ``x_0_{depth}`` is the
full-resolution output the segmentation head reads. Each auxiliary head's logits are upsampled
bilinearly to the input size (the thin lesions stay in the full-resolution target) and weighted
as nnU-Net weights its deep-supervision outputs: 1 for the final output, then halved per level
towards the coarse end, all normalised to sum to 1.

Only training sees the heads: checkpoints keep the plain network's weights under ``"model"``
(so bundles and inference are unchanged) and the heads separately for resuming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from drac_algo.common.errors import DracInputError


class DeepSupervisionNet(nn.Module):
    """``net`` (an smp Unet++) plus auxiliary heads. ``forward(x)`` returns the final logits
    ``(N, 1, H, W)``; in training mode :attr:`aux` then holds the auxiliary logits, coarse
    to fine, each ``(N, 1, H, W)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        decoder = getattr(net, "decoder", None)
        blocks = getattr(decoder, "blocks", None)
        if not isinstance(blocks, nn.ModuleDict) or "x_0_1" not in blocks:
            raise DracInputError(
                "deep supervision needs a Unet++ (arch = 'unetplusplus') with encoder_depth >= 3"
            )
        self.net = net
        depth = decoder.depth
        nodes = [blocks[f"x_0_{j}"] for j in range(1, depth)]
        self.heads = nn.ModuleList(nn.Conv2d(b.conv2[0].out_channels, 1, 1) for b in nodes)
        self._features: list[torch.Tensor] = []
        self.aux: list[torch.Tensor] = []
        for node in nodes:
            node.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs, output: torch.Tensor) -> None:
        if self.training:
            self._features.append(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._features = []
        logits = self.net(x)
        if self.training:
            size = logits.shape[-2:]
            self.aux = [
                F.interpolate(head(f), size=size, mode="bilinear", align_corners=False)
                for head, f in zip(self.heads, self._features, strict=True)
            ]
        else:
            self.aux = []
        self._features = []
        return logits


def output_weights(n_aux: int) -> list[float]:
    """Loss weights of (final output, aux finest, ..., aux coarsest): 1, 1/2, 1/4, ...,
    normalised to sum to 1."""
    raw = [0.5**k for k in range(n_aux + 1)]
    return [w / sum(raw) for w in raw]


def supervised_loss(
    loss_fn: nn.Module, logits: torch.Tensor, aux: list[torch.Tensor], target: torch.Tensor
) -> torch.Tensor:
    """``loss_fn`` over the final logits and every auxiliary output, weighted by
    :func:`output_weights` (aux given coarse to fine). Without aux it is ``loss_fn`` alone."""
    outputs = [logits, *reversed(aux)]
    weights = output_weights(len(aux))
    return sum(w * loss_fn(o.float(), target) for w, o in zip(weights, outputs, strict=True))
