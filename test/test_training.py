"""Training stage: splits, validation scoring, the training precision, a tiny training run on
phantom data, resume equivalence, atomic checkpoints, the bundle export round trip, and DDP with
two gloo processes (the schedules: test_optim.py)."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drac_algo.bundle.store import build_member, load_bundle
from drac_algo.common.errors import DracInputError
from drac_algo.data.metrics import dice_iou
from drac_algo.data.release import find_layout, list_cases
from drac_algo.networks.models import build_model, load_initial_weights
from drac_algo.training.augment import train_transform
from drac_algo.training.bundle_export import export_bundle
from drac_algo.training.checkpoint import load_checkpoint, save_checkpoint
from drac_algo.training.config import load_config
from drac_algo.training.dataset import LesionDataset, load_samples
from drac_algo.training.deep_supervision import DeepSupervisionNet, output_weights, supervised_loss
from drac_algo.training.distributed import init_distributed
from drac_algo.training.experiment import plan_members
from drac_algo.training.loop import amp_dtype, train_member
from drac_algo.training.splits import kfold_split, stratified_kfold_split
from drac_algo.training.validation import best_threshold, challenge_dice, overlap_counts

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "input_size": 64,
    "batch_size": 4,
    "num_workers": 0,
    "model__encoder": "resnet18",
    "model__decoder_channels": (16, 16, 16, 16, 16),
    "val__folds": 2,
    "val__fold": 0,
}


@pytest.fixture(scope="module")
def training_release(phantom_release) -> Path:
    """The phantom release these tests train on: 12 training and 4 test images of 64 x 64."""
    return phantom_release(12, 4, 64, seed=3)


@pytest.fixture(scope="module")
def irma_samples(training_release):
    return load_samples(list_cases(find_layout(training_release), "train"), 1)


def tiny_config(task: str = "irma", recipe: str = "method", **overrides):
    return load_config(task, None, recipe, **{**TINY, **overrides})


# --- splits -----------------------------------------------------------------------------------


def test_kfold_is_deterministic_disjoint_and_complete():
    ids = [5, 1, 1299, 86, 300, 7, 42, 999, 1000, 12]
    folds = [kfold_split(ids, 3, f, seed=4) for f in range(3)]
    assert folds == [kfold_split(ids, 3, f, seed=4) for f in range(3)]
    vals = [set(v) for _, v in folds]
    assert set().union(*vals) == set(ids)
    assert sum(len(v) for v in vals) == len(ids)
    for train, val in folds:
        assert not set(train) & set(val)
    assert folds != [kfold_split(ids, 3, f, seed=5) for f in range(3)]


def test_stratified_split_puts_lesions_in_every_fold():
    ids = list(range(20))
    positive = {0, 1, 2}
    for fold in range(3):
        _, val = stratified_kfold_split(ids, positive, 3, fold, seed=0)
        assert set(val) & positive
    with pytest.raises(DracInputError, match="only 3 cases have this lesion"):
        stratified_kfold_split(ids, positive, 4, 0, seed=0)


# --- validation scoring -----------------------------------------------------------------------


def test_validation_counts_match_the_official_metric():
    rng = np.random.default_rng(0)
    thresholds = np.array([0.3, 0.5, 0.7])
    probs = [rng.random((16, 16)) for _ in range(4)]
    gts = [(rng.random((16, 16)) > 0.6).astype(np.uint8) for _ in range(3)]
    gts.append(np.zeros((16, 16), np.uint8))  # an image without the lesion: skipped
    counts = np.stack([overlap_counts(p, g, thresholds) for p, g in zip(probs, gts, strict=True)])
    assert counts.shape == (4, 3, 1, 3)  # images, thresholds, component counts (all), counts
    counts = counts[:, :, 0]
    dice = challenge_dice(counts)
    for t_index, t in enumerate(thresholds):
        per_image = [
            dice_iou(g, (p >= t).astype(np.uint8))[0] for p, g in zip(probs, gts, strict=True)
        ]
        assert dice[t_index] == pytest.approx(np.nanmean(per_image))
    threshold, tuned = best_threshold(counts, thresholds)
    assert tuned == pytest.approx(np.nanmax(dice))
    assert threshold in thresholds


def blobs_image(rng, size=32, count=6):
    """(prob, gt): ``count`` square blobs of random peak probability, half of them lesions, on a
    faint noisy background."""
    prob = rng.random((size, size)) * 0.3
    gt = np.zeros((size, size), np.uint8)
    for i in range(count):
        y, x = rng.integers(0, size - 4, 2)
        side = int(rng.integers(1, 4))
        prob[y : y + side, x : x + side] = rng.uniform(0.4, 1.0)
        if i % 2 == 0:
            gt[y : y + side, x : x + side] = 1
    return prob, gt


@pytest.mark.parametrize(("min_px", "holes"), [(0, False), (3, False), (0, True)])
def test_component_counts_match_the_masks_inference_writes(min_px, holes):
    """For every threshold and component count, the counts are those of class_mask's mask:
    the threshold tuning and the choice of k see exactly what process.py would write."""
    from drac_algo.engine.postprocess import class_mask

    rng = np.random.default_rng(1)
    thresholds = np.array([0.2, 0.35, 0.5, 0.75])
    keep = (0, 1, 2, 3, 50)
    for _ in range(5):
        prob, gt = blobs_image(rng)
        counts = overlap_counts(prob, gt, thresholds, min_px, holes, keep)
        assert counts.shape == (len(thresholds), len(keep), 3)
        for i, t in enumerate(thresholds):
            for j, k in enumerate(keep):
                mask = class_mask(prob, t, min_px, holes, k).astype(bool)
                expected = [(mask & (gt == 1)).sum(), mask.sum(), gt.sum()]
                assert counts[i, j].tolist() == expected, (t, k)


def test_best_keep_needs_validation_to_score_higher_to_cut_components():
    from drac_algo.training.validation import best_keep

    assert best_keep(np.array([0.4, 0.6, 0.6]), (0, 1, 2)) == (1, 0.6)  # the first best
    assert best_keep(np.array([0.6, 0.6, 0.5]), (0, 1, 2)) == (0, 0.6)  # all wins ties
    assert best_keep(np.array([0.6, 0.6 + 1e-13]), (0, 1))[0] == 0  # ties within rounding
    k, dice = best_keep(np.array([np.nan, np.nan]), (0, 1))
    assert k == 0 and math.isnan(dice)


def test_best_threshold_and_keep_chooses_both_together():
    from drac_algo.training.validation import best_threshold_and_keep

    t = np.array([0.3, 0.5, 0.7])
    # Rows: thresholds; columns: k = all, 1, 2. The best pair is (0.3, 1), which tuning the
    # threshold with every component kept (column 0: 0.7 wins) would never reach.
    dice = np.array([[0.40, 0.62, 0.58], [0.45, 0.55, 0.50], [0.50, 0.52, 0.51]])
    assert best_threshold_and_keep(dice, t, (0, 1, 2)) == (0.3, 1, 0.62)
    # Ties: keeping every component first, then the threshold nearest 0.5.
    t = np.array([0.2, 0.5, 0.7])
    tied = np.array([[0.6, 0.6, 0.5], [0.5, 0.6, 0.5], [0.6, 0.5, 0.5]])
    assert best_threshold_and_keep(tied, t, (0, 1, 2))[:2] == (0.7, 0)
    tied[2, 0] = 0.5
    assert best_threshold_and_keep(tied, t, (0, 1, 2))[:2] == (0.2, 0)
    tied[0, 0] = 0.5
    assert best_threshold_and_keep(tied, t, (0, 1, 2))[:2] == (0.5, 1)
    threshold, k, value = best_threshold_and_keep(np.full((3, 2), np.nan), t, (0, 1))
    assert (threshold, k) == (0.5, 0) and math.isnan(value)


def test_keep_most_confident_candidates_are_checked():
    assert tiny_config(postprocess__keep_most_confident=(1, 2)).postprocess.keep_most_confident
    for bad in [(0, 1), (2, 2), (-1,), (1.5,), (True,)]:
        with pytest.raises(DracInputError, match="keep_most_confident"):
            tiny_config(postprocess__keep_most_confident=bad)


def test_validation_tta_is_a_known_set_cut_to_the_members_views():
    from drac_algo.training.epoch import validation_views

    assert validation_views(tiny_config(val__tta="d4")) == ("identity", "hflip")
    assert validation_views(tiny_config(val__tta="flips")) == ("identity", "hflip")
    assert validation_views(tiny_config()) == ("identity",)
    no_flip = tiny_config(val__tta="d4", augment__hflip_p=0.0)
    assert validation_views(no_flip) == ("identity",)
    with pytest.raises(
        DracInputError, match=r"val.tta must be one of none, flips, d4; got 'hflip'"
    ):
        tiny_config(val__tta="hflip")


def test_median_keep_counts_all_as_the_most():
    from drac_algo.training.bundle_export import median_keep

    assert median_keep([2]) == 2
    assert median_keep([1, 0, 2]) == 2  # 1, 2, all
    assert median_keep([0, 0, 1]) == 0
    assert median_keep([1, 3]) == 3  # the higher middle one: cut no further than most chose
    assert median_keep([2, 0]) == 0


def test_best_threshold_prefers_the_one_nearest_half_on_ties():
    counts = np.zeros((1, 3, 3), np.int64)
    counts[0, :, :] = (5, 10, 10)  # the same Dice at every threshold
    assert best_threshold(counts, np.array([0.3, 0.5, 0.7]))[0] == 0.5


# --- precision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_amp_on_the_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr("drac_algo.engine.precision.native_bf16", lambda _device: native)
    cpu = torch.device("cpu")
    assert amp_dtype(tiny_config(), cpu) is expected
    assert amp_dtype(tiny_config(amp=False), cpu) is None
    assert amp_dtype(tiny_config(amp=True), cpu) is torch.bfloat16


# --- starting weights and epochs ------------------------------------------------------------


@pytest.mark.slow
def test_init_from_loads_a_checkpoint_or_a_bare_state_dict(tmp_path):
    cfg = tiny_config()
    source = build_model(cfg.model)
    for p in source.parameters():
        p.data.normal_()
    state = source.state_dict()
    checkpoint, bare, wrapped = tmp_path / "best.pt", tmp_path / "m.pt", tmp_path / "ddp.pt"
    torch.save({"model": state, "epoch": 3}, checkpoint)
    torch.save(state, bare)
    torch.save({f"module.{k}": v for k, v in state.items()}, wrapped)
    for path in (checkpoint, bare, wrapped):
        target = build_model(cfg.model)
        load_initial_weights(target, path)
        for key, value in target.state_dict().items():
            torch.testing.assert_close(value, state[key])
    other = build_model(tiny_config("nv").model)
    with pytest.raises(DracInputError, match="does not fit"):
        load_initial_weights(other, checkpoint)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DracInputError, match="cannot read"):
        load_initial_weights(target, tmp_path / "junk.pt")
    with pytest.raises(DracInputError, match="does not exist"):
        tiny_config(init_from=str(tmp_path / "absent.pt"))


def test_samples_per_epoch_repeats_each_image_with_its_own_augmentation(irma_samples):
    cfg = tiny_config()
    transform = train_transform(64, cfg.normalization, cfg.augment, crop_size=32)
    dataset = LesionDataset(irma_samples[:3], transform, seed=0, length=7)
    assert len(dataset) == 7
    first, again = dataset[0], dataset[3]  # both are sample 0
    assert first[0].shape == (1, 32, 32)
    assert not torch.equal(first[0], again[0])
    assert len(LesionDataset(irma_samples[:3], transform)) == 3


# --- a tiny training run ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"val__fold": None, "seeds": (0, 1)},
        {"val__fold": 1},
        {"val__fold": None, "val__holdout_fraction": 0.25},
    ],
)
def test_plan_members_makes_n_members(irma_samples, tmp_path, changes):
    cfg = tiny_config(val__folds=3, **changes)
    assert len(plan_members(cfg, irma_samples, tmp_path)) == cfg.n_members


def _plan(cfg, samples, run_dir):
    return plan_members(cfg, samples, run_dir)[0]


@pytest.mark.slow
def test_tiny_training_run_writes_every_member_file(irma_samples, tmp_path):
    cfg = tiny_config(epochs=2)
    plan = _plan(cfg, irma_samples, tmp_path)
    result = train_member(cfg, irma_samples, plan, init_distributed("cpu"))
    folder = tmp_path / "irma" / "fold0-seed0"
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "member.json", "config.json"):
        assert (folder / name).is_file(), name
    rows = (folder / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss,val_loss,val_dice")
    assert len(rows) == 3
    summary = json.loads((folder / "member.json").read_text())
    assert summary["best_epoch"] == result.best_epoch in (1, 2)
    assert 0.0 <= summary["val_dice"] <= 1.0
    assert summary["threshold"] in cfg.postprocess.threshold_grid or summary["threshold"] == 0.5
    assert set(summary["val_cases"]).isdisjoint(summary["train_cases"])
    assert not list(folder.glob("*.partial*"))


@pytest.mark.slow
def test_resume_gives_the_same_result_as_an_uninterrupted_run(irma_samples, tmp_path):
    cfg = tiny_config(epochs=3)
    ctx = init_distributed("cpu")
    full = train_member(cfg, irma_samples, _plan(cfg, irma_samples, tmp_path / "a"), ctx)

    class Interrupted(Exception):
        pass

    def stop_after_first(epoch):
        if epoch == 0:
            raise Interrupted

    plan_b = _plan(cfg, irma_samples, tmp_path / "b")
    with pytest.raises(Interrupted):
        train_member(cfg, irma_samples, plan_b, ctx, on_epoch_end=stop_after_first)
    assert load_checkpoint(plan_b.folder / "last.pt")["epoch"] == 0
    resumed = train_member(cfg, irma_samples, plan_b, ctx, resume=True)

    a = load_checkpoint(tmp_path / "a" / "irma" / "fold0-seed0" / "last.pt")
    b = load_checkpoint(plan_b.folder / "last.pt")
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert (full.best_epoch, full.val_dice, full.threshold) == (
        resumed.best_epoch,
        resumed.val_dice,
        resumed.threshold,
    )


def test_resume_fingerprint_names_what_changed(irma_samples):
    from drac_algo.training.fingerprint import check_resume, member_fingerprint

    cfg = tiny_config(lr=1e-3)
    train, val = irma_samples[:4], irma_samples[4:6]
    stored = member_fingerprint(cfg, train, val)
    assert check_resume(stored, member_fingerprint(cfg, train, val), "m") is True
    assert check_resume(None, stored, "m") is False  # a last.pt from before fingerprints
    # How the work runs may change between the runs; what is learnt may not.
    runtime = tiny_config(lr=1e-3, num_workers=3, amp=False, channels_last=False, seeds=(0, 1))
    assert check_resume(stored, member_fingerprint(runtime, train, val), "m")
    with pytest.raises(DracInputError, match=r"m: cannot resume: .* lr 0\.001 -> 0\.002"):
        check_resume(stored, member_fingerprint(tiny_config(lr=2e-3), train, val), "m")
    with pytest.raises(DracInputError, match=r"val\.tta 'none' -> 'd4'"):
        check_resume(
            stored, member_fingerprint(tiny_config(lr=1e-3, val__tta="d4"), train, val), "m"
        )
    first = train[0]
    edited = dataclasses.replace(first, mask=first.mask.copy())
    edited.mask[0, 0] ^= 1
    changed = [edited, *train[1:]]
    with pytest.raises(DracInputError, match=rf"train case\(s\) changed: {first.case_id}\b"):
        check_resume(stored, member_fingerprint(cfg, changed, val), "m")
    with pytest.raises(DracInputError, match=rf"val case\(s\) gone: {val[1].case_id}\b"):
        check_resume(stored, member_fingerprint(cfg, train, val[:1]), "m")


@pytest.mark.slow
def test_resume_refuses_a_run_whose_config_or_images_changed(irma_samples, tmp_path):
    cfg = tiny_config(epochs=3, lr=1e-3)
    ctx = init_distributed("cpu")

    class Interrupted(Exception):
        pass

    def stop_after_first(epoch):
        raise Interrupted

    plan = _plan(cfg, irma_samples, tmp_path)
    with pytest.raises(Interrupted):
        train_member(cfg, irma_samples, plan, ctx, on_epoch_end=stop_after_first)
    files = {p.name: p.read_bytes() for p in plan.folder.iterdir() if p.is_file()}
    with pytest.raises(DracInputError, match=r"cannot resume: .*lr 0\.001 -> 0\.0005"):
        train_member(tiny_config(epochs=3, lr=5e-4), irma_samples, plan, ctx, resume=True)
    case = plan.val_ids[0]
    swapped = [
        dataclasses.replace(s, image=255 - s.image) if s.case_id == case else s
        for s in irma_samples
    ]
    with pytest.raises(DracInputError, match=rf"val case\(s\) changed: {case}\b"):
        train_member(cfg, swapped, plan, ctx, resume=True)
    # Refused before anything was written: the interrupted run is as it was, and resumes.
    assert {p.name: p.read_bytes() for p in plan.folder.iterdir() if p.is_file()} == files
    assert train_member(cfg, irma_samples, plan, ctx, resume=True).best_epoch in (1, 2, 3)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.slow
def test_bundle_export_round_trip(irma_samples, tmp_path):
    cfg = tiny_config(epochs=1, postprocess__min_component_px=3)
    plan = _plan(cfg, irma_samples, tmp_path)
    result = train_member(cfg, irma_samples, plan, init_distributed("cpu"))
    bundle_dir = export_bundle(tmp_path)
    bundle = load_bundle(bundle_dir)
    assert sorted(bundle.classes) == [1]
    entry = bundle.classes[1]
    assert entry.threshold == result.threshold
    assert entry.min_component_px == 3
    (member,) = entry.members
    assert member.input_size == 64 and member.model == cfg.model
    # The method's augmentation (hflip, +-45 degree rotations): only identity and hflip.
    assert member.tta == ("identity", "hflip")

    # Each member's ONNX export rides along, checked by load_bundle like the weights.
    assert member.onnx is not None and (bundle_dir / member.onnx.file).is_file()
    # What trained it and what wrote it: the member's environment, carried into the manifest.
    trained = json.loads((plan.folder / "member.json").read_text())["environment"]
    assert bundle.environment["training"] == [trained]
    assert trained["torch"] == bundle.environment["export"]["torch"] == torch.__version__

    rebuilt = build_member(bundle_dir, member)
    original = torch.load(plan.folder / "best.pt", weights_only=True)["model"]
    reference = build_member(bundle_dir, member)
    reference.load_state_dict(original)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), reference(x))


@pytest.mark.slow
def test_a_failed_onnx_export_still_writes_the_bundle(irma_samples, tmp_path, monkeypatch, caplog):
    cfg = tiny_config(epochs=1)
    train_member(cfg, irma_samples, _plan(cfg, irma_samples, tmp_path), init_distributed("cpu"))

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo")

    monkeypatch.setattr(torch.onnx, "export", broken)
    bundle_dir = export_bundle(tmp_path)
    (member,) = load_bundle(bundle_dir).classes[1].members
    assert member.onnx is None
    assert not list(bundle_dir.glob("*.onnx")) and not list(bundle_dir.glob(".*"))
    assert "bundle written without ONNX files" in caplog.text
    assert f"python -m drac_algo.onnx_export {bundle_dir}" in caplog.text


def test_export_without_members_names_what_it_expected(tmp_path):
    with pytest.raises(DracInputError, match="member.json"):
        export_bundle(tmp_path)


# --- the command line -------------------------------------------------------------------------


def run_train(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_bad_config_fails_before_training(training_release, tmp_path):
    out = tmp_path / "run"
    proc = run_train("--data", str(training_release), "--out", str(out), "--encoder", "resnet-9000")
    assert proc.returncode == 2
    assert "unknown encoder 'resnet-9000'" in proc.stderr and "resnet34" in proc.stderr
    assert not out.exists()

    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    proc = run_train("--data", str(training_release), "--out", str(out), "--config", str(bad))
    assert proc.returncode == 2
    assert "unknown key(s) 'epochz'" in proc.stderr and "epochs" in proc.stderr


@pytest.mark.slow
def test_missing_data_is_a_clear_error(tmp_path):
    proc = run_train("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The run's log keeps what went wrong, beside the versions that ran.
    last = (tmp_path / "run" / "train.log").read_text().strip().splitlines()[-1]
    assert "ERROR drac-train: error: " in last and "nowhere" in last


@pytest.mark.slow
def test_ddp_with_two_gloo_processes(training_release, tmp_path):
    out = tmp_path / "run"
    args = [
        "--nproc_per_node=2",
        "-m",
        "train",
        "--data",
        str(training_release),
        "--out",
        str(out),
        "--task",
        "nv",
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--crop-size",
        "none",
        "--encoder",
        "resnet18",
        "--folds",
        "2",
        "--fold",
        "0",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = load_bundle(out / "model")
    assert sorted(bundle.classes) == [3]
    # One process writes: exactly one metrics row for the one epoch.
    rows = (out / "nv" / "fold0-seed0" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2
    # One train.log, by the main process: versions first, then the console's lines.
    log_lines = (out / "train.log").read_text().splitlines()
    assert "drac-train 0.1.0 (torch" in log_lines[0] and '"cuda"' in log_lines[0]
    assert any("bundle written to" in line for line in log_lines)


# --- deep supervision -------------------------------------------------------------------------


def test_deep_supervision_weights_and_outputs():
    assert output_weights(3) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    net = DeepSupervisionNet(build_model(tiny_config().model))
    x = torch.randn(2, 1, 64, 64)
    logits = net(x)
    assert logits.shape == (2, 1, 64, 64)
    assert [a.shape for a in net.aux] == [(2, 1, 64, 64)] * 3
    target = (torch.rand(2, 1, 64, 64) > 0.9).float()
    loss = supervised_loss(torch.nn.BCEWithLogitsLoss(), logits, net.aux, target)
    loss.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in net.heads)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.net(x))
    assert net.aux == []
    with pytest.raises(DracInputError, match="unetplusplus"):
        tiny_config("nv", deep_supervision=True)


@pytest.mark.slow
@pytest.mark.parametrize(("checkpoint", "kept"), [("best", 2), ("last", 3)])
def test_checkpoint_rule_picks_the_kept_epoch_and_its_tuned_threshold(
    irma_samples, tmp_path, monkeypatch, checkpoint, kept
):
    """Validation scripted per epoch: epoch 2 has the best Dice at 0.5, epoch 3 the final one
    whose best threshold is 0.3. "best" keeps epoch 2, "last" keeps epoch 3 with 0.3."""
    import drac_algo.training.loop as loop

    cfg = tiny_config(epochs=3, checkpoint=checkpoint)
    thresholds = loop.threshold_grid(cfg)

    def counts(dice_at_half: float, best_at: float | None = None) -> np.ndarray:
        # One image of 100 lesion pixels, 100 predicted: Dice = intersection / 100.
        inter = np.full(len(thresholds), round(100 * dice_at_half))
        if best_at is not None:
            inter[np.isclose(thresholds, best_at)] = 95
        counts = np.stack([inter, np.full_like(inter, 100), np.full_like(inter, 100)], 1)
        return counts[None, :, None, :]  # one image, every threshold, one component count

    script = iter([counts(0.5), counts(0.8), counts(0.6, best_at=0.3)])
    monkeypatch.setattr(loop, "validate", lambda *args, **kwargs: (0.1, next(script)))
    plan = _plan(cfg, irma_samples, tmp_path)
    result = train_member(cfg, irma_samples, plan, init_distributed("cpu"))
    assert result.best_epoch == kept
    assert result.threshold == (0.5 if kept == 2 else 0.3)
    summary = json.loads((plan.folder / "member.json").read_text())
    assert summary["best_epoch"] == kept and summary["config"]["checkpoint"] == checkpoint
    assert load_checkpoint(plan.folder / "best.pt")["epoch"] == kept


def test_the_kept_epoch_chooses_how_many_components_and_the_bundle_says_so(
    irma_samples, tmp_path, monkeypatch
):
    """Validation scripted per epoch, with the component counts (all, 1, 2): epoch 1 scores
    higher keeping 2 at 0.3, epoch 2 (kept: the best at 0.5) keeping 1 at its tuned threshold 0.4.
    The member keeps epoch 2's choice, the bundle states it, and inference applies it."""
    import drac_algo.training.loop as loop
    from drac_algo.engine.predictor import Predictor

    cfg = tiny_config(epochs=2, postprocess__keep_most_confident=(1, 2))
    thresholds = loop.threshold_grid(cfg)

    def counts(at_half: float, best_keep: int, best_threshold: float) -> np.ndarray:
        # One image of 100 lesion pixels, 100 predicted: Dice = intersection / 100.
        inter = np.full((len(thresholds), 3), round(100 * at_half))
        inter[np.isclose(thresholds, best_threshold), 0] = 90
        inter[np.isclose(thresholds, best_threshold), best_keep] = 95
        full = np.full_like(inter, 100)
        return np.stack([inter, full, full], -1)[None]

    script = iter([counts(0.5, 2, 0.3), counts(0.8, 1, 0.4)])
    monkeypatch.setattr(loop, "validate", lambda *args, **kwargs: (0.1, next(script)))
    plan = _plan(cfg, irma_samples, tmp_path)
    result = train_member(cfg, irma_samples, plan, init_distributed("cpu"))
    assert (result.best_epoch, result.threshold, result.keep_components) == (2, 0.4, 1)
    assert result.tuned_dice == pytest.approx(0.95)
    summary = json.loads((plan.folder / "member.json").read_text())
    assert summary["keep_components"] == 1
    monkeypatch.undo()

    bundle_dir = export_bundle(tmp_path)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["version"] == 3 and manifest["classes"]["1"]["keep_components"] == 1
    predictor = Predictor.from_bundle(bundle_dir, device="cpu", tta="none", precision="fp32")
    assert predictor.settings()["classes"]["1"]["keep_components"] == 1
    image = irma_samples[0].image
    prediction = predictor.predict(image)
    import cv2

    count, _ = cv2.connectedComponents(prediction.masks[1], connectivity=8)
    assert count - 1 <= 1

    # A member trained before the rule (no keep_components in its member.json) keeps all.
    summary.pop("keep_components")
    (plan.folder / "member.json").write_text(json.dumps(summary))
    older = json.loads((export_bundle(tmp_path, tmp_path / "older") / "manifest.json").read_text())
    assert older["classes"]["1"]["keep_components"] == 0


def test_curves_mark_the_kept_epoch_not_the_highest_dice():
    from drac_algo.training.curves import kept_point

    history = [{"epoch": e, "val_dice": d} for e, d in [(1, 0.2), (2, 0.9), (3, 0.5)]]
    assert kept_point(history, 3) == (3, 0.5)  # checkpoint = "last": epoch 3, not 2
    assert kept_point(history, 2) == (2, 0.9)
    assert kept_point(history, -1) is None  # nothing kept yet
    assert kept_point([{"epoch": 1, "val_dice": math.nan}], 1) is None


def test_checkpoint_rule_is_checked():
    with pytest.raises(
        DracInputError, match="checkpoint must be one of 'best', 'last'; got 'final'"
    ):
        tiny_config(checkpoint="final")


def test_deep_supervision_run_keeps_plain_weights_for_the_bundle(irma_samples, tmp_path):
    cfg = tiny_config(epochs=1, deep_supervision=True)
    plan = _plan(cfg, irma_samples, tmp_path)
    train_member(cfg, irma_samples, plan, init_distributed("cpu"))
    best = load_checkpoint(plan.folder / "best.pt")
    build_model(cfg.model).load_state_dict(best["model"])  # strict: no head weights inside
    last = load_checkpoint(plan.folder / "last.pt")
    assert len(last["aux_heads"]) == 6  # 3 heads x (weight, bias)
