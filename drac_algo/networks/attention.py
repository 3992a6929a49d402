"""The method's channel attention module (CAM) and its placement in smp decoders.

:class:`ChannelAttention` is a squeeze-and-excitation style gate per channel;
:func:`insert_channel_attention` puts one into both attention slots of every Unet / Unet++
decoder block. :data:`CAM_GATE_SCALES` maps the attention names that mean this module
(``"cam"``, ``"cam-2sigmoid"``) to their gate scale; :mod:`drac_algo.networks.models` builds the
networks
with it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from drac_algo.common.errors import DracInputError

# The channel attention modules: attention name -> the gate scale of ChannelAttention.
CAM_GATE_SCALES = {"cam": 1.0, "cam-2sigmoid": 2.0}


class ChannelAttention(nn.Module):
    """The method's channel attention module (CAM), squeeze-and-excitation style.

    ``(N, C, H, W) -> (N, C, H, W)``: global average pooling gives one value per channel, two
    fully connected layers with a ReLU between (``C -> hidden -> C``) and a sigmoid give a gate
    in (0, 1) per channel, and each channel of the input is multiplied by its gate.
    ``gate_scale`` multiplies the gates: 2 gives gates in (0, 2) that start near 1.

    ``hidden = max(min_hidden, channels // reduction)``, never more than ``channels``: with the
    reduction of 16 a 16-channel block would otherwise squeeze to a single unit (and a narrower
    one to zero), so narrow layers keep at least ``min_hidden`` (4) units.
    """

    def __init__(
        self, channels: int, reduction: int = 16, min_hidden: int = 4, gate_scale: float = 1.0
    ) -> None:
        super().__init__()
        if channels < 1 or reduction < 1 or min_hidden < 1:
            raise DracInputError(
                f"ChannelAttention needs channels, reduction, min_hidden >= 1; got {channels}, "
                f"{reduction}, {min_hidden}"
            )
        if not gate_scale > 0:
            raise DracInputError(f"ChannelAttention gate_scale must be > 0; got {gate_scale}")
        self.channels = channels
        self.gate_scale = float(gate_scale)
        self.hidden = min(channels, max(min_hidden, channels // reduction))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, self.hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(self.hidden, channels)
        self.sigmoid = nn.Sigmoid()

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C)`` gates in (0, ``gate_scale``)."""
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
            # torch's CPU mean over (H, W) of a bf16 tensor converts the whole map to float32
            # first (about 20 ms for 64 x 512 x 512, 28 % of a bf16 Unet++ forward);
            # avg_pool2d's vectorised kernel gives the same mean in about 1 ms.
            squeezed = F.avg_pool2d(x, x.shape[-2:]).flatten(1)
        else:
            squeezed = self.pool(x).flatten(1)
        gates = self.sigmoid(self.fc2(self.relu(self.fc1(squeezed))))
        return gates * self.gate_scale if self.gate_scale != 1.0 else gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gates(x)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, gate_scale={self.gate_scale:g}"


def _decoder_blocks_with_skip(model: nn.Module, arch: str) -> list[tuple[str, nn.Module, bool]]:
    """``(name, block, has_skip)`` for every non-empty decoder block of an smp Unet / Unet++.

    smp applies ``attention1`` only after concatenating a skip connection. In smp 0.6.0 the
    blocks without one are the last Unet block and the last Unet++ block ``x_0_<depth>``.
    """
    decoder = model.decoder
    if arch == "unet":
        last = len(decoder.blocks) - 1
        return [(f"blocks.{i}", b, i != last) for i, b in enumerate(decoder.blocks)]
    if arch == "unetplusplus":
        final = f"x_0_{decoder.depth}"
        return [
            (f"blocks.{name}", b, name != final)
            for name, b in decoder.blocks.items()
            if not b.is_empty
        ]
    raise DracInputError(f"{arch} has no decoder attention slots")


def insert_channel_attention(
    model: nn.Module, arch: str, reduction: int = 16, gate_scale: float = 1.0
) -> list[str]:
    """Put a :class:`ChannelAttention` into the decoder attention slots of an smp Unet / Unet++
    built with ``decoder_attention_type=None``; returns the names of the filled slots.

    In each decoder block, ``attention1`` gates the upsampled features concatenated with the
    skip connection (``conv1``'s input channels = in + skip) and ``attention2`` gates the block
    output (``conv2``'s output channels). ``attention2`` is filled in every block;
    ``attention1`` in every block that has a skip connection (smp never calls it elsewhere,
    so a module there would be dead weight). Only this model instance is changed.
    """
    filled = []
    for name, block, has_skip in _decoder_blocks_with_skip(model, arch):
        if has_skip:
            block.attention1 = ChannelAttention(
                block.conv1[0].in_channels, reduction, gate_scale=gate_scale
            )
            filled.append(f"decoder.{name}.attention1")
        block.attention2 = ChannelAttention(
            block.conv2[0].out_channels, reduction, gate_scale=gate_scale
        )
        filled.append(f"decoder.{name}.attention2")
    return filled
