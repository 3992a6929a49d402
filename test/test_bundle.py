"""Model bundle: save, load, rebuild members, and the errors a broken bundle gives."""

import dataclasses
import json

import pytest
import torch

from drac_algo.bundle.manifest import (
    MANIFEST,
    TTA_NAMES,
    Bundle,
    ClassEntry,
    MemberSpec,
)
from drac_algo.bundle.store import build_member, load_bundle, save_bundle
from drac_algo.bundle.validation import bundle_from_dict
from drac_algo.common.errors import DracInputError
from drac_algo.engine.tta import TTA_SETS, get_transform
from drac_algo.networks.models import build_network
from drac_algo.networks.spec import ModelSpec, Normalization

# A tiny timm encoder at depth 3 keeps these models at about 0.2 million parameters.
CAM_SPEC = ModelSpec("unetplusplus", "tu-lcnet_035", "cam", 3, (32, 16, 16))
UNET_SPEC = ModelSpec("unet", "tu-lcnet_035", None, 3, (32, 16, 16))


def make_bundle():
    """Two classes: IRMA with two Unet++/CAM members, NV with one Unet; plus their weights."""
    torch.manual_seed(0)
    nets = {
        "irma_f0.pt": build_network(CAM_SPEC).eval(),
        "irma_f1.pt": build_network(CAM_SPEC).eval(),
        "nv_f0.pt": build_network(UNET_SPEC).eval(),
    }

    def member(file, spec, fold):
        return MemberSpec(
            file=file,
            model=spec,
            input_size=64,
            normalization=Normalization(0.4, 0.2),
            tta=("identity", "hflip", "rot90"),
            fold=fold,
            seed=fold + 10,
            val_dice=0.5 + fold / 10,
        )

    bundle = Bundle(
        classes={
            1: ClassEntry(
                1,
                "irma",
                0.45,
                20,
                True,
                [member("irma_f0.pt", CAM_SPEC, 0), member("irma_f1.pt", CAM_SPEC, 1)],
            ),
            3: ClassEntry(3, "nv", 0.5, 0, False, [member("nv_f0.pt", UNET_SPEC, 0)]),
        }
    )
    return bundle, nets


@pytest.fixture
def saved(tmp_path):
    bundle, nets = make_bundle()
    folder = tmp_path / "model"
    written = save_bundle(bundle, folder, {f: n.state_dict() for f, n in nets.items()})
    return folder, written, nets


def test_round_trip_rebuilds_identical_models(saved):
    folder, written, nets = saved
    assert sorted(p.name for p in folder.iterdir()) == [
        "irma_f0.pt",
        "irma_f1.pt",
        MANIFEST,
        "nv_f0.pt",
    ]
    loaded = load_bundle(folder)
    assert loaded == written
    assert sorted(loaded.classes) == [1, 3]
    irma = loaded.classes[1]
    assert (irma.key, irma.threshold, irma.min_component_px, irma.fill_holes) == (
        "irma",
        0.45,
        20,
        True,
    )
    first = irma.members[0]
    assert first.model == CAM_SPEC and first.normalization == Normalization(0.4, 0.2)
    assert (first.input_size, first.tta, first.fold, first.seed) == (
        64,
        ("identity", "hflip", "rot90"),
        0,
        10,
    )
    assert len(first.sha256) == 64

    x = torch.randn(2, 1, 64, 64)
    for _, member in loaded.members():
        rebuilt = build_member(folder, member)
        assert not rebuilt.training
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), nets[member.file](x), rtol=0, atol=0)


def test_manifest_layout(saved):
    folder, _, _ = saved
    data = json.loads((folder / MANIFEST).read_text())
    assert (data["format"], data["version"], data["drac_algo_version"]) == (
        "drac-algo-bundle",
        3,
        "0.1.0",
    )
    assert data["created"].endswith("+00:00")
    assert list(data["classes"]) == ["1", "3"]
    assert list(data["classes"]["1"]) == [
        "key",
        "threshold",
        "min_component_px",
        "fill_holes",
        "keep_components",
        "members",
    ]
    assert data["classes"]["1"]["keep_components"] == 0  # every component: the default
    member = data["classes"]["1"]["members"][1]
    assert set(member) == {
        "file",
        "sha256",
        "model",
        "input_size",
        "normalization",
        "tta",
        "fold",
        "seed",
        "val_dice",
        "onnx",
    }
    assert member["onnx"] is None  # save_bundle writes weights only; onnx_export adds them
    assert member["model"] == CAM_SPEC.to_dict()
    assert member["normalization"] == {"mean": 0.4, "std": 0.2}
    assert member["val_dice"] == pytest.approx(0.6)


def test_missing_files_and_checksum_mismatch_are_listed_together(saved):
    folder, _, _ = saved
    (folder / "irma_f1.pt").unlink()
    with open(folder / "nv_f0.pt", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(DracInputError) as err:
        load_bundle(folder)
    message = str(err.value)
    assert "member file irma_f1.pt missing" in message
    assert "member file nv_f0.pt fails its sha256 check" in message
    assert "irma_f0.pt" not in message


def test_no_manifest_and_no_folder(tmp_path):
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(
        DracInputError, match=r"manifest.json missing \(the folder holds: stray.txt"
    ):
        load_bundle(tmp_path)
    with pytest.raises(DracInputError, match="no such folder"):
        load_bundle(tmp_path / "absent")


def test_bad_json(saved):
    folder, _, _ = saved
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(DracInputError, match="is not readable JSON"):
        load_bundle(folder)


def edit_manifest(folder, change):
    data = json.loads((folder / MANIFEST).read_text())
    change(data)
    (folder / MANIFEST).write_text(json.dumps(data))


def test_bad_manifest_lists_every_problem(saved):
    folder, _, _ = saved

    def break_it(data):
        data["version"] = 4
        data["classes"]["4"] = data["classes"].pop("3")
        irma = data["classes"]["1"]
        irma["threshold"] = 1.5
        irma["members"][0]["tta"] = ["identity", "mirror"]
        irma["members"][0]["model"]["arch"] = "segformer"
        del irma["members"][1]["seed"]

    edit_manifest(folder, break_it)
    with pytest.raises(DracInputError) as err:
        load_bundle(folder)
    message = str(err.value)
    for expected in [
        "version must be one of 1, 2, 3; got 4",
        "unknown class '4'; valid: 1 (irma), 2 (na), 3 (nv)",
        "class 1: threshold must be in (0, 1); got 1.5",
        "class 1 member 0: tta must be a non-empty list of identity, hflip",
        "class 1 member 0: model: unknown architecture 'segformer'",
        "class 1 member 1: missing seed",
    ]:
        assert expected in message


def test_a_one_class_bundle_is_valid(saved):
    folder, _, _ = saved
    edit_manifest(folder, lambda data: data["classes"].pop("1"))
    assert sorted(load_bundle(folder).classes) == [3]


def test_save_checks_state_dicts_against_specs(tmp_path):
    bundle, nets = make_bundle()
    states = {f: n.state_dict() for f, n in nets.items()}
    with pytest.raises(DracInputError, match="no state dict given for nv_f0.pt"):
        save_bundle(bundle, tmp_path / "a", {k: v for k, v in states.items() if k != "nv_f0.pt"})
    swapped = {**states, "nv_f0.pt": states["irma_f0.pt"]}
    with pytest.raises(DracInputError, match="state dict nv_f0.pt does not match its model spec"):
        save_bundle(bundle, tmp_path / "b", swapped)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_save_strips_compile_prefixes_and_refuses_foreign_folders(tmp_path):
    bundle, nets = make_bundle()
    states = {f: {f"_orig_mod.{k}": v for k, v in n.state_dict().items()} for f, n in nets.items()}
    folder = tmp_path / "model"
    save_bundle(bundle, folder, states)
    member = load_bundle(folder).classes[3].members[0]
    assert isinstance(build_member(folder, member), torch.nn.Module)
    # Saving again over a bundle replaces it (here with the keys of DDP around a compiled
    # model); over a folder of other files is refused.
    nested = {f: {f"module.{k}": v for k, v in s.items()} for f, s in states.items()}
    save_bundle(bundle, folder, nested)
    assert isinstance(build_member(folder, member), torch.nn.Module)
    other = tmp_path / "results"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(DracInputError, match="refusing to replace"):
        save_bundle(bundle, other, states)
    assert (other / "keep.txt").read_text() == "precious"


def test_tta_names_are_the_engines_d4_group():
    # The manifest's vocabulary must be the engine's: every name resolves to a transform whose
    # inverse undoes it, and the eight give eight different images of an asymmetric one.
    assert set(TTA_NAMES) == set(TTA_SETS["d4"]) and TTA_NAMES[0] == "identity"
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    views = []
    for name in TTA_NAMES:
        t = get_transform(name)
        views.append(t.forward(x))
        assert torch.equal(t.inverse(t.forward(x)), x), name
    assert len({tuple(v.flatten().tolist()) + tuple(v.shape) for v in views}) == 8


def test_save_refuses_a_manifest_load_would_refuse(tmp_path):
    bundle, nets = make_bundle()
    bad = dataclasses.replace(bundle.classes[3], threshold=1.5, key="nv")
    broken = Bundle(classes={**bundle.classes, 3: bad})
    with pytest.raises(DracInputError, match="class 3: threshold must be in"):
        save_bundle(broken, tmp_path / "m", {f: n.state_dict() for f, n in nets.items()})
    assert not (tmp_path / "m").exists()


def test_environment_is_optional_but_must_be_an_object(tmp_path):
    bundle, nets = make_bundle()
    folder = tmp_path / "b"
    saved = save_bundle(bundle, folder, {f: n.state_dict() for f, n in nets.items()})
    assert set(saved.environment) == {"export"} and saved.environment["export"]["torch"]
    data = json.loads((folder / MANIFEST).read_text())
    assert load_bundle(folder).environment == data["environment"]
    for value, ok in ((None, True), ("torch 2.10", False)):
        changed = {k: v for k, v in data.items() if k != "environment"}
        if value is not None:
            changed["environment"] = value
        if ok:  # a bundle from before the key loads, without one
            assert bundle_from_dict(changed).environment is None
        else:
            with pytest.raises(DracInputError, match="environment must be an object; got str"):
                bundle_from_dict(changed)
