"""What a network is, without building one: :class:`ModelSpec` (architecture, encoder, attention,
depth, decoder widths) and :class:`Normalization` (its input contract), validated on
construction, and :func:`input_multiple`.

Kept apart from :mod:`drac_algo.networks.models` (which builds networks with torch and
segmentation-models-pytorch) so that reading a bundle's manifest imports neither: the ONNX
Runtime path never builds a network, and importing segmentation-models-pytorch (with timm,
torchvision and torch._dynamo behind it) was most of a job's cold start. The one check that
needs the library, that smp or timm knows the encoder's name, is
:func:`drac_algo.networks.models.check_encoder`, done wherever a network is built and when a
training config is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from drac_algo.common.dataclass_io import check_keys, plain
from drac_algo.common.errors import DracInputError
from drac_algo.data.preprocess import normalize

# The keys of drac_algo.networks.models.ARCHITECTURES (a test keeps them equal).
ARCHITECTURE_NAMES = ("unet", "unetplusplus", "deeplabv3plus")
# Architectures whose decoder blocks have the attention1/attention2 slots that CAM and scse use.
ARCHITECTURES_WITH_DECODER_ATTENTION = ("unet", "unetplusplus")
ATTENTIONS: tuple[str | None, ...] = (None, "cam", "cam-2sigmoid", "scse")
# smp's default Unet / Unet++ decoder widths for depth 5; a shallower encoder takes the first ones.
SMP_UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)
SMP_DEEPLAB_DECODER_CHANNELS = 256
ENCODER_DEPTHS = (3, 4, 5)


@dataclass(frozen=True)
class Normalization:
    """How a uint8 image becomes network input: ``(pixels / 255 - mean) / std``, one channel.

    Defined here, beside the model, because it is part of each model's input contract; the
    augmentation pipeline, the config, the bundle and inference all take it from here.
    """

    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (self.mean, self.std)
        )
        if not numbers or not np.isfinite(self.mean) or not np.isfinite(self.std) or self.std <= 0:
            raise DracInputError(
                f"normalization needs a finite mean and a positive std; got mean={self.mean}, "
                f"std={self.std}"
            )

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 -> ``(H, W)`` float32 network input
        (:func:`drac_algo.data.preprocess.normalize`)."""
        return normalize(pixels, self.mean, self.std)

    def to_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalization:
        check_keys(data, cls, "normalization")
        return cls(**data)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network (weights aside). Validated on construction.

    ``arch``: one of :data:`ARCHITECTURE_NAMES`. ``encoder``: an smp encoder name (checked by
    :func:`drac_algo.networks.models.check_encoder`, not here: see the module docstring).
    ``attention``: one of :data:`ATTENTIONS` (not with deeplabv3plus).
    ``encoder_depth``: 3 to 5. ``decoder_channels``: ``None`` = smp default
    ((256, 128, 64, 32, 16) cut to ``encoder_depth`` entries for Unet / Unet++; 256 for
    DeepLabV3+, where a one-element tuple sets it).
    """

    arch: str
    encoder: str = "resnet34"
    attention: str | None = None
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("arch", "encoder"):
            if not isinstance(getattr(self, name), str):
                raise DracInputError(f"model {name} must be a string; got {getattr(self, name)!r}")
        if self.attention is not None and not isinstance(self.attention, str):
            raise DracInputError(
                f"model attention must be a string or none; got {self.attention!r}"
            )
        if self.arch not in ARCHITECTURE_NAMES:
            raise DracInputError(
                f"unknown architecture {self.arch!r}; valid: {', '.join(ARCHITECTURE_NAMES)}"
            )
        if self.attention not in ATTENTIONS:
            valid = ", ".join(repr(a) for a in ATTENTIONS)
            raise DracInputError(f"unknown decoder attention {self.attention!r}; valid: {valid}")
        if self.attention is not None and self.arch not in ARCHITECTURES_WITH_DECODER_ATTENTION:
            raise DracInputError(
                f"attention {self.attention!r} needs a Unet-style decoder "
                f"({', '.join(ARCHITECTURES_WITH_DECODER_ATTENTION)}); {self.arch} has no "
                "decoder attention slots: use attention = none"
            )
        if isinstance(self.encoder_depth, bool) or self.encoder_depth not in ENCODER_DEPTHS:
            raise DracInputError(
                f"encoder_depth must be one of {ENCODER_DEPTHS}; got {self.encoder_depth!r}"
            )
        if self.decoder_channels is not None:
            if not isinstance(self.decoder_channels, tuple | list):
                raise DracInputError(
                    f"decoder_channels must be a list of integers; got {self.decoder_channels!r}"
                )
            channels = tuple(self.decoder_channels)
            object.__setattr__(self, "decoder_channels", channels)
            if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
                raise DracInputError(
                    f"decoder_channels must be positive integers; got {list(channels)}"
                )
            expected = 1 if self.arch == "deeplabv3plus" else self.encoder_depth
            if len(channels) != expected:
                raise DracInputError(
                    f"{self.arch} with encoder_depth {self.encoder_depth} needs {expected} "
                    f"decoder_channels; got {len(channels)} ({list(channels)})"
                )
        if self.attention == "scse":
            # smp's SCSEModule squeezes to channels // 16 with no floor: below 16 channels that
            # is a zero-width layer, so refuse rather than crash inside smp.
            narrowest = min(self.resolved_decoder_channels())
            if narrowest < 16:
                raise DracInputError(
                    f"scse attention needs every decoder block to have at least 16 channels; "
                    f"decoder_channels {list(self.resolved_decoder_channels())} has {narrowest}"
                )

    def resolved_decoder_channels(self) -> tuple[int, ...]:
        """The decoder widths actually built (smp defaults filled in)."""
        if self.decoder_channels is not None:
            return self.decoder_channels
        if self.arch == "deeplabv3plus":
            return (SMP_DEEPLAB_DECODER_CHANNELS,)
        return SMP_UNET_DECODER_CHANNELS[: self.encoder_depth]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``from_dict(to_dict())`` gives back an equal spec."""
        return plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build from a dict such as a manifest entry; unknown keys are an error."""
        check_keys(data, cls, "model")
        if "arch" not in data:
            raise DracInputError("model spec has no 'arch'")
        values = dict(data)
        if values.get("attention") == "none":
            values["attention"] = None
        return cls(**values)


def input_multiple(spec: ModelSpec) -> int:
    """Input height and width must be multiples of this (``2 ** encoder_depth``)."""
    return 2**spec.encoder_depth
