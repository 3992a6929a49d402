"""The three methods. Each maps an (H, W) uint8 image to ({class: (H, W) float32 probability},
{class: (H, W) uint8 mask}) with the class thresholds and clean-up: ``naive`` and ``ttach`` run
one view per forward around the engine's own pre- and post-processing; ``engine`` is the
:class:`drac_algo.engine.predictor.Predictor` (or a patched copy, ``--engine-module``)."""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from drac_algo.common.errors import DracInputError
from drac_algo.data.preprocess import from_network_output, to_network_input
from drac_algo.engine.devices import resolve_views_per_batch
from drac_algo.engine.onnx_backend import OnnxNetwork, backend_precision, choose_backend
from drac_algo.engine.postprocess import class_mask
from drac_algo.engine.precision import precision_name, resolve_precision
from drac_algo.tools.bench.config import BenchConfig, split_engine_token
from drac_algo.tools.bench.plan import Plan, member_views
from drac_algo.training.onnx_export import export_network

# (H, W) uint8 image -> ({class: (H, W) float32 probability}, {class: (H, W) uint8 mask}).
Runner = Callable[[np.ndarray], tuple[dict[int, np.ndarray], dict[int, np.ndarray]]]


def class_masks(plan: Plan, probabilities: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Each class's (H, W) uint8 mask in {0, 1}: its (H, W) float32 probability at the class
    threshold, then the class's clean-up, as the engine makes them."""
    return {
        c.index: class_mask(
            probabilities[c.index], c.threshold, c.min_component_px, c.fill_holes, c.keep_components
        )
        for c in plan
    }


def _per_view_runner(
    cfg: BenchConfig,
    plan: Plan,
    networks: dict[str, nn.Module],
    device: torch.device,
    member_map: Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor],
) -> Runner:
    """Shared by naive and ttach: the engine's own pre- and post-processing (resize, normalise,
    reflect-pad; crop, resize back) around ``member_map(network, views, x)``, which maps the
    (1, 1, S, S) input to the (S, S) mean probability over the views."""
    views = {f"{c.index}/{i}": member_views(cfg, m) for c in plan for i, m in enumerate(c.members)}

    def run(image: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        probabilities = {}
        for entry in plan:
            total = np.zeros(image.shape, dtype=np.float32)
            for i, member in enumerate(entry.members):
                key = f"{entry.index}/{i}"
                padded, geometry = to_network_input(
                    image, member.input_size, member.mean, member.std
                )
                x = torch.from_numpy(padded)[None, None].to(device)
                with torch.inference_mode():
                    mean = member_map(networks[key], views[key], x)
                total += from_network_output(mean.float().cpu().numpy(), geometry)
            probabilities[entry.index] = total / np.float32(len(entry.members))
        return probabilities, class_masks(plan, probabilities)

    return run


def naive_runner(
    cfg: BenchConfig,
    plan: Plan,
    networks: dict[str, nn.Module],
    device: torch.device,
    precision: str | None = None,
) -> Runner:
    """One view per forward, float32, contiguous input, probabilities averaged over views."""

    def member_map(network: nn.Module, views: tuple, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x[0, 0])
        for view in views:
            logits = network(view.forward(x).contiguous())
            total += torch.sigmoid(view.inverse(logits))[0, 0]
        return total / len(views)

    return _per_view_runner(cfg, plan, networks, device, member_map)


def ttach_transforms(names: Sequence[str]) -> Any:
    """The ``ttach.Compose`` giving exactly the views ``names`` (any order), or ``None`` when
    ttach cannot express that set (ttach builds views as products of flips and rotations)."""
    import ttach  # optional, outside the requirements: only the ttach row needs it

    wanted = set(names)
    if wanted == {"identity"}:
        return ttach.Compose([])
    if wanted == {"identity", "hflip", "vflip", "rot180"}:
        return ttach.aliases.flip_transform()
    if len(wanted) == 8:
        return ttach.aliases.d4_transform()
    return None


def ttach_runner(
    cfg: BenchConfig,
    plan: Plan,
    networks: dict[str, nn.Module],
    device: torch.device,
    precision: str | None = None,
) -> Runner:
    """``ttach.SegmentationTTAWrapper(network + sigmoid, D4, merge_mode="mean")``: ttach runs
    one view per forward and averages what the model returns, here probabilities."""
    import ttach  # optional, outside the requirements: the row is skipped without it

    wrapped = {}
    for entry in plan:
        for i, member in enumerate(entry.members):
            key = f"{entry.index}/{i}"
            names = [t.name for t in member_views(cfg, member)]
            transforms = ttach_transforms(names)
            if transforms is None:
                raise DracInputError(
                    f"{member.name}: ttach cannot build the views {names} (it composes flips and "
                    "rotations); run the bench with --tta d4, flips or none"
                )
            wrapped[key] = ttach.SegmentationTTAWrapper(
                nn.Sequential(networks[key], nn.Sigmoid()), transforms, merge_mode="mean"
            )

    def member_map(network: nn.Module, views: tuple, x: torch.Tensor) -> torch.Tensor:
        return network(x)[0, 0]

    return _per_view_runner(cfg, plan, wrapped, device, member_map)


def load_engine(module: str) -> ModuleType:
    """The inference module to benchmark: a dotted name or a ``.py`` file (a patched copy of
    :mod:`drac_algo.engine.predictor` to A/B against the original)."""
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise DracInputError(f"--engine-module {module}: no such file")
        spec = importlib.util.spec_from_file_location("drac_bench_engine", path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DracInputError(f"--engine-module {module}: {exc}") from exc


def engine_runner(
    cfg: BenchConfig,
    plan: Plan,
    networks: dict[str, nn.Module],
    device: torch.device,
    precision: str | None = None,
) -> Runner:
    """:class:`drac_algo.engine.predictor.Predictor` over the same networks and class settings, run
    by
    the backend that ``precision`` (``PRECISION[:BACKEND]``) resolves to: ONNX Runtime runs
    each network's ONNX export, made here (not timed)."""
    engine = load_engine(cfg.engine_module)
    precision, choice = engine_backend(precision or "auto", device)
    if choice.name == "onnxruntime":
        networks = onnx_networks(plan, networks)
    classes = [
        entry.with_networks(lambda i, _, entry=entry: networks[f"{entry.index}/{i}"])
        for entry in plan
    ]
    predictor = engine.Predictor(
        classes,
        device=device,
        precision=precision,
        tta=cfg.tta,
        max_views_per_batch=cfg.views_per_batch,
        backend=choice,
    )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # the Predictor sets the machine's; --threads wins

    def run(image: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        prediction = predictor.predict(image)
        return prediction.probabilities, prediction.masks

    return run


def engine_backend(token: str, device: torch.device) -> tuple[str, Any]:
    """The engine's precision and :class:`drac_algo.engine.onnx_backend.BackendChoice` for a row's
    ``PRECISION[:BACKEND]`` token, as :meth:`drac_algo.engine.predictor.Predictor.from_bundle`
    decides
    (the bench exports every network, so none lacks an ONNX file)."""
    precision, backend = split_engine_token(token)
    precision = backend_precision(backend, precision)
    return precision, choose_backend(backend, device, resolve_precision(precision, device))


def onnx_networks(plan: Plan, networks: dict[str, nn.Module]) -> dict[str, Any]:
    """Each network exported to ONNX (traced at its member's input size) and loaded into an
    ONNX Runtime session with torch's thread count; the files are gone once loaded."""
    sides = {f"{e.index}/{i}": m.input_size for e in plan for i, m in enumerate(e.members)}
    loaded = {}
    with tempfile.TemporaryDirectory(prefix="drac-bench-onnx-") as tmp:
        for key, network in networks.items():
            path = Path(tmp) / f"{key.replace('/', '-')}.onnx"
            export_network(network.float().eval(), path, sides[key])
            loaded[key] = OnnxNetwork(path, threads=torch.get_num_threads())
    return loaded


RUNNERS: dict[str, Callable[..., Runner]] = {
    "naive": naive_runner,
    "ttach": ttach_runner,
    "engine": engine_runner,
}


def autocast_name(precision: str, device: torch.device) -> str:
    """What the engine's ``precision`` autocasts to on ``device``: ``"fp32"`` (none), ``"bf16"``
    or ``"fp16"``."""
    return precision_name(resolve_precision(precision, device))


def method_settings(
    cfg: BenchConfig, method: str, precision: str | None, device: torch.device
) -> dict[str, Any]:
    """What a method is configured to run with (the table's ran-with columns come from the
    :class:`LayoutProbe`)."""
    if method == "engine":
        precision, choice = engine_backend(precision or "auto", device)
        return {
            "precision": precision,
            "autocast": autocast_name(precision, device),
            "backend": choice.name,
            "views_per_batch": resolve_views_per_batch(cfg.views_per_batch, device),
        }
    return {"precision": "fp32", "autocast": "fp32", "backend": "torch", "views_per_batch": 1}
