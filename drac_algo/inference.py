"""The ensemble inference engine: probability maps and masks for one image, one network per
lesion class member (seeds/folds), with test-time augmentation.

Per class and image (shapes for an input image (H, W) uint8):

1. For each member: :func:`drac_algo.preprocess.to_network_input` with the member's
   ``input_size`` and normalisation (the same function validation uses in training).
2. The member's TTA views (the requested set intersected with the transforms its bundle entry
   lists as valid) go through the network channels-last (oneDNN and cuDNN both run NHWC
   convolutions natively), in batches of at most ``max_views_per_batch`` (default
   :func:`default_views_per_batch`: 8 on CUDA, 1 on the CPU), under the autocast of
   :func:`drac_algo.precision.resolve_precision`; each view's logits (n, 1, S, S) are mapped
   back with that transform's inverse, then passed through a sigmoid.
3. The ensemble averages *probabilities*, not logits: the mean of the sigmoid over views gives a
   member map, which :func:`drac_algo.preprocess.from_network_output` takes back to (H, W); the
   mean over the class's members gives the class probability map (H, W)
   float32 in [0, 1].
4. ``mask = probability >= threshold`` (uint8 {0, 1}), then the class's optional clean-up
   (:func:`drac_algo.postprocess.postprocess_mask`).

The functional core (:func:`predict_probability`) takes any callables as networks, so tests use
fake networks. :class:`Predictor` holds the networks of a whole bundle, loaded once, and adds
device/precision set-up, prefetching of the next image and out-of-memory handling: on
``torch.OutOfMemoryError`` the views per batch are halved down to 1 (and stay reduced for later
images), then the image runs on the CPU; each step is logged as a warning.
"""

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drac_algo.errors import DracInputError
from drac_algo.hardware import cpu_threads, release_freed_memory
from drac_algo.onnx_backend import (
    BackendChoice,
    OnnxNetwork,
    backend_precision,
    choose_backend,
)
from drac_algo.postprocess import postprocess_mask, threshold_probability
from drac_algo.precision import autocast, precision_name, resolve_precision
from drac_algo.preprocess import Geometry, from_network_output, to_network_input
from drac_algo.tta import TTATransform, select_transforms

logger = logging.getLogger(__name__)


Network = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Member:
    """One network of a class ensemble and the input contract it was trained with.

    ``network`` maps a float32 batch (n, 1, S, S) (S a multiple of 32) to logits (n, 1, S, S);
    any callable works. ``input_size`` is the side the longer image side is scaled to;
    ``mean``/``std`` the normalisation of ``x / 255``; ``tta`` the transform names valid for
    this network (``None`` = all).
    """

    network: Network
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
class ClassEnsemble:
    """The members of one lesion class and how their mean probability becomes a mask."""

    index: int
    members: tuple[Member, ...]
    threshold: float = 0.5
    min_component_px: int = 0
    fill_holes: bool = False
    key: str = ""

    def __post_init__(self) -> None:
        if not self.members:
            raise DracInputError(f"class {self.index} ({self.key}): no members")
        if not 0.0 <= self.threshold <= 1.0:
            raise DracInputError(
                f"class {self.index} ({self.key}): threshold must lie in [0, 1], "
                f"found {self.threshold}"
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


# --------------------------------------------------------------------------------------------
# Device and precision


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` = the first CUDA device when available, else the CPU. Asking for CUDA on a
    machine without it, or a GPU index it does not have, raises :class:`DracInputError`."""
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DracInputError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DracInputError(f"device {device!r} requested but CUDA is not available")
        if resolved.index is None:
            # Parameters report "cuda:0", never "cuda": compare like with like.
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= torch.cuda.device_count():
            raise DracInputError(
                f"--device {device}: expected a GPU index below {torch.cuda.device_count()} "
                f"(the GPUs torch sees), found {resolved.index}"
            )
    return resolved


def default_views_per_batch(device: torch.device) -> int:
    """8 on CUDA (all D4 views in one batch); 1 on the CPU, where a batch of views is slower
    per view (bigger working set than the caches) and multiplies the working memory by the
    batch size (a bf16 Unet++ at 1024 x 1024: 1.9 GiB peak RSS with 1 view, 7.3 GiB with 8)."""
    return 8 if device.type == "cuda" else 1


def resolve_views_per_batch(requested: int | None, device: torch.device) -> int:
    """``requested``, or :func:`default_views_per_batch` when ``None``; must be >= 1."""
    views = default_views_per_batch(device) if requested is None else requested
    if views < 1:
        raise DracInputError(f"max_views_per_batch must be >= 1, found {views}")
    return views


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _module_device(network: Network) -> torch.device | None:
    if not isinstance(network, torch.nn.Module):
        return None
    for tensor in (*network.parameters(), *network.buffers()):
        return tensor.device
    return None


def _place(network: Network, device: torch.device) -> None:
    """Move an ``nn.Module`` to ``device`` if it lives elsewhere. Other callables are assumed to
    run wherever their input is."""
    current = _module_device(network)
    if current is not None and current != device:
        network.to(device)


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
class _RunState:
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
    state: _RunState,
) -> np.ndarray:
    """(S, S) float32 mean probability over views for one member, with the OOM fallbacks."""
    x = torch.from_numpy(padded)[None, None]
    dtype = resolve_precision(precision, device)
    while True:
        out_of_memory = False
        try:
            _place(member.network, device)
            result = _finite_forward(
                member, x.to(device), transforms, state.max_views_per_batch, dtype, state
            )
            return result.cpu().numpy()
        except torch.OutOfMemoryError:
            # Leave the except block before freeing memory: the traceback holds the tensors.
            out_of_memory = True
        if out_of_memory:
            _release_memory(device)
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
    _place(member.network, cpu)  # moved back to the device at the start of the next call
    dtype = resolve_precision(precision, cpu)
    return _finite_forward(member, x, transforms, 1, dtype, state).numpy()


def _finite_forward(
    member: Member,
    x: torch.Tensor,
    transforms: Sequence[TTATransform],
    views_per_batch: int,
    dtype: torch.dtype | None,
    state: _RunState,
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


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise DracInputError(f"image: expected a numpy array, found {type(image).__name__}")
    if image.ndim != 2 or image.dtype != np.uint8:
        raise DracInputError(
            f"image: expected a 2D (H, W) uint8 array, found shape {image.shape} {image.dtype}"
        )
    return image


def _class_probability(
    members: Sequence[Member],
    transforms: Sequence[Sequence[TTATransform]],
    image: np.ndarray,
    device: torch.device,
    precision: str,
    state: _RunState,
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
    uint8; tta: a set name from :data:`drac_algo.tta.TTA_SETS` or transform names, intersected
    per member with ``member.tta``. Returns (H, W) float32 in [0, 1].
    """
    image = _check_image(image)
    if not members:
        raise DracInputError("predict_probability: no members given")
    device = resolve_device(device)
    max_views_per_batch = resolve_views_per_batch(max_views_per_batch, device)
    resolve_precision(precision, device)
    transforms = [select_transforms(tta, m.tta, where=m.name) for m in members]
    state = _RunState(max_views_per_batch)
    return _class_probability(members, transforms, image, device, precision, state, {})


# --------------------------------------------------------------------------------------------
# The stateful predictor


_END = object()


def _default_load(item: Any) -> Any:
    from drac_algo.images import load_image

    return load_image(item)


def _pixels(loaded: Any) -> np.ndarray:
    return loaded if isinstance(loaded, np.ndarray) else loaded.pixels


class Predictor:
    """All class ensembles of a model, on one device, loaded once and reused for every image.

    ``predict(image)`` gives a :class:`CasePrediction`; ``predict_many(items)`` does the same for
    a sequence of files while the next one is decoded in a background thread. Out-of-memory
    handling shrinks ``max_views_per_batch`` for the rest of the run (see the module docstring).
    """

    def __init__(
        self,
        classes: Sequence[ClassEnsemble],
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        tta: str | Sequence[str] = "d4",
        max_views_per_batch: int | None = None,
        source: str | Path | None = None,
        backend: BackendChoice | None = None,
    ) -> None:
        if not classes:
            raise DracInputError("Predictor: no classes given")
        indices = [c.index for c in classes]
        if len(set(indices)) != len(indices):
            raise DracInputError(f"Predictor: duplicate class indices {indices}")
        self.device = resolve_device(device)
        max_views_per_batch = resolve_views_per_batch(max_views_per_batch, self.device)
        self.precision = precision
        self.dtype = resolve_precision(precision, self.device)
        self.tta = tta
        self.requested_views_per_batch = max_views_per_batch
        self.source = None if source is None else str(source)
        self.backend = backend or BackendChoice("torch", "networks given as callables")
        # Intra-op threads within the container's CPU quota (ONNX Runtime sessions get the same
        # number when they are created): torch's default is every core of the host.
        self.threads = cpu_threads() if self.device.type == "cpu" else None
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.ensembles: dict[int, ClassEnsemble] = {
            c.index: c for c in sorted(classes, key=lambda c: c.index)
        }
        self.transforms: dict[int, list[tuple[TTATransform, ...]]] = {
            c.index: [
                select_transforms(tta, m.tta, where=f"class {c.index} {m.name}") for m in c.members
            ]
            for c in self.ensembles.values()
        }
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every image has the same shape
        for ensemble in self.ensembles.values():
            for member in ensemble.members:
                if isinstance(member.network, torch.nn.Module):
                    member.network.eval()
                    _place(member.network, self.device)
                    # Channels-last on every device: oneDNN's CPU convolutions run NHWC
                    # natively (bf16 Unet++ at 1024 x 1024: 2.4 s per view NCHW, 1.9 s NHWC).
                    member.network.to(memory_format=torch.channels_last)
        self.bundle: Any = None  # the parsed drac_algo.bundle.Bundle when built from_bundle
        self._state = _RunState(max_views_per_batch)
        self._seconds: list[float] = []

    @classmethod
    def from_bundle(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        tta: str | Sequence[str] = "d4",
        max_views_per_batch: int | None = None,
        classes: Iterable[int] | None = None,
        backend: str = "auto",
    ) -> "Predictor":
        """Build every member of the bundle in ``folder`` (see :mod:`drac_algo.bundle`) once,
        with the thresholds, clean-up and TTA validity stored there. ``classes`` limits the run
        to some class indices. ``backend`` runs the networks (:func:`drac_algo.onnx_backend.
        choose_backend`): ``"onnxruntime"`` with ``precision="auto"`` means float32."""
        from drac_algo.bundle import build_member, load_bundle

        bundle = load_bundle(folder)
        wanted = sorted(bundle.classes) if classes is None else sorted(set(classes))
        missing = [i for i in wanted if i not in bundle.classes]
        if missing:
            raise DracInputError(
                f"{folder}: classes {missing} requested, the bundle holds {sorted(bundle.classes)}"
            )
        resolved = resolve_device(device)
        precision = backend_precision(backend, precision)
        without_onnx = [m.file for i in wanted for m in bundle.classes[i].members if not m.onnx]
        choice = choose_backend(
            backend, resolved, resolve_precision(precision, resolved), without_onnx
        )
        threads = cpu_threads()  # the Predictor sets torch's to the same count

        def network(spec: Any) -> Network:
            if choice.name == "onnxruntime":
                return OnnxNetwork(Path(folder) / spec.onnx.file, threads)
            return build_member(folder, spec, map_location="cpu")

        ensembles = []
        for index in wanted:
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
                )
            )
        release_freed_memory()  # the parsed member files
        predictor = cls(
            ensembles,
            device=device,
            precision=precision,
            tta=tta,
            max_views_per_batch=max_views_per_batch,
            source=folder,
            backend=choice,
        )
        predictor.bundle = bundle
        return predictor

    @property
    def classes(self) -> tuple[int, ...]:
        """The class indices this predictor produces, ascending."""
        return tuple(self.ensembles)

    def predict(self, image: np.ndarray) -> CasePrediction:
        """Probability maps and masks of every class for one (H, W) uint8 image."""
        image = _check_image(image)
        start = time.perf_counter()
        first_event = len(self._state.events)
        inputs: dict[tuple, tuple[np.ndarray, Geometry]] = {}
        probabilities, masks = {}, {}
        for index, ensemble in self.ensembles.items():
            probability = _class_probability(
                ensemble.members,
                self.transforms[index],
                image,
                self.device,
                self.precision,
                self._state,
                inputs,
            )
            mask = threshold_probability(probability, ensemble.threshold)
            probabilities[index] = probability
            masks[index] = postprocess_mask(mask, ensemble.min_component_px, ensemble.fill_holes)
        seconds = time.perf_counter() - start
        self._seconds.append(seconds)
        return CasePrediction(probabilities, masks, seconds, self._state.events[first_event:])

    def predict_many(
        self, items: Iterable[Any], load: Callable[[Any], Any] | None = None
    ) -> Iterator[tuple[Any, Any, CasePrediction]]:
        """Yield ``(item, loaded, prediction)`` in the order of ``items``, decoding the next item
        in a background thread while the current one runs through the networks.

        ``load(item)`` returns either an (H, W) uint8 array or an object with a ``.pixels`` array
        (default: :func:`drac_algo.images.load_image`, so items are file paths). An error while
        loading an item is raised when that item's turn comes, after the earlier ones were
        yielded.
        """
        load = _default_load if load is None else load
        iterator = iter(items)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="drac-prefetch") as pool:

            def submit() -> tuple[Any, Future] | None:
                item = next(iterator, _END)
                return None if item is _END else (item, pool.submit(load, item))

            pending = submit()
            try:
                while pending is not None:
                    item, future = pending
                    loaded = future.result()
                    pending = submit()
                    yield item, loaded, self.predict(_pixels(loaded))
            finally:
                if pending is not None:
                    pending[1].cancel()

    def settings(self) -> dict[str, Any]:
        """The run's settings for a results file (JSON-serialisable)."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "autocast": precision_name(self.dtype),
            "tta": self.tta if isinstance(self.tta, str) else list(self.tta),
            "max_views_per_batch": self.requested_views_per_batch,
            "backend": self.backend.name,
            "backend_reason": self.backend.reason,
            "threads": self.threads,
            "bundle": self.source,
            "classes": {
                str(index): {
                    "key": ensemble.key,
                    "threshold": ensemble.threshold,
                    "min_component_px": ensemble.min_component_px,
                    "fill_holes": ensemble.fill_holes,
                    "members": [
                        {
                            "name": member.name,
                            "input_size": member.input_size,
                            "views": [t.name for t in views],
                        }
                        for member, views in zip(
                            ensemble.members, self.transforms[index], strict=True
                        )
                    ],
                }
                for index, ensemble in self.ensembles.items()
            },
        }

    def stats(self) -> dict[str, Any]:
        """Timings and out-of-memory counts so far (JSON-serialisable)."""
        seconds = self._seconds
        return {
            "images": len(seconds),
            "seconds_total": float(sum(seconds)),
            "seconds_mean": float(np.mean(seconds)) if seconds else None,
            "seconds_max": float(max(seconds)) if seconds else None,
            "views_per_batch_now": self._state.max_views_per_batch,
            "oom_retries": self._state.oom_retries,
            "cpu_fallbacks": self._state.cpu_fallbacks,
            "fp32_reruns": self._state.fp32_reruns,
        }
