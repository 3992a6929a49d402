"""The stateful engine: :class:`Predictor` holds every class ensemble of a model bundle on one
device, loaded once and reused for every image, and runs them through the functional core of
:mod:`drac_algo.engine.core` (TTA views, averaging, out-of-memory fallbacks). It adds the device,
precision and backend set-up, the threshold and clean-up per class, timing, and decoding of the
next image in a background thread while the current one runs.
"""

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drac_algo.bundle.manifest import Bundle, MemberSpec
from drac_algo.bundle.store import build_member, load_bundle
from drac_algo.common.errors import DracInputError
from drac_algo.common.hardware import cpu_threads, release_freed_memory
from drac_algo.data.images import load_image
from drac_algo.data.preprocess import Geometry
from drac_algo.engine.core import EngineState, Network, check_image, class_probability
from drac_algo.engine.devices import place, resolve_device, resolve_views_per_batch
from drac_algo.engine.ensemble import (
    CasePrediction,
    ClassEnsemble,
    bundle_ensembles,
    requested_classes,
)
from drac_algo.engine.onnx_backend import (
    BackendChoice,
    OnnxNetwork,
    backend_precision,
    choose_backend,
)
from drac_algo.engine.postprocess import class_mask
from drac_algo.engine.precision import precision_name, resolve_precision
from drac_algo.engine.tta import TTATransform, select_transforms

_END = object()


def _pixels(loaded: Any) -> np.ndarray:
    return loaded if isinstance(loaded, np.ndarray) else loaded.pixels


class Predictor:
    """All class ensembles of a model, on one device, loaded once and reused for every image.

    ``predict(image)`` gives a :class:`CasePrediction`; ``predict_many(items)`` does the same for
    a sequence of files while the next one is decoded in a background thread. Out-of-memory
    handling shrinks ``max_views_per_batch`` for the rest of the run (see
    :mod:`drac_algo.engine.core`).
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
                    place(member.network, self.device)
                    # Channels-last on every device: oneDNN's CPU convolutions run NHWC
                    # natively (bf16 Unet++ at 1024 x 1024: 2.4 s per view NCHW, 1.9 s NHWC).
                    member.network.to(memory_format=torch.channels_last)
        self.bundle: Bundle | None = None  # the parsed manifest when built from_bundle
        self.load_timings: dict[str, Any] | None = None  # from_bundle's, per member
        self._state = EngineState(max_views_per_batch)
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
        """Build every member of the bundle in ``folder`` (see :mod:`drac_algo.bundle.store`) once,
        with the thresholds, clean-up and TTA validity stored there. ``classes`` limits the run
        to some class indices. ``backend`` runs the networks (:func:`drac_algo.engine.onnx_backend.
        choose_backend`): ``"onnxruntime"`` with ``precision="auto"`` means float32."""
        start = time.perf_counter()
        bundle = load_bundle(folder)
        checked = time.perf_counter() - start
        wanted = requested_classes(bundle, folder, classes)
        resolved = resolve_device(device)
        precision = backend_precision(backend, precision)
        specs = [m for i in wanted for m in bundle.classes[i].members]
        choice = choose_backend(
            backend,
            resolved,
            resolve_precision(precision, resolved),
            without_onnx=[m.file for m in specs if m.onnx is None],
            untied_onnx=[m.file for m in specs if m.onnx is not None and not m.onnx.tied],
        )
        threads = cpu_threads()  # the Predictor sets torch's to the same count

        def build(spec: MemberSpec) -> tuple[Network, float]:
            start = time.perf_counter()
            if choice.name == "onnxruntime":
                built: Network = OnnxNetwork(Path(folder) / spec.onnx.file, threads)
            else:
                built = build_member(folder, spec, map_location="cpu")
            return built, round(time.perf_counter() - start, 4)

        start = time.perf_counter()
        if choice.name == "onnxruntime" and threads > 1 and len(specs) > 1:
            # ONNX Runtime builds a session (graph optimisation, the CPU layout transform) with
            # Python's lock released: the members build several at once (15 default members
            # on 2 CPUs: 2.9 s one at a time, 1.7 s two at a time).
            with ThreadPoolExecutor(min(threads, len(specs)), "drac-session") as pool:
                results = list(pool.map(build, specs))
        else:
            results = [build(spec) for spec in specs]
        members_s = round(time.perf_counter() - start, 4)
        networks = {id(spec): net for spec, (net, _) in zip(specs, results, strict=True)}
        members = [
            {"file": spec.file, "seconds": sec}
            for spec, (_, sec) in zip(specs, results, strict=True)
        ]

        def network(spec: MemberSpec) -> Network:
            return networks[id(spec)]

        ensembles = bundle_ensembles(bundle, folder, network, wanted)
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
        # Where the load's time went (results.json's diagnostics): the manifest and checksums,
        # then building every member's network (members_s, wall time; built on the CPU, the
        # move to the device is not in it) and each member's own build time.
        predictor.load_timings = {
            "bundle_check_s": round(checked, 4),
            "members_s": members_s,
            "members": members,
        }
        return predictor

    @property
    def classes(self) -> tuple[int, ...]:
        """The class indices this predictor produces, ascending."""
        return tuple(self.ensembles)

    def predict(self, image: np.ndarray) -> CasePrediction:
        """Probability maps and masks of every class for one (H, W) uint8 image."""
        image = check_image(image)
        start = time.perf_counter()
        first_event = len(self._state.events)
        inputs: dict[tuple, tuple[np.ndarray, Geometry]] = {}
        probabilities, masks = {}, {}
        for index, ensemble in self.ensembles.items():
            probability = class_probability(
                ensemble.members,
                self.transforms[index],
                image,
                self.device,
                self.precision,
                self._state,
                inputs,
            )
            probabilities[index] = probability
            masks[index] = class_mask(
                probability,
                ensemble.threshold,
                ensemble.min_component_px,
                ensemble.fill_holes,
                ensemble.keep_components,
            )
        seconds = time.perf_counter() - start
        self._seconds.append(seconds)
        return CasePrediction(probabilities, masks, seconds, self._state.events[first_event:])

    def predict_many(
        self, items: Iterable[Any], load: Callable[[Any], Any] | None = None
    ) -> Iterator[tuple[Any, Any, CasePrediction]]:
        """Yield ``(item, loaded, prediction)`` in the order of ``items``, decoding the next item
        in a background thread while the current one runs through the networks.

        ``load(item)`` returns either an (H, W) uint8 array or an object with a ``.pixels`` array
        (default: :func:`drac_algo.data.images.load_image`, so items are file paths). An error while
        loading an item is raised when that item's turn comes, after the earlier ones were
        yielded.
        """
        load = load_image if load is None else load
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
                    "keep_components": ensemble.keep_components,
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
