"""One command-line vocabulary (issue 12): every command has ``-h``, ``--version`` and ``-v``
where it logs; ``--device`` is checked one way everywhere; the old spellings (``--model-dir``,
``--batch-size`` of process.py, ``--size``, train.export's ``--out``) still parse, hidden from
``--help``; a bad argument ends in ``error: ...`` and exit status 2, never a traceback; and
``--help`` needs none of torch, smp, albumentations, ONNX Runtime or OpenCV."""

import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from helpers import rejected, torchrun_environment

from drac_algo.bundle import cli as bundle_check
from drac_algo.common import choices
from drac_algo.common.cli import DEVICE_SPELLINGS, parse_device
from drac_algo.common.errors import DracInputError
from drac_algo.common.provenance import version_line
from drac_algo.data import submission
from drac_algo.engine import onnx_backend, precision, tta
from drac_algo.engine.devices import resolve_device
from drac_algo.serve import cli as process_cli
from drac_algo.serve import doctor, job_settings
from drac_algo.tools import evaluate, quickstart
from drac_algo.tools.ablate import __main__ as ablate_cli
from drac_algo.tools.bench import cli as bench_cli
from drac_algo.tools.jobcost import cli as jobcost_cli
from drac_algo.tools.synth import __main__ as synth_cli
from drac_algo.training import config, onnx_export
from drac_algo.training.distributed import init_distributed
from train import cli as train_cli
from train import export as train_export

REPO = Path(__file__).resolve().parents[1]

# Console script (pyproject.toml [project.scripts]) -> its click command.
COMMANDS: dict[str, click.Command] = {
    "drac-process": process_cli.main,
    "drac-train": train_cli.main,
    "drac-export": train_export.main,
    "drac-quickstart": quickstart.main,
    "drac-evaluate": evaluate.main,
    "drac-synth": synth_cli.main,
    "drac-submission": submission.main,
    "drac-ablate": ablate_cli.main,
    "drac-onnx-export": onnx_export.main,
    "drac-bench": bench_cli.main,
    "drac-jobcost": jobcost_cli.main,
    "drac-bundle": bundle_check.main,
    "drac-doctor": doctor.main,
}
LOGGING = set(COMMANDS) - {"drac-submission", "drac-bundle"}  # these log in a subcommand


def invoke(command: click.Command, *args: object):
    return CliRunner().invoke(command, [str(a) for a in args])


# --- --device ---


@pytest.mark.parametrize(
    ("spelling", "device"),
    [
        ("auto", "auto"),
        ("cpu", "cpu"),
        ("cuda", "cuda"),
        ("cuda:1", "cuda:1"),
        (" CUDA:0", "cuda:0"),
    ],
)
def test_device_spellings_are_normalised(spelling, device):
    assert parse_device(spelling) == device


@pytest.mark.parametrize("spelling", ["gpu", "cuda:", "cuda:x", "cuda:-1", "mps", "", "cpu:0"])
def test_other_device_spellings_name_what_was_expected_and_found(spelling):
    with pytest.raises(DracInputError) as raised:
        parse_device(spelling)
    assert str(raised.value) == f"--device: expected {DEVICE_SPELLINGS}, found {spelling!r}"


@pytest.mark.parametrize("name", ["drac-process", "drac-train", "drac-bench"])
def test_every_device_option_checks_the_spelling_the_same_way(name):
    stderr = rejected(invoke(COMMANDS[name], "--device", "gpu"))
    assert stderr.strip().splitlines()[-1] == (
        f"error: Invalid value for '--device': expected {DEVICE_SPELLINGS}, found 'gpu'"
    )
    assert "-h' for help" in stderr


def fake_gpus(monkeypatch, count: int) -> None:
    """torch sees ``count`` CUDA devices (nothing here touches one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_a_gpu_index_the_machine_lacks_is_refused(monkeypatch, tmp_path):
    fake_gpus(monkeypatch, 1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    expected = "--device cuda:3: expected a GPU index below 1 (the GPUs torch sees), found 3"
    with pytest.raises(DracInputError) as raised:
        init_distributed("cuda:3")
    assert str(raised.value) == expected
    with pytest.raises(DracInputError) as raised:
        resolve_device("cuda:3")
    assert str(raised.value) == expected
    run = invoke(
        train_cli.main, "--data", tmp_path, "--out", tmp_path / "run", "--device", "cuda:3"
    )
    assert rejected(run).strip().splitlines()[-1] == f"error: {expected}"


def test_a_fixed_gpu_under_torchrun_is_refused(monkeypatch):
    fake_gpus(monkeypatch, 2)
    torchrun_environment(monkeypatch)
    with pytest.raises(DracInputError, match="under torchrun each process uses the GPU of its"):
        init_distributed("cuda:1")


# --- -h, --version, -v ---


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_short_help_and_version(name):
    command = COMMANDS[name]
    short, long = invoke(command, "-h"), invoke(command, "--help")
    assert short.exit_code == 0 and short.output.startswith("Usage: "), short.output
    assert short.output == long.output
    assert "--version" in short.output
    version = invoke(command, "--version")
    assert version.exit_code == 0 and version.output == version_line(name) + "\n"
    assert version.output.startswith(f"{name} 0.1.0 (torch ")


def test_subcommands_have_short_help_and_verbose():
    result = invoke(submission.main, "zip", "-h")
    assert result.exit_code == 0 and "-v, --verbose" in result.output, result.output


@pytest.mark.parametrize("name", sorted(LOGGING))
def test_every_logging_command_has_verbose(name):
    assert "-v, --verbose" in invoke(COMMANDS[name], "-h").output


# --- The new names, and the old ones still parsing (hidden) ---


def parse(command: click.Command, *args: str) -> dict:
    with command.make_context("command", list(args)) as ctx:
        return ctx.params


@pytest.mark.parametrize(
    ("name", "old", "new", "param", "value", "expected"),
    [
        ("drac-process", "--model-dir", "--bundle", "bundle", "b", Path("b")),
        ("drac-process", "--batch-size", "--views-per-batch", "views_per_batch", "3", 3),
        ("drac-export", "--out", "--bundle", "bundle", "b", Path("b")),
        ("drac-synth", "--size", "--image-size", "size", "64", 64),
        ("drac-quickstart", "--size", "--image-size", "size", "64", 64),
        ("drac-ablate", "--size", "--image-size", "size", "64", 64),
        ("drac-bench", "--size", "--image-size", "size", "64", 64),
    ],
)
def test_old_spellings_still_parse_but_only_the_new_one_is_shown(
    name, old, new, param, value, expected
):
    command = COMMANDS[name]
    args = ["run"] if name in ("drac-synth", "drac-export") else []
    assert parse(command, *args, new, value)[param] == expected
    assert parse(command, *args, old, value)[param] == expected
    help_text = invoke(command, "-h").output
    assert f"{new} " in help_text and f"{old} " not in help_text, help_text


def test_process_defaults_survive_the_hidden_aliases():
    params = parse(process_cli.main)
    assert params["bundle"] == Path("/opt/ml/model") and params["views_per_batch"] is None


def test_train_batch_size_is_still_images_per_step():
    assert (
        parse(train_cli.main, "--data", "d", "--out", "o", "--batch-size", "4")["batch_size"] == 4
    )
    assert "Images per optimiser step" in invoke(train_cli.main, "-h").output


# --- Each command: a bad argument is "error: ..." and exit status 2 ---


def test_process_bad_input(tmp_path):
    rejected(
        invoke(process_cli.main, "--input", tmp_path, "--output", tmp_path / "out"),
        f"no images (.png, .mha, .tif, .tiff) and no inputs.json in the input folder: {tmp_path}",
    )
    assert not (tmp_path / "out").exists()
    rejected(invoke(process_cli.main, "--tta", "d8"), "Invalid value for '--tta'", "'d8'")


def test_train_unknown_task_and_device_without_cuda(tmp_path):
    rejected(invoke(train_cli.main, "--data", tmp_path, "--out", tmp_path, "--task", "irm"))
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    stderr = rejected(
        invoke(train_cli.main, "--data", tmp_path, "--out", tmp_path / "run", "--device", "cuda")
    )
    assert "--device cuda: expected a CUDA device, found none" in stderr


def test_train_export_missing_run(tmp_path):
    rejected(invoke(train_export.main, tmp_path / "nowhere"), "no finished members in")


def test_quickstart_unknown_recipe():
    rejected(invoke(quickstart.main, "--recipe", "fast"), "Invalid value for '--recipe'", "'fast'")


def test_evaluate_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    rejected(
        invoke(evaluate.main, "--gt", missing, "--pred", missing),
        f"error: expected a mask folder: {missing} does not exist",
    )


def test_synth_image_size_too_small(tmp_path):
    rejected(
        invoke(synth_cli.main, tmp_path / "out", "--image-size", "8"),
        "Invalid value for '--image-size': 8 is not in the range x>=16",
    )


def test_submission_unknown_subcommand_and_missing_case_list(tmp_path):
    rejected(invoke(submission.main, "unzip"), "No such command 'unzip'")
    rejected(
        invoke(submission.main, "zip", tmp_path, tmp_path / "t.zip", "--team", "t"),
        "results.json",
    )


def test_ablate_bad_seeds(tmp_path):
    rejected(
        invoke(ablate_cli.main, "--workdir", tmp_path, "--seeds", "a,b"),
        "error: --seeds takes integers separated by commas, got 'a,b'",
    )


def test_onnx_export_missing_bundle(tmp_path):
    rejected(invoke(onnx_export.main, tmp_path / "nowhere"), "no model bundle")


# --- --help without the heavy packages ---

HEAVY = ["torch", "segmentation_models_pytorch", "albumentations", "onnxruntime", "cv2"]
_HELP_WITHOUT_HEAVY = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it now fails
sys.argv = {argv!r}
try:
    runpy.{runner}({target!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
leaked = [m for m in {blocked!r} if sys.modules.get(m) is not None]
print("leaked", leaked)
sys.exit(code or (3 if leaked else 0))
"""
HELP_TARGETS = [
    ("run_path", "process.py", []),
    ("run_module", "train", []),
    ("run_module", "train.export", []),
    ("run_module", "drac_algo.quickstart", []),
    ("run_module", "drac_algo.evaluate", []),
    ("run_module", "drac_algo.synth", []),
    ("run_module", "drac_algo.submission", ["zip"]),
    ("run_module", "drac_algo.ablate", []),
    ("run_module", "drac_algo.onnx_export", []),
    ("run_module", "drac_algo.bench", []),
    ("run_module", "drac_algo.jobcost", []),
    ("run_module", "drac_algo.bundle", ["check"]),
    ("run_module", "drac_algo.doctor", []),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runner", "target", "sub"), HELP_TARGETS, ids=[t[1] for t in HELP_TARGETS]
)
def test_help_needs_no_heavy_package(runner, target, sub):
    code = _HELP_WITHOUT_HEAVY.format(
        blocked=HEAVY, argv=[target, *sub, "--help"], runner=runner, target=target
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("Usage: ") and "leaked []" in done.stdout, done.stdout


def test_the_choices_are_the_library_s():
    assert bundle_check.PLATFORM_FILE == job_settings.PLATFORM_FILE
    assert tuple(tta.TTA_SETS) == choices.TTA_CHOICES
    assert precision.PRECISIONS is choices.PRECISIONS
    assert onnx_backend.BACKENDS is choices.BACKENDS
    assert config.RECIPE_FAMILIES is choices.RECIPE_FAMILIES
    for family in choices.RECIPE_FAMILIES:
        assert (config.RECIPES_DIR / family).is_dir(), family
