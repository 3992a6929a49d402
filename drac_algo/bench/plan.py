"""The networks every method runs: the ensemble plan (a bundle's members, or the recipes'
architectures with seeded random weights), the networks built from it, and the images."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from drac_algo.bench.config import BenchConfig
from drac_algo.bundle import MemberSpec, build_member, load_bundle
from drac_algo.classes import LESION_CLASSES
from drac_algo.config import load_config
from drac_algo.data import list_images
from drac_algo.errors import DracInputError
from drac_algo.images import load_image
from drac_algo.models import build_network
from drac_algo.synth import generate_case
from drac_algo.tta import select_transforms


@dataclass(frozen=True)
class MemberPlan:
    """How every method rebuilds one network: from a bundle file or from a seed."""

    spec: Any  # drac_algo.models.ModelSpec (imported lazily: no work at import time)
    input_size: int
    mean: float
    std: float
    tta: tuple[str, ...] | None
    name: str
    bundle: str | None = None
    file: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class ClassPlan:
    index: int
    key: str
    threshold: float
    min_component_px: int
    fill_holes: bool
    members: tuple[MemberPlan, ...]


def plan_ensemble(cfg: BenchConfig) -> tuple[ClassPlan, ...]:
    """The networks to benchmark: every class and member of ``cfg.bundle``, or ``cfg.members``
    networks per lesion class with the architecture of its recipe (``drac_algo/recipes``),
    optionally overridden, with seeded random weights and threshold 0.5."""
    if cfg.bundle is not None:
        bundle = load_bundle(cfg.bundle)
        return tuple(
            ClassPlan(
                index=entry.index,
                key=entry.key,
                threshold=entry.threshold,
                min_component_px=entry.min_component_px,
                fill_holes=entry.fill_holes,
                members=tuple(
                    MemberPlan(
                        spec=m.model,
                        input_size=m.input_size,
                        mean=m.normalization.mean,
                        std=m.normalization.std,
                        tta=tuple(m.tta),
                        name=f"{entry.key} {m.file}",
                        bundle=str(cfg.bundle),
                        file=m.file,
                    )
                    for m in entry.members
                ),
            )
            for _, entry in sorted(bundle.classes.items())
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
            ClassPlan(
                index=lesion.index,
                key=lesion.key,
                threshold=0.5,
                min_component_px=recipe.postprocess.min_component_px,
                fill_holes=recipe.postprocess.fill_holes,
                members=tuple(
                    MemberPlan(
                        spec=spec,
                        input_size=cfg.size,
                        mean=recipe.normalization.mean,
                        std=recipe.normalization.std,
                        tta=None,
                        name=f"{lesion.key} random {i}",
                        seed=cfg.seed * 1000 + 100 * i + lesion.index,
                    )
                    for i in range(cfg.members)
                ),
            )
        )
    return tuple(plans)


def describe_spec(spec: Any) -> str:
    attention = f"+{spec.attention}" if spec.attention else ""
    return f"{spec.arch}{attention} {spec.encoder}"


def build_networks(plan: Sequence[ClassPlan], device: torch.device) -> dict[str, nn.Module]:
    """Every member's network in eval mode on ``device``, keyed ``"<class>/<member>"``. Random
    weights come from ``torch.manual_seed(member.seed)``, so every process builds the same."""
    networks = {}
    for entry in plan:
        for i, member in enumerate(entry.members):
            if member.file is not None:
                spec = MemberSpec(file=member.file, model=member.spec, input_size=member.input_size)
                net = build_member(member.bundle, spec)
            else:
                torch.manual_seed(member.seed)
                net = build_network(member.spec)
            networks[f"{entry.index}/{i}"] = net.to(device).eval()
    return networks


def fingerprint(network: nn.Module) -> float:
    """A number that differs between networks with different weights (a fairness check: every
    method's process must have built the same networks)."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in network.parameters()))


def load_images(cfg: BenchConfig) -> list[np.ndarray]:
    """The benchmark images, (H, W) uint8: the first ``n_images`` of ``cfg.images``, or seeded
    phantom angiograms of ``cfg.size`` (:mod:`drac_algo.synth`)."""
    if cfg.images is not None:
        paths = list_images(cfg.images)[: cfg.n_images]
        if not paths:
            raise DracInputError(f"--images {cfg.images}: no images found")
        return [load_image(p).pixels for p in paths]
    return [
        generate_case(np.random.default_rng(cfg.seed + i), cfg.size)[0] for i in range(cfg.n_images)
    ]


def member_views(cfg: BenchConfig, member: MemberPlan) -> tuple:
    """The member's TTA transforms: ``cfg.tta`` within the views its bundle entry allows."""
    return select_transforms(cfg.tta, member.tta, where=member.name)
