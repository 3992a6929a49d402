"""The networks every method runs: the ensemble plan (a bundle's members, or the recipes'
architectures with seeded random weights) in the engine's own ensemble types, the networks built
from it, and the images."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from drac_algo.bundle.manifest import MemberSpec
from drac_algo.bundle.store import build_member, load_bundle
from drac_algo.common.classes import LESION_CLASSES
from drac_algo.common.errors import DracInputError
from drac_algo.data.images import load_image
from drac_algo.data.release import list_images
from drac_algo.engine.ensemble import ClassEnsemble, Member, bundle_ensembles
from drac_algo.engine.tta import select_transforms
from drac_algo.networks.models import build_network
from drac_algo.networks.spec import ModelSpec
from drac_algo.tools.bench.config import BenchConfig
from drac_algo.tools.synth import generate_case
from drac_algo.training.config import load_config


@dataclass(frozen=True)
class NetworkSource:
    """How every process rebuilds the same network (picklable): a bundle member's weights file,
    or the architecture ``model`` with random weights from ``torch.manual_seed(seed)``."""

    model: ModelSpec
    seed: int = 0
    bundle: str | None = None
    member: MemberSpec | None = None

    def build(self) -> nn.Module:
        if self.member is not None:
            return build_member(self.bundle, self.member)
        torch.manual_seed(self.seed)
        return build_network(self.model)


# The benchmark's ensemble: the engine's own types, each network described by its source.
Plan = tuple[ClassEnsemble[NetworkSource], ...]


def plan_ensemble(cfg: BenchConfig) -> Plan:
    """The networks to benchmark: every class and member of ``cfg.bundle`` (mapped by
    :func:`drac_algo.engine.ensemble.bundle_ensembles`, as ``process.py`` maps it), or
    ``cfg.members``
    networks per lesion class with the architecture of its recipe (``drac_algo/training/recipes``),
    optionally overridden, with seeded random weights and threshold 0.5."""
    if cfg.bundle is not None:
        folder = str(cfg.bundle)
        return bundle_ensembles(
            load_bundle(folder),
            folder,
            lambda spec: NetworkSource(spec.model, bundle=folder, member=spec),
        )
    plans = []
    for lesion in LESION_CLASSES:
        recipe = load_config(lesion.key)
        changes: dict[str, Any] = {}
        if cfg.arch is not None:
            changes["arch"] = cfg.arch
            if cfg.arch not in ("unet", "unetplusplus"):
                changes["attention"] = None  # decoder attention needs a Unet-style decoder
        if cfg.encoder is not None:
            changes["encoder"] = cfg.encoder
        if cfg.decoder_channels is not None:
            changes["decoder_channels"] = cfg.decoder_channels
        spec = dataclasses.replace(recipe.model, **changes) if changes else recipe.model
        plans.append(
            ClassEnsemble(
                index=lesion.index,
                key=lesion.key,
                threshold=0.5,
                min_component_px=recipe.postprocess.min_component_px,
                fill_holes=recipe.postprocess.fill_holes,
                members=tuple(
                    Member(
                        network=NetworkSource(spec, seed=cfg.seed * 1000 + 100 * i + lesion.index),
                        input_size=cfg.size,
                        mean=recipe.normalization.mean,
                        std=recipe.normalization.std,
                        tta=None,
                        name=f"{lesion.key} random {i}",
                    )
                    for i in range(cfg.members)
                ),
            )
        )
    return tuple(plans)


def describe_spec(spec: Any) -> str:
    attention = f"+{spec.attention}" if spec.attention else ""
    return f"{spec.arch}{attention} {spec.encoder}"


def build_networks(plan: Plan, device: torch.device) -> dict[str, nn.Module]:
    """Every member's network in eval mode on ``device``, keyed ``"<class>/<member>"``; every
    process builds the same (:class:`NetworkSource`)."""
    return {
        f"{entry.index}/{i}": member.network.build().to(device).eval()
        for entry in plan
        for i, member in enumerate(entry.members)
    }


def fingerprint(network: nn.Module) -> float:
    """A number that differs between networks with different weights (a fairness check: every
    method's process must have built the same networks)."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in network.parameters()))


def load_images(cfg: BenchConfig) -> list[np.ndarray]:
    """The benchmark images, (H, W) uint8: the first ``n_images`` of ``cfg.images``, or seeded
    phantom angiograms of ``cfg.size`` (:mod:`drac_algo.tools.synth`)."""
    if cfg.images is not None:
        paths = list_images(cfg.images)[: cfg.n_images]
        if not paths:
            raise DracInputError(f"--images {cfg.images}: no images found")
        return [load_image(p).pixels for p in paths]
    return [
        generate_case(np.random.default_rng(cfg.seed + i), cfg.size)[0] for i in range(cfg.n_images)
    ]


def member_views(cfg: BenchConfig, member: Member) -> tuple:
    """The member's TTA transforms: ``cfg.tta`` within the views its bundle entry allows."""
    return select_transforms(cfg.tta, member.tta, where=member.name)
