"""The ensemble inference engine: probability maps and masks for one image, one network per
lesion class member (seeds/folds), with test-time augmentation.

Per class and image (shapes for an input image (H, W) uint8):

1. For each member: :func:`drac_algo.data.preprocess.to_network_input` with the member's
   ``input_size`` and normalisation (the same function validation uses in training).
2. The member's TTA views (the requested set intersected with the transforms its bundle entry
   lists as valid) go through the network channels-last (oneDNN and cuDNN both run NHWC
   convolutions natively), in batches of at most ``max_views_per_batch`` (default
   :func:`drac_algo.engine.devices.default_views_per_batch`: 8 on CUDA, 1 on the CPU), under the
   autocast of :func:`drac_algo.engine.precision.resolve_precision`; each view's logits (n, 1, S, S)
   are mapped back with that transform's inverse, then passed through a sigmoid.
3. The ensemble averages *probabilities*, not logits: the mean of the sigmoid over views gives a
   member map, which :func:`drac_algo.data.preprocess.from_network_output` takes back to (H, W); the
   mean over the class's members gives the class probability map (H, W)
   float32 in [0, 1].
4. ``mask = probability >= threshold`` (uint8 {0, 1}), then the class's optional clean-up
   (:func:`drac_algo.engine.postprocess.postprocess_mask`).

This module is the functional core: :func:`predict_probability` takes any callables as
networks, so tests use fake networks. Out-of-memory handling: on ``torch.OutOfMemoryError`` the
views per batch are halved down to 1 (and stay reduced for later images, in the
:class:`EngineState`), then the image runs on the CPU; each step is logged as a warning.
:class:`drac_algo.engine.predictor.Predictor` holds the networks of a whole bundle, loaded once, and
adds device/precision set-up and prefetching of the next image. The ensemble types are
:mod:`drac_algo.engine.ensemble`'s.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from drac_algo.common.errors import DracInputError
from drac_algo.data.preprocess import Geometry, from_network_output, to_network_input
from drac_algo.engine.devices import (
    place,
    release_cached_memory,
    resolve_device,
    resolve_views_per_batch,
)
from drac_algo.engine.ensemble import Member
from drac_algo.engine.precision import autocast, precision_name, resolve_precision
from drac_algo.engine.tta import TTATransform, select_transforms

logger = logging.getLogger(__name__)


Network = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# The forward pass over TTA views


def forward_views(
    network: Network,
    x: torch.Tensor,
    transforms: Sequence[TTATransform],
    max_views_per_batch: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean sigmoid probability over TTA views.

    x: (1, 1, S, S) float32 on the network's device. Views are batched ``max_views_per_batch``
    at a time; each view's logits go through its transform's inverse before the sigmoid.
    Returns (S, S) float32 in [0, 1] on the same device.
    """
    if not transforms:
        raise DracInputError("forward_views: no TTA transforms given")
    device = x.device
    total: torch.Tensor | None = None
    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, len(transforms), max_views_per_batch):
            group = transforms[start : start + max_views_per_batch]
            batch = torch.cat([t.forward(x) for t in group])
            batch = batch.contiguous(memory_format=torch.channels_last)
            logits = network(batch)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != tuple(batch.shape):
                found = getattr(logits, "shape", type(logits).__name__)
                raise DracInputError(
                    f"network returned {found} for a batch {tuple(batch.shape)}; expected logits "
                    "of the same shape (n, 1, S, S)"
                )
            for i, transform in enumerate(group):
                probability = torch.sigmoid(transform.inverse(logits[i : i + 1]).float())
                total = probability if total is None else total + probability
    return total[0, 0] / len(transforms)


@dataclass
class EngineState:
    """What the engine learns while running: the working views per batch and OOM events."""

    max_views_per_batch: int
    oom_retries: int = 0
    cpu_fallbacks: int = 0
    fp32_reruns: int = 0
    events: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        logger.warning(message)
        self.events.append(message)


def _member_probability(
    member: Member,
    transforms: Sequence[TTATransform],
    padded: np.ndarray,
    device: torch.device,
    precision: str,
    state: EngineState,
) -> np.ndarray:
    """(S, S) float32 mean probability over views for one member, with the OOM fallbacks."""
    x = torch.from_numpy(padded)[None, None]
    dtype = resolve_precision(precision, device)
    while True:
        out_of_memory = False
        try:
            place(member.network, device)
            result = _finite_forward(
                member, x.to(device), transforms, state.max_views_per_batch, dtype, state
            )
            return result.cpu().numpy()
        except torch.OutOfMemoryError:
            # Leave the except block before freeing memory: the traceback holds the tensors.
            out_of_memory = True
        if out_of_memory:
            release_cached_memory(device)
            if state.max_views_per_batch <= 1:
                if device.type == "cpu":
                    raise torch.OutOfMemoryError(
                        f"{member.name}: out of memory on the CPU with one view per batch"
                    )
                break
            smaller = max(1, state.max_views_per_batch // 2)
            state.oom_retries += 1
            state.warn(
                f"{member.name}: out of memory on {device} with {state.max_views_per_batch} "
                f"views per batch; retrying with {smaller}"
            )
            state.max_views_per_batch = smaller
    state.cpu_fallbacks += 1
    state.warn(
        f"{member.name}: out of memory on {device} even with one view per batch; "
        "running this image on the CPU"
    )
    cpu = torch.device("cpu")
    place(member.network, cpu)  # moved back to the device at the start of the next call
    dtype = resolve_precision(precision, cpu)
    return _finite_forward(member, x, transforms, 1, dtype, state).numpy()


def _finite_forward(
    member: Member,
    x: torch.Tensor,
    transforms: Sequence[TTATransform],
    views_per_batch: int,
    dtype: torch.dtype | None,
    state: EngineState,
) -> torch.Tensor:
    """:func:`forward_views` for one member, checked: an fp16 activation can overflow (its
    largest value is 65504), and the NaN that follows would silently become an empty mask. Under
    autocast such a member is rerun in float32 with a warning; in float32 it is an error."""
    result = forward_views(member.network, x, transforms, views_per_batch, dtype)
    if bool(torch.isfinite(result).all()):
        return result
    if dtype is not None:
        state.fp32_reruns += 1
        state.warn(
            f"{member.name}: non-finite probabilities under {precision_name(dtype)} autocast "
            "(an activation overflowed); rerunning this member in fp32"
        )
        result = forward_views(member.network, x, transforms, views_per_batch, None)
        if bool(torch.isfinite(result).all()):
            return result
    raise DracInputError(
        f"{member.name}: the network gives non-finite (NaN/inf) probabilities in fp32; "
        "its weights are probably broken (check the bundle's training logs)"
    )


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise DracInputError(f"image: expected a numpy array, found {type(image).__name__}")
    if image.ndim != 2 or image.dtype != np.uint8:
        raise DracInputError(
            f"image: expected a 2D (H, W) uint8 array, found shape {image.shape} {image.dtype}"
        )
    return image


def class_probability(
    members: Sequence[Member],
    transforms: Sequence[Sequence[TTATransform]],
    image: np.ndarray,
    device: torch.device,
    precision: str,
    state: EngineState,
    inputs: dict[tuple, tuple[np.ndarray, Geometry]],
) -> np.ndarray:
    """Mean over members of each member's probability map, (H, W) float32 in [0, 1].
    ``inputs`` caches prepared network inputs by (input_size, mean, std) across calls for the
    same image."""
    total = np.zeros(image.shape, dtype=np.float32)
    for member, views in zip(members, transforms, strict=True):
        key = (member.input_size, member.mean, member.std)
        if key not in inputs:
            inputs[key] = to_network_input(image, *key)
        padded, geometry = inputs[key]
        member_map = _member_probability(member, views, padded, device, precision, state)
        total += from_network_output(member_map, geometry)
    return total / np.float32(len(members))


def predict_probability(
    members: Sequence[Member],
    image: np.ndarray,
    tta: str | Sequence[str] = "d4",
    max_views_per_batch: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> np.ndarray:
    """One class's probability map for one image: the mean over members of the mean over TTA
    views of the sigmoid probabilities (probabilities are averaged, not logits).

    members: networks already on ``device`` (``nn.Module``s are moved there if not); image: (H, W)
    uint8; tta: a set name from :data:`drac_algo.engine.tta.TTA_SETS` or transform names,
    intersected
    per member with ``member.tta``. Returns (H, W) float32 in [0, 1].
    """
    image = check_image(image)
    if not members:
        raise DracInputError("predict_probability: no members given")
    device = resolve_device(device)
    max_views_per_batch = resolve_views_per_batch(max_views_per_batch, device)
    resolve_precision(precision, device)
    transforms = [select_transforms(tta, m.tta, where=m.name) for m in members]
    state = EngineState(max_views_per_batch)
    return class_probability(members, transforms, image, device, precision, state, {})
