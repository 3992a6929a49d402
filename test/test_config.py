"""Training configuration: default recipes, layered overrides, early errors."""

import dataclasses
import json

import pytest

from drac_algo.common.errors import DracInputError
from drac_algo.networks.spec import ModelSpec
from drac_algo.training.config import (
    DEFAULT_RECIPE,
    RECIPES_DIR,
    TrainConfig,
    load_config,
    recipe_path,
)

# The method's table: arch, attention, lr, min lr, scheduler, milestones, optimizer, loss, input.
METHOD = {
    "irma": ("unetplusplus", "cam", 1e-4, 1e-9, "multistep", [25], "adam", "dice", 1024),
    "na": ("unetplusplus", "cam", 1e-4, 1e-9, "multistep", [25], "adam", "dice", 1024),
    "nv": ("unet", None, 1e-4, 1e-9, "cosine_steps", [25, 50, 75], "adam", "dice", 1024),
}


@pytest.mark.parametrize("task", ["irma", "na", "nv"])
def test_method_recipes_match_the_method(task):
    cfg = load_config(task, recipe="method")
    arch, attention, lr, min_lr, scheduler, milestones, optimizer, loss, size = METHOD[task]
    assert cfg.task == task
    assert cfg.model == ModelSpec(arch, "resnet34", attention, 5, None)
    assert (cfg.lr, cfg.min_lr, cfg.scheduler, cfg.optimizer) == (lr, min_lr, scheduler, optimizer)
    assert cfg.milestone_epochs() == milestones
    assert cfg.gamma == (0.6 if task == "nv" else 0.1)
    assert (cfg.crop_size, cfg.foreground_fraction, cfg.init_from) == (None, 0.0, None)
    assert (cfg.loss.name, cfg.input_size) == (loss, size)
    assert cfg.positives_only is True
    assert cfg.encoder_weights is None
    assert (cfg.normalization.mean, cfg.normalization.std) == (0.5, 0.25)
    assert (cfg.val.folds, cfg.val.fold, cfg.val.tta) == (5, None, "none")
    assert cfg.n_members == 5  # the default ensemble: every fold, one seed


@pytest.mark.parametrize("task", ["irma", "na", "nv"])
def test_best_recipes_keep_the_cards_architectures(task):
    best, method = load_config(task), load_config(task, recipe="method")
    assert DEFAULT_RECIPE == "best"
    # The same network; best's CAM gates start near 1 (2 * sigmoid) instead of 0.5.
    cam_scaled = {"cam": "cam-2sigmoid", None: None}[method.model.attention]
    assert best.model == dataclasses.replace(method.model, attention=cam_scaled)
    assert (best.loss.name, best.scheduler) == ("dice", "cosine")
    assert (best.crop_size, best.foreground_fraction) == (512, 0.5)
    assert best.input_size == method.input_size == 1024
    assert best.n_members == method.n_members == 5
    assert best.val.tta == "d4"  # validated on the views process.py averages by default


def test_task_by_index_unknown_task_and_unknown_family():
    assert load_config(3).task == "nv"
    assert recipe_path("1").name == "irma.toml"
    assert recipe_path("1", "method").parent.name == "method"
    with pytest.raises(DracInputError, match="valid: irma"):
        load_config("hemorrhage")
    with pytest.raises(DracInputError, match="unknown recipe family 'fancy'; valid: method, best"):
        load_config("irma", recipe="fancy")


def test_overrides_files_apply_in_order(tmp_path):
    first = write(tmp_path, "epochs = 3\nbatch_size = 2\n", "a.toml")
    second = write(tmp_path, "epochs = 5\n", "b.toml")
    cfg = load_config("nv", [first, second])
    assert (cfg.epochs, cfg.batch_size) == (5, 2)
    with pytest.raises(DracInputError, match="foreground_fraction"):
        load_config("nv", foreground_fraction=1.5)
    with pytest.raises(DracInputError, match="samples_per_epoch"):
        load_config("nv", samples_per_epoch=0)


def write(tmp_path, text, name="over.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_overrides_file_merges_over_the_recipe(tmp_path):
    path = write(
        tmp_path,
        """
epochs = 3
[model]
encoder = "resnet18"
[augment]
hflip_p = 0.0
[val]
fold = 2
""",
    )
    cfg = load_config("irma", path)
    assert cfg.epochs == 3
    assert cfg.model == ModelSpec("unetplusplus", "resnet18", "cam-2sigmoid", 5, None)
    assert cfg.augment.hflip_p == 0.0 and cfg.augment.rotate_p == 0.5
    assert (cfg.val.folds, cfg.val.fold) == (5, 2)
    assert cfg.lr == 1e-4  # untouched keys keep the recipe's value


def test_command_line_overrides_come_last_and_skip_none(tmp_path):
    path = write(tmp_path, "epochs = 3\nbatch_size = 8\n")
    cfg = load_config(
        "irma",
        path,
        epochs=2,
        lr=None,
        model__attention="none",
        model__arch="deeplabv3plus",
        val__holdout_fraction=0.2,
        seeds=(1, 2),
    )
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.seeds) == (2, 8, 1e-4, (1, 2))
    assert cfg.model == ModelSpec("deeplabv3plus", "resnet34", None)
    assert cfg.val.holdout_fraction == 0.2


@pytest.mark.parametrize(
    ("changes", "members"),
    [
        ({"seeds": (0, 1)}, 10),
        ({"val__folds": 3, "seeds": (0, 1, 2)}, 9),
        ({"val__fold": 2, "seeds": (0, 1)}, 2),
        ({"val__holdout_fraction": 0.2}, 1),
    ],
)
def test_members_count_folds_times_seeds(changes, members):
    assert load_config("na", **changes).n_members == members


def test_changing_the_loss_drops_the_old_params(tmp_path):
    path = write(tmp_path, '[loss]\nname = "positive_dice_focal"\nparams = { gamma = 1.0 }\n')
    cfg = load_config("na", path)
    assert (cfg.loss.name, cfg.loss.params) == ("positive_dice_focal", {"gamma": 1.0})
    same = load_config(
        "na", write(tmp_path, "[loss.params]\nsmooth = 0.5\n", "s.toml"), recipe="method"
    )
    assert (same.loss.name, same.loss.params) == ("dice", {"smooth": 0.5})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epoch = 3", r"over.toml: unknown key\(s\) 'epoch'; valid: task, model, normalization"),
        ("[model]\nbackbone = 'resnet18'", r"\[model\]: unknown key\(s\) 'backbone'; valid: arch"),
        ("[augment]\nflip_p = 0.5", r"valid: hflip_p, rotate_p"),
        (
            "[loss.params]\nalpha = 0.5",
            r"loss 'dice' takes no parameter\(s\) 'alpha'; valid: smooth",
        ),
    ],
)
def test_unknown_keys_are_refused_with_the_valid_ones(tmp_path, text, match):
    with pytest.raises(DracInputError, match=match):
        load_config("irma", write(tmp_path, text))


def test_unknown_command_line_key():
    with pytest.raises(DracInputError, match=r"command-line overrides: unknown key\(s\) 'epohcs'"):
        load_config("nv", epohcs=3)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epochs = -1", "epochs must be >= 1"),
        ("epochs = 'ten'", "epochs: expected an integer"),
        ("epochs = 2.5", "epochs: expected an integer"),
        ("positives_only = 1", "expected true or false"),
        ("[model]\narch = 'unett'", "unknown architecture 'unett'; valid: unet, unetplusplus"),
        ("[model]\nencoder = 'resnet-34'", "unknown encoder 'resnet-34'; valid: resnet18"),
        ("[model]\narch = 'deeplabv3plus'", "use attention = none"),
        (
            "scheduler = 'step'",
            "unknown scheduler 'step'; valid: multistep, cosine, cosine_steps, constant",
        ),
        ("optimizer = 'sgd'", "unknown optimizer 'sgd'; valid: adam, adamw"),
        (
            "scheduler = 'multistep'\nmilestones = [0.5, 1.5]",
            "milestones must be increasing fractions",
        ),
        ("min_lr = 1.0", "0 <= min_lr <= lr"),
        ("input_size = 1000", "multiple of 32"),
        ("[val]\nfold = 5", r"val: fold must be in 0..4"),
        ("[val]\nfold = 1\nholdout_fraction = 0.2", "cannot both be set"),
        ("[loss]\nname = 'tversky'", "unknown loss 'tversky'"),
        ("[augment]\nnoise_p = 2.0", "probability"),
        ("[normalization]\nstd = 0.0", "positive std"),
        ("encoder_weights = 'nowhere/weights.pt'", "encoder_weights: file nowhere/weights.pt"),
        ("amp = 'yes'", "amp must be 'auto', true or false"),
        ("seeds = []", "seeds must be a non-empty list"),
        ("task = 'nv'", "is for task 'nv', not 'irma'"),
        ("epochs = [", "not valid TOML"),
    ],
)
def test_bad_values_fail_at_load_time(tmp_path, text, match):
    with pytest.raises(DracInputError, match=match):
        load_config("irma", write(tmp_path, text))


def test_missing_overrides_file(tmp_path):
    with pytest.raises(DracInputError, match="cannot read config file"):
        load_config("irma", tmp_path / "absent.toml")


def test_optional_values_accept_none_and_files(tmp_path):
    weights = tmp_path / "enc.pt"
    weights.write_bytes(b"")
    cfg = load_config("nv", write(tmp_path, f"encoder_weights = '{weights}'\namp = false\n"))
    assert (cfg.encoder_weights, cfg.amp) == (str(weights), False)
    back = load_config("nv", write(tmp_path, "encoder_weights = 'none'\n", "n.toml"))
    assert back.encoder_weights is None
    assert load_config("nv", encoder_weights="imagenet").encoder_weights == "imagenet"


def test_resolved_config_round_trips_through_json():
    cfg = load_config("irma", epochs=7, model__decoder_channels=[128, 64, 32, 16, 16])
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["model"]["decoder_channels"] == [128, 64, 32, 16, 16]
    assert data["val"]["fold"] is None
    assert TrainConfig.from_dict(data) == cfg
    with pytest.raises(DracInputError, match="unknown key"):
        TrainConfig.from_dict({**data, "extra": 1})


def test_per_task_tables_in_an_overrides_file_apply_to_their_task_only(tmp_path):
    text = "epochs = 3\n[per_task.nv]\nepochs = 7\n[per_task.nv.model]\nencoder = 'resnet18'\n"
    path = write(tmp_path, text)
    nv, irma = load_config("nv", path), load_config("irma", path)
    assert (nv.epochs, nv.model.encoder) == (7, "resnet18")
    assert (irma.epochs, irma.model.encoder) == (3, load_config("irma").model.encoder)
    assert load_config("nv", path, epochs=9).epochs == 9  # the command line still wins
    quickstart = RECIPES_DIR / "quickstart.toml"
    na_samples = load_config("na", quickstart).samples_per_epoch
    assert load_config("nv", quickstart).samples_per_epoch > na_samples
    assert load_config("irma", quickstart).samples_per_epoch > na_samples


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[per_task.ma]\nepochs = 2", r"\[per_task.ma\]: unknown task; valid: irma, na, nv"),
        ("per_task = 3", r"\[per_task\] must hold one table per task"),
        ("[per_task.nv]\nepoch = 2", r"per_task.nv\]: unknown key\(s\) 'epoch'"),
    ],
)
def test_per_task_tables_are_checked(tmp_path, text, match):
    with pytest.raises(DracInputError, match=match):
        load_config("nv", write(tmp_path, text))


def test_every_training_flag_sets_the_config_key_its_table_names(tmp_path):
    """train/cli.py's CONFIG_FLAGS is the one map from flags to config keys: each key is one
    load_config accepts, the flag reaches it through the real parser, and --help names it."""
    from click.testing import CliRunner

    from train import cli as train_cli

    values = {
        "--image-size": "256",
        "--crop-size": "128",
        "--epochs": "3",
        "--batch-size": "2",
        "--grad-accum": "2",
        "--folds": "3",
        "--fold": "1",
        "--seeds": "4,5",
        "--encoder": "resnet18",
        "--encoder-weights": "imagenet",
        "--init-from": str(tmp_path / "w.pt"),
        "--foreground-fraction": "0.25",
        "--deep-supervision/--no-deep-supervision": None,
        "--checkpoint": "last",
        "--workers": "1",
    }
    (tmp_path / "w.pt").write_bytes(b"")  # the config checks only that it exists
    assert [f.flag for f in train_cli.CONFIG_FLAGS] == list(values)
    args = []
    for flag, value in values.items():
        args += [flag.split("/")[0]] + ([value] if value is not None else [])
    context = train_cli.main.make_context("train", ["--data", "d", "--out", "o", *args])
    overrides = train_cli.config_overrides(context.params)
    cfg = load_config("irma", None, "best", **overrides).to_dict()
    for flag in train_cli.CONFIG_FLAGS:
        node = cfg
        for part in flag.key.split("__"):
            node = node[part]
        expected = overrides[flag.key]
        assert node == (list(expected) if isinstance(expected, tuple) else expected), flag.flag
    help_text = " ".join(CliRunner().invoke(train_cli.main, ["-h"]).output.split())
    for flag in train_cli.CONFIG_FLAGS:
        assert f"[config: {flag.key.replace('__', '.')}]" in help_text, flag.flag
