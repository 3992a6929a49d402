"""One bundle, one answer (issue 21): a bundle whose files do not compute what its manifest says is
refused by ``drac-bundle check``, the torch backend and the ONNX Runtime backend alike; every
manifest value has a checked range; a version 1 manifest's ONNX files, which cannot be tied to
the weights, are not used."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import CONTAINER_BUNDLE

from drac_algo.bundle import cli as bundle_cli
from drac_algo.bundle.manifest import MANIFEST, REEXPORT_COMMAND
from drac_algo.bundle.store import load_bundle
from drac_algo.bundle.validation import bundle_from_dict
from drac_algo.bundle.verify import AGREEMENT_ATOL
from drac_algo.common.errors import DracInputError
from drac_algo.engine.predictor import Predictor
from drac_algo.networks.models import build_network
from drac_algo.networks.spec import ModelSpec
from drac_algo.training import onnx_export
from process import main as process_main

pytest.importorskip("onnxruntime")  # a requirement; the skip keeps the reason readable

REPO = Path(__file__).resolve().parents[1]
IRMA, NA = "irma_fold0-seed0", "na_fold0-seed0"


def edit_manifest(folder, change):
    path = folder / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def irma_entry(data):
    return data["classes"]["1"]["members"][0]


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check(folder):
    return CliRunner().invoke(bundle_cli.main, ["check", str(folder)])


def replace_irma_weights(folder, content, spec_override=None):
    """Write ``content`` (bytes, or a state dict) as IRMA's weights and update its sha256 (and
    its model spec to ``spec_override``) in the manifest, leaving its ONNX file as it was:
    (old sha256, new sha256)."""
    path = folder / f"{IRMA}.pt"
    old = sha256(path)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    new = sha256(path)

    def update(data):
        irma_entry(data)["sha256"] = new
        if spec_override is not None:
            irma_entry(data)["model"] = spec_override

    edit_manifest(folder, update)
    return old, new


def swap_garbage(folder):
    return replace_irma_weights(folder, np.random.default_rng(0).bytes(4096))


def swap_other_class(folder):
    # NA's member has IRMA's architecture: its weights load, and compute another class.
    return replace_irma_weights(folder, torch.load(folder / f"{NA}.pt", weights_only=True))


def swap_encoder(folder):
    spec = json.loads((folder / MANIFEST).read_text())["classes"]["1"]["members"][0]["model"]
    spec = {**spec, "encoder": "tu-mobilenetv3_small_050"}
    torch.manual_seed(1)
    state = build_network(ModelSpec.from_dict(spec)).state_dict()
    return replace_irma_weights(folder, state, spec_override=spec)


def retrain(folder):
    state = torch.load(folder / f"{IRMA}.pt", weights_only=True)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    return replace_irma_weights(folder, state)


SWAPS = {
    "garbage bytes": swap_garbage,
    "another class's weights": swap_other_class,
    "another encoder in the manifest": swap_encoder,
    "retrained weights, ONNX file left stale": retrain,
}


def batch_input(folder):
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert cv2.imwrite(str(folder / "1.png"), image)
    return folder


def run_process(bundle, tmp_path, *options):
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    args = ["--input", batch_input(out.with_name(out.name + "-in")), "--output", out]
    args += ["--bundle", bundle, "--device", "cpu", "--tta", "none", *options]
    return CliRunner().invoke(process_main, [str(a) for a in args])


def refused(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "error: " in result.output and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


# --- weights replaced, their sha256 updated: the same refusal everywhere ----------------------


@pytest.mark.parametrize("swap", SWAPS.values(), ids=SWAPS.keys())
def test_replaced_weights_are_refused_by_the_check_and_every_backend(
    container_bundle, tmp_path, swap
):
    old, new = swap(container_bundle)
    fragments = (f"class 1 member {IRMA}.pt", f"{IRMA}.onnx", old, new, "--force")
    refused(check(container_bundle), *fragments)
    for options in (
        ["--backend", "torch"],
        ["--precision", "fp32"],  # auto: ONNX Runtime on the CPU
        ["--precision", "fp32", "--backend", "onnxruntime"],
    ):
        refused(run_process(container_bundle, tmp_path, *options), *fragments)
    for backend in ("torch", "onnxruntime", "auto"):
        with pytest.raises(DracInputError, match=f"{old}.*{new}"):
            Predictor.from_bundle(container_bundle, device="cpu", precision="fp32", backend=backend)


def test_the_stale_onnx_message_names_the_member_both_hashes_and_the_remedy(container_bundle):
    old, new = retrain(container_bundle)
    with pytest.raises(DracInputError) as err:
        load_bundle(container_bundle)
    assert f"model bundle {container_bundle} is incomplete or inconsistent:" in str(err.value)
    assert (
        f"class 1 member {IRMA}.pt: its ONNX file {IRMA}.onnx was exported from weights with "
        f"sha256 {old}, but the member's weights {IRMA}.pt have sha256 {new}: the ONNX file "
        f"would not run these weights; re-export it with: "
        f"{REEXPORT_COMMAND.replace('BUNDLE', str(container_bundle))}"
    ) in str(err.value)


def test_a_forged_source_sha256_is_caught_by_the_agreement_check(container_bundle):
    """Weights replaced and both hashes rewritten: only running the files can tell."""
    _, new = swap_other_class(container_bundle)
    edit_manifest(container_bundle, lambda d: irma_entry(d)["onnx"].update(source_sha256=new))
    load_bundle(container_bundle)  # the hashes agree with each other
    refused(
        check(container_bundle),
        f"class 1 member {IRMA}.pt: its ONNX file {IRMA}.onnx disagrees with the weights: "
        "probabilities differ by up to",
    )


def test_weights_that_do_not_fit_the_declared_network_fail_the_check(container_bundle):
    """The manifest's encoder changed, the weights not: torch cannot load them, so the check
    fails (the ONNX file, tied to the weights by its hash, would still run)."""
    edit_manifest(
        container_bundle,
        lambda d: irma_entry(d)["model"].update(encoder="tu-mobilenetv3_small_050"),
    )
    refused(check(container_bundle), f"class 1 member {IRMA}.pt:", "does not match its model spec")


def test_without_onnxruntime_the_check_warns_and_still_loads_the_weights(
    container_bundle, monkeypatch
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    result = check(container_bundle)
    assert result.exit_code == 0, result.output
    assert "warning: onnxruntime is not installed" in result.output
    assert "agreement with the weights was not checked" in result.output
    assert "ONNX Runtime agrees" not in result.output
    edit_manifest(container_bundle, lambda d: irma_entry(d).update(onnx=None))
    swap_garbage(container_bundle)  # no ONNX file to be tied to: only loading the weights shows it
    refused(check(container_bundle), "cannot read model bundle member")


def test_the_export_and_the_check_share_one_tolerance():
    assert onnx_export.VERIFY_ATOL == AGREEMENT_ATOL == 1e-4


# --- class keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["01", " 1", "1 ", "+1", "1.0", "\u0661", "\u00b2", "\uff11"])
def test_class_keys_must_be_canonical(container_bundle, key):
    def rename(data):
        data["classes"][key] = data["classes"].pop("1")

    edit_manifest(container_bundle, rename)
    refused(
        check(container_bundle),
        f"unknown class {key!r}; valid: 1 (irma), 2 (na), 3 (nv); class keys are written "
        "exactly '1', '2', '3'",
    )


def test_a_class_given_twice_is_refused(container_bundle):
    """ "1" and "01" used to load, the later one winning."""
    edit_manifest(container_bundle, lambda d: d["classes"].update({"01": d["classes"]["1"]}))
    refused(check(container_bundle), "unknown class '01'")


# --- every value in its range -----------------------------------------------------------------


def member_field(key, value):
    return lambda d: irma_entry(d).update({key: value})


def as_version_3(data, irma_keeps):
    data["version"] = 3
    for entry in data["classes"].values():
        entry["keep_components"] = 0
    data["classes"]["1"]["keep_components"] = irma_keeps


OUT_OF_RANGE = {
    "version true": (
        lambda d: d.update(version=True),
        "version must be one of 1, 2, 3; got True",
    ),
    "created a number": (lambda d: d.update(created=5), "created must be a string; got 5"),
    "min_component_px huge": (
        lambda d: d["classes"]["1"].update(min_component_px=2**40),
        "class 1: min_component_px must be an integer in [0, 16777216]; got 1099511627776",
    ),
    # Version 3 added keep_components: required from then on, unknown before.
    "keep_components negative": (
        lambda d: as_version_3(d, irma_keeps=-1),
        "class 1: keep_components must be an integer in [0, 1000] (0 keeps every component); "
        "got -1",
    ),
    "keep_components in a version 2 manifest": (
        lambda d: d["classes"]["1"].update(keep_components=2),
        "class 1: unknown key(s) 'keep_components'",
    ),
    "version 3 without keep_components": (
        lambda d: d.update(version=3),
        "class 1: missing keep_components",
    ),
    "input_size huge": (
        member_field("input_size", 8192),
        "class 1 member 0: input_size must be a multiple of 16 in [16, 4096]; got 8192",
    ),
    "fold negative": (
        member_field("fold", -1),
        "class 1 member 0: fold must be null or an integer in [0, 999]; got -1",
    ),
    "seed negative": (
        member_field("seed", -3),
        "class 1 member 0: seed must be an integer in [0, 2**63 - 1]; got -3",
    ),
    "val_dice above 1": (
        member_field("val_dice", 1.5),
        "class 1 member 0: val_dice must be null or a number in [0, 1]; got 1.5",
    ),
    "val_dice negative": (
        member_field("val_dice", -0.1),
        "class 1 member 0: val_dice must be null or a number in [0, 1]; got -0.1",
    ),
    "tta twice": (
        member_field("tta", ["identity", "identity"]),
        "class 1 member 0: tta must be a non-empty list of identity",
    ),
    "opset huge": (
        lambda d: irma_entry(d)["onnx"].update(opset=10**6),
        "class 1 member 0 onnx: opset must be an integer in [1, 64]; got 1000000",
    ),
}


@pytest.mark.parametrize("change, message", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_values_out_of_range_are_named(container_bundle, change, message):
    edit_manifest(container_bundle, change)
    refused(check(container_bundle), "is not a valid model bundle", message)


def test_ranges_hold_in_memory_too():
    data = json.loads((CONTAINER_BUNDLE / MANIFEST).read_text())
    data["classes"]["1"]["fill_holes"] = 1
    data["classes"]["1"]["threshold"] = math.nan
    irma_entry(data)["val_dice"] = math.inf
    with pytest.raises(DracInputError) as err:
        bundle_from_dict(data)
    for expected in (
        "class 1: fill_holes must be true or false; got 1",
        "class 1: threshold must be in (0, 1); got nan",
        "class 1 member 0: val_dice must be null or a number in [0, 1]; got inf",
    ):
        assert expected in str(err.value)


# --- a version 1 manifest: its ONNX files cannot be tied to the weights -----------------------


def as_version_1(folder):
    def downgrade(data):
        data["version"] = 1
        for entry in data["classes"].values():
            entry.pop("keep_components", None)
            for member in entry["members"]:
                member["onnx"].pop("source_sha256", None)

    edit_manifest(folder, downgrade)
    return folder


def test_a_version_1_bundle_loads_runs_on_torch_and_says_why(container_bundle, caplog):
    as_version_1(container_bundle)
    assert load_bundle(container_bundle).untied_onnx() == [
        f"{c}_fold0-seed0.pt" for c in ("irma", "na", "nv")
    ]
    assert "are not tied to their weights" in caplog.text and "--force" in caplog.text
    predictor = Predictor.from_bundle(container_bundle, device="cpu", precision="fp32")
    assert predictor.backend.name == "torch"
    assert "not tied to their weights" in predictor.backend.reason
    with pytest.raises(DracInputError, match="not tied to their weights.*--force"):
        Predictor.from_bundle(
            container_bundle, device="cpu", precision="fp32", backend="onnxruntime"
        )
    result = check(container_bundle)
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "not tied to their weights" in result.output
    assert "ONNX files: none" in result.output


def test_a_version_1_bundle_with_replaced_weights_is_refused_everywhere(container_bundle, tmp_path):
    as_version_1(container_bundle)
    swap_garbage(container_bundle)
    refused(check(container_bundle), "cannot read model bundle member")
    refused(
        run_process(container_bundle, tmp_path, "--precision", "fp32"),
        "cannot read model bundle member",
    )


# --- the writers record the tie, and their bundles pass the check -----------------------------


def check_agrees(folder):
    result = check(folder)
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime agrees with torch within" in result.output
    data = json.loads((folder / MANIFEST).read_text())
    assert data["version"] == 3
    for entry in data["classes"].values():
        for member in entry["members"]:
            assert (
                member["onnx"]["source_sha256"]
                == member["sha256"]
                == sha256(folder / member["file"])
            )


@pytest.mark.slow
def test_onnx_export_ties_old_and_stale_bundles_to_their_weights(container_bundle):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "drac_algo.onnx_export", *map(str, args)],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )  # fmt: skip

    as_version_1(container_bundle)
    done = run(container_bundle)  # untied files are exported again without --force
    assert done.returncode == 0, done.stderr
    check_agrees(container_bundle)
    retrain(container_bundle)
    done = run(container_bundle)
    assert done.returncode == 2 and "--force" in done.stderr
    done = run(container_bundle, "--force")
    assert done.returncode == 0, done.stderr
    check_agrees(container_bundle)


@pytest.mark.slow
def test_train_export_writes_a_bundle_that_passes_the_check(phantom_release, tmp_path):
    from drac_algo.data.release import find_layout, list_cases
    from drac_algo.training.config import load_config
    from drac_algo.training.dataset import load_samples
    from drac_algo.training.distributed import init_distributed
    from drac_algo.training.experiment import plan_members
    from drac_algo.training.loop import train_member

    data = phantom_release(8, 2, 64, seed=3)
    samples = load_samples(list_cases(find_layout(data), "train"), 1)
    cfg = load_config(
        "irma",
        None,
        "method",
        input_size=64,
        batch_size=4,
        num_workers=0,
        epochs=1,
        model__encoder="resnet18",
        model__decoder_channels=(16, 16, 16, 16, 16),
        val__folds=2,
        val__fold=0,
    )
    run_dir = tmp_path / "run"
    train_member(cfg, samples, plan_members(cfg, samples, run_dir)[0], init_distributed("cpu"))
    done = subprocess.run(
        [sys.executable, "-m", "train.export", str(run_dir)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    check_agrees(run_dir / "model")
