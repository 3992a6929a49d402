"""Figures derived from the timings (GFLOP/s, fraction of peak, speed-ups, the DRAC test set
with the default ensemble) and the issue's targets judged on them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drac_algo.tools.bench.probes import count_flops
from drac_algo.training.config import load_config

DRAC_TEST_IMAGES = 65
GIB = 1024**3
# Ratios and limits the issue sets for CPU, 1024 x 1024, D4, default ensemble.
TARGETS = {
    "engine_vs_naive": 2.5,
    "engine_vs_ttach": 2.0,
    "agreement_percent": 99.9,
    "cpu_peak_gib": 4.0,
}


def default_ensemble(ensemble: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ensemble ``python -m train`` makes by default (per class: the recipe's folds x seeds
    members of the recipe's architecture), at the benchmarked network sides and views: its
    members per class and FLOPs per image, to scale this run's times to it (members run one
    after the other, so time grows with FLOPs)."""
    members: dict[str, int] = {}
    flops = 0
    for key in dict.fromkeys(m["key"] for m in ensemble):
        first = next(m for m in ensemble if m["key"] == key)
        recipe = load_config(key)
        members[key] = recipe.n_members
        per_view = count_flops(recipe.model, first["network_side"])
        flops += recipe.n_members * per_view * len(first["views"])
    return {"members": members, "gflop_per_image": flops / 1e9}


def derive_method_figures(report: dict[str, Any], flops_per_image: int) -> None:
    naive = report["methods"].get("naive", {})
    scale = report["default_ensemble"]["gflop_per_image"] / report["gflop_per_image"]
    for result in report["methods"].values():
        if "images_per_second" not in result:
            continue
        ips = result["images_per_second"]
        result["achieved_gflops"] = flops_per_image * ips / 1e9
        peak = report["peak_gflops"].get(result["autocast"], {}).get("peak")
        result["fraction_of_peak"] = result["achieved_gflops"] / peak if peak else None
        if "images_per_second" in naive:
            result["speedup_vs_naive"] = ips / naive["images_per_second"]
        result["drac_test_set_seconds"] = DRAC_TEST_IMAGES / ips
        result["drac_test_set_default_ensemble_seconds"] = DRAC_TEST_IMAGES / ips * scale


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on this run, and whether this run is the setting they are
    stated for (CPU, 1024 x 1024 images, D4, the default ensemble; agreement on a trained
    bundle)."""
    cfg = report["config"]
    methods = report["methods"]
    ensemble = report["ensemble"]
    applicable = (
        report["machine"]["device"] == "cpu"
        and cfg["tta"] == "d4"
        and {m["key"] for m in ensemble} == {"irma", "na", "nv"}
        and all(m["recipe_model"] and m["network_side"] == 1024 for m in ensemble)
    )
    engine = methods.get("engine", {})
    out: dict[str, Any] = {"applicable": applicable}

    def ratio(a: str, b: str) -> float | None:
        ra, rb = methods.get(a, {}), methods.get(b, {})
        if "images_per_second" in ra and "images_per_second" in rb:
            return ra["images_per_second"] / rb["images_per_second"]
        return None

    for name, other in (("engine_vs_naive", "naive"), ("engine_vs_ttach", "ttach")):
        value = ratio("engine", other)
        out[name] = {
            "value": value,
            "target": TARGETS[name],
            "met": None if value is None else value >= TARGETS[name],
        }
    agree = report["agreement"].get("engine", {}).get("pixel_agreement_percent")
    out["agreement_percent"] = {
        "value": agree,
        "target": TARGETS["agreement_percent"],
        "met": None if agree is None else agree >= TARGETS["agreement_percent"],
        "conclusive": cfg["bundle"] is not None,
    }
    peak = engine.get("memory", {}).get("rss_peak_bytes")
    counts = {key: sum(m["key"] == key for m in ensemble) for key in {m["key"] for m in ensemble}}
    out["cpu_peak_gib"] = {
        "value": None if peak is None else peak / GIB,
        "target": TARGETS["cpu_peak_gib"],
        "met": None if peak is None else peak / GIB < TARGETS["cpu_peak_gib"],
        # Every member's weights stay loaded: memory depends on the ensemble's size.
        "default_ensemble": counts == report["default_ensemble"]["members"],
    }
    return out
