"""Smoke test of ``python -m drac_algo.bench --quick``: it runs end to end on the CPU and writes
the JSON report with every section filled in. No timing assertions (shared CI machines)."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY

from drac_algo.bundle.manifest import Bundle, ClassEntry, MemberSpec
from drac_algo.common.errors import DracInputError
from drac_algo.engine.ensemble import ClassEnsemble, Member
from drac_algo.engine.predictor import Predictor
from drac_algo.engine.tta import TTA_SETS
from drac_algo.networks.spec import Normalization
from drac_algo.tools.bench.agreement import agreement
from drac_algo.tools.bench.cli import main
from drac_algo.tools.bench.config import METHODS, BenchConfig, split_engine_token
from drac_algo.tools.bench.plan import build_networks, plan_ensemble
from drac_algo.tools.bench.probes import count_flops
from drac_algo.tools.bench.runners import ttach_transforms
from drac_algo.tools.bench.targets import default_ensemble
from drac_algo.training.config import load_config

HAS_TTACH = importlib.util.find_spec("ttach") is not None


@pytest.mark.slow
def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "bench.json"
    # One thread: a smoke test on a shared machine, where OpenMP threads that wait on each other
    # slow everything down many times over.
    result = CliRunner().invoke(main, ["--quick", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(out.read_text())

    assert {"config", "machine", "ensemble", "gflop_per_image", "peak_gflops", "methods"} <= set(
        report
    )
    assert {"passes", "agreement", "training", "targets"} <= set(report)
    assert report["config"]["quick"] and report["config"]["size"] == 64
    assert [m["key"] for m in report["ensemble"]] == ["irma", "na", "nv"]
    assert all(len(m["views"]) == 8 for m in report["ensemble"])
    assert report["gflop_per_image"] > 0
    assert report["peak_gflops"]["fp32"]["peak"] > 0

    assert list(report["methods"]) == list(METHODS)
    timed = ["naive", "engine"] + (["ttach"] if HAS_TTACH else [])
    for method in timed:
        row = report["methods"][method]
        assert row["images_per_second"] > 0, method
        assert row["achieved_gflops"] > 0 and row["fraction_of_peak"] > 0, method
        assert row["memory"]["rss_peak_bytes"] > 0, method
        # "ORT": the engine row ran in ONNX Runtime (auto on a CPU without native bf16).
        assert row["ran_dtype"] in ("fp32", "bf16", "fp16") and row["ran_layout"] in (
            "NCHW",
            "NHWC",
            "ORT",
        )
        assert len(row["run_seconds"]) == 1
    assert report["methods"]["naive"]["ran_dtype"] == "fp32"
    assert report["methods"]["naive"]["speedup_vs_naive"] == pytest.approx(1.0)
    if not HAS_TTACH:
        assert "not installed" in report["methods"]["ttach"]["skipped"]

    # Agreement is reported for every method but naive, against naive.
    assert set(report["agreement"]) == set(timed) - {"naive"}
    engine = report["agreement"]["engine"]
    # Same networks, same views: only the precision may move pixels at a threshold (99.89 % in
    # bf16 on a CPU with AVX512-BF16; random weights put many pixels there). A wrong view,
    # inverse or member would agree far less.
    assert engine["pixel_agreement_percent"] >= 99.0
    assert set(engine["dice"]) == {"1", "2", "3"}

    assert len(report["training"]) == 4
    assert {(t["precision"], t["channels_last"]) for t in report["training"]} == {
        ("fp32", False),
        ("fp32", True),
        ("bf16", False),
        ("bf16", True),
    }
    assert all(t["images_per_second"] > 0 for t in report["training"])
    assert {"engine_vs_naive", "engine_vs_ttach", "agreement_percent", "cpu_peak_gib"} <= set(
        report["targets"]
    )
    assert report["targets"]["applicable"] is False  # 64 x 64 with resnet18 is not the setting
    assert report["targets"]["cpu_peak_gib"]["default_ensemble"] is False  # 1 member, not 5
    assert report["default_ensemble"]["members"] == {"irma": 5, "na": 5, "nv": 5}
    naive = report["methods"]["naive"]
    scale = report["default_ensemble"]["gflop_per_image"] / report["gflop_per_image"]
    assert naive["drac_test_set_default_ensemble_seconds"] == pytest.approx(
        naive["drac_test_set_seconds"] * scale
    )
    assert "engine" in result.output and "training step" in result.output


@pytest.mark.slow
def test_backend_rows_and_the_cpu_features(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    args = ["--quick", "--threads", "1", "--no-train", "--methods", "naive,engine"]
    args += ["--precision", "fp32:onnxruntime,fp32:torch", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(out.read_text())
    assert list(report["methods"]) == ["naive", "engine", "engine-fp32:torch"]
    ort, torch_row = report["methods"]["engine"], report["methods"]["engine-fp32:torch"]
    assert (ort["backend"], ort["ran_dtype"], ort["ran_layout"]) == ("onnxruntime", "fp32", "ORT")
    assert (torch_row["backend"], torch_row["ran_dtype"]) == ("torch", "fp32")
    assert report["methods"]["naive"]["backend"] == "torch"
    # float32 both ways: the same probabilities up to summation order.
    assert report["agreement"]["engine"]["max_abs_probability_difference"] < 1e-4
    assert isinstance(report["machine"]["cpu_features"], list)
    assert "CPU instruction sets: " in result.output


def test_engine_rows_may_name_a_backend():
    assert split_engine_token("bf16") == ("bf16", "auto")
    assert split_engine_token("fp32:onnxruntime") == ("fp32", "onnxruntime")
    cfg = BenchConfig(precision="auto,fp32:onnxruntime")
    assert [r[0] for r in cfg.rows()] == ["naive", "ttach", "engine", "engine-fp32:onnxruntime"]
    with pytest.raises(DracInputError, match=r"unknown precision\(s\) fp32:tensorrt"):
        BenchConfig(precision="fp32:tensorrt")


@pytest.mark.slow
def test_help_answers_without_importing_torch():
    """The command's module imports click and torch-free modules only: --help (and an option
    error) must not wait seconds for torch, smp and the engine."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from drac_algo.tools.bench.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "print(result.exit_code, '--precision' in result.output, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "True", "False"]


def test_bad_method_is_a_clear_error():
    result = CliRunner().invoke(main, ["--quick", "--methods", "naive,fast"])
    assert result.exit_code == 2
    assert "unknown method(s) fast" in result.output


def test_members_give_distinct_seeded_networks_per_class():
    plan = plan_ensemble(BenchConfig(size=64, members=3, encoder="resnet18"))
    assert [len(c.members) for c in plan] == [3, 3, 3]
    seeds = [m.network.seed for c in plan for m in c.members]
    assert len(set(seeds)) == len(seeds)
    with pytest.raises(DracInputError, match="--members"):
        BenchConfig(bundle="model", members=2)
    with pytest.raises(DracInputError, match="--members must be >= 1"):
        BenchConfig(members=0)


def test_default_ensemble_is_the_recipes_folds_times_seeds():
    ensemble = [
        {"key": "na", "network_side": 64, "views": ["identity", "hflip"]},
        {"key": "nv", "network_side": 64, "views": ["identity"]},
    ]
    out = default_ensemble(ensemble)
    assert out["members"] == {"na": 5, "nv": 5}
    expected = 5 * 2 * count_flops(load_config("na").model, 64) + 5 * count_flops(
        load_config("nv").model, 64
    )
    assert out["gflop_per_image"] == pytest.approx(expected / 1e9)


def test_agreement_pools_pixels_and_dice_over_images():
    member = (Member(None, 4),)
    plan = (ClassEnsemble(1, member, key="irma"), ClassEnsemble(3, member, key="nv"))
    blank = np.zeros((4, 4), np.float32)
    first = {1: blank.copy(), 3: blank.copy()}
    first[1][:2] = 0.9  # 8 foreground pixels
    changed = {1: first[1].copy(), 3: blank.copy()}
    changed[1][0, :2] = 0.2  # 2 of them lost
    second = {1: blank.copy(), 3: blank.copy()}  # identical on both sides
    result = agreement(plan, [first, second], [changed, second])
    assert result["images"] == 2
    assert result["pixel_agreement_percent"] == pytest.approx(100 * (64 - 2) / 64)
    assert result["dice"]["1"] == pytest.approx(2 * 6 / (8 + 6))
    assert result["dice"]["3"] == 1.0  # empty on both sides: they agree
    assert result["foreground_percent"]["1"] == pytest.approx(100 * 8 / 32)
    assert result["max_abs_probability_difference"] == pytest.approx(0.7)
    assert result["mean_abs_probability_difference"] == pytest.approx(2 * 0.7 / 64)


@pytest.mark.skipif(not HAS_TTACH, reason="ttach not installed")
def test_ttach_views_match_ours():
    """ttach's D4 and flip sets give exactly our views (same set of images of x)."""
    import torch

    from drac_algo.engine.tta import tta_set

    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    for name in ("d4", "flips", "none"):
        ours = {tuple(t.forward(x).flatten().tolist()) for t in tta_set(name)}
        theirs = {
            tuple(t.augment_image(x).flatten().tolist())
            for t in ttach_transforms(list(TTA_SETS[name]))
        }
        assert ours == theirs, name
    assert ttach_transforms(["identity", "rot90"]) is None


def test_a_bundle_reaches_the_benchmark_as_it_reaches_the_predictor(make_bundle):
    """One bundle -> ensemble mapping: the benchmark's plan holds the same classes, thresholds,
    clean-up, input contracts and TTA validity as the Predictor that process.py builds."""
    irma = MemberSpec("irma.pt", TINY, 32, Normalization(0.3, 0.2), tta=("identity",))
    na = MemberSpec("na.pt", TINY, 64, tta=("identity", "vflip"))
    bundle = Bundle(
        {
            1: ClassEntry(1, "irma", 0.35, 4, False, [irma]),
            2: ClassEntry(2, "na", 0.6, 9, True, [na]),
        }
    )
    model = make_bundle(bundle=bundle, heads={})

    plan = plan_ensemble(BenchConfig(bundle=model))
    predictor = Predictor.from_bundle(model, device="cpu", backend="torch")

    def described(ensemble):
        return ensemble.with_networks(lambda i, member: None)

    assert [described(e) for e in plan] == [described(e) for e in predictor.ensembles.values()]
    assert plan[1].threshold == 0.6 and plan[1].members[0].tta == ("identity", "vflip")
    rebuilt = build_networks(plan, torch.device("cpu"))
    for key, network in rebuilt.items():
        index, i = map(int, key.split("/"))
        loaded = predictor.ensembles[index].members[i].network.state_dict()
        assert all(torch.equal(t, loaded[k]) for k, t in network.state_dict().items())
