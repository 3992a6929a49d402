"""``pip install .`` works: the wheel holds both packages and the recipes, its requirements are
requirements.txt's pins, and every console command points at an importable click command."""

import importlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest

import process
from drac_algo.serve import cli as process_cli

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "drac-train", "drac-export", "drac-process", "drac-evaluate", "drac-synth",
    "drac-quickstart", "drac-ablate", "drac-bench", "drac-submission", "drac-onnx-export",
    "drac-bundle", "drac-doctor", "drac-jobcost",
}  # fmt: skip


@pytest.mark.slow
def test_wheel_holds_the_packages_recipes_pins_and_commands(tmp_path):
    # No build isolation: the venv's setuptools builds it offline, and nothing is left in the tree.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("drac_algo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        top_level = zf.read(f"{info}/top_level.txt").decode().split()
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert sorted(top_level) == ["drac_algo", "train"]
    assert not any(n.startswith(("test/", "runs/", "quickstart/")) for n in names)
    recipes = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "drac_algo/training/recipes").rglob("*.toml")
    }
    assert recipes and recipes <= names
    assert {"process.py", "drac_algo/serve/cli.py", "train/cli.py"} & names == {
        "drac_algo/serve/cli.py",
        "train/cli.py",
    }  # the checkout's process.py is a thin wrapper, not installed as a top-level module
    pins = [
        line.strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    requires = [
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    assert requires == pins
    section = entry_points.split("[console_scripts]")[1].split("\n[")[0]
    targets = dict(
        (name.strip(), target.strip())
        for name, target in (line.split("=") for line in section.strip().splitlines())
    )
    assert set(targets) == COMMANDS
    for name, target in targets.items():
        module, attr = target.split(":")
        assert isinstance(getattr(importlib.import_module(module), attr), click.Command), name


def test_process_py_is_the_installed_command():
    assert process.main is process_cli.main


# Installed by requirements.txt, not by the image (requirements-inference.txt).
TRAINING_ONLY = {"albumentations", "matplotlib", "onnx"}


def _pins(name: str) -> list[str]:
    return [
        line.strip()
        for line in (REPO / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_the_image_requirements_are_a_subset_with_the_same_pins():
    full, image = _pins("requirements.txt"), _pins("requirements-inference.txt")
    assert set(image) <= set(full), set(image) - set(full)
    left_out = {line.split("==")[0] for line in set(full) - set(image)}
    assert left_out == TRAINING_ONLY


_RUN_WITHOUT_TRAINING_PACKAGES = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it now fails
from drac_algo.serve.cli import main
for args in {runs!r}:
    main(args, standalone_mode=False)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("drac_algo"))))
"""


def _container_runs_without(blocked: list[str], tmp_path: Path, *extra: str) -> list[str]:
    """process.py on the container fixtures, in both modes (fp32, no TTA, ``extra``), in one
    interpreter where the packages ``blocked`` cannot be imported; the drac_algo modules it
    imported."""
    fixtures = REPO / "test" / "container"
    runs = [
        ["--input", str(fixtures / "inputs" / mode), "--output", str(tmp_path / mode),
         "--bundle", str(fixtures / "model"), "--precision", "fp32", "--tta", "none", *extra]
        for mode in ("batch", "gc-job")
    ]  # fmt: skip
    code = _RUN_WITHOUT_TRAINING_PACKAGES.format(blocked=blocked, runs=runs)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_inference_imports_nothing_the_image_leaves_out(tmp_path):
    """process.py, in both modes, with the training-only packages unimportable; none of the
    drac_algo modules it imports may be one that .dockerignore keeps out of the image."""
    imported = _container_runs_without(sorted(TRAINING_ONLY), tmp_path)
    excluded = [
        line.strip().rstrip("/").removesuffix(".py").replace("/", ".")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("drac_algo/")
    ]
    assert "drac_algo.tools" in excluded and "drac_algo.training" in excluded
    leaked = [m for m in imported if any(m == e or m.startswith(e + ".") for e in excluded)]
    assert not leaked, f"process.py imports modules the image leaves out: {leaked}"
    assert "drac_algo.engine.onnx_backend" in imported and "drac_algo.serve.pipeline" in imported


# What only building a network in torch needs: on the ONNX Runtime path (the CPU's float32)
# nothing imports them. segmentation-models-pytorch brings timm, torchvision and torch._dynamo;
# their import was most of a CPU job's cold start (README "What a Grand Challenge job costs").
NETWORK_BUILDING = ("segmentation_models_pytorch", "timm", "torchvision")


@pytest.mark.slow
def test_the_onnx_runtime_path_never_imports_the_network_libraries(tmp_path):
    """process.py on the ONNX Runtime backend, in both modes, with segmentation-models-pytorch,
    timm and torchvision unimportable: it runs, and imports no drac_algo module that builds
    networks."""
    imported = _container_runs_without(list(NETWORK_BUILDING), tmp_path, "--backend", "onnxruntime")
    assert "drac_algo.engine.onnx_backend" in imported
    assert "drac_algo.networks.models" not in imported and "drac_algo.networks.spec" in imported


def _image_exclusions() -> list[str]:
    """The drac_algo/ lines of .dockerignore, as written."""
    return [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("drac_algo/")
    ]


def test_every_path_the_image_leaves_out_is_in_the_checkout():
    """A stale line (a module that moved into a stage package) keeps nothing out."""
    entries = _image_exclusions()
    assert {"drac_algo/training/", "drac_algo/tools/"} <= set(entries)
    missing = [e for e in entries if not (REPO / e).exists()]
    assert not missing, f".dockerignore names paths the checkout lacks: {missing}"


@pytest.mark.slow
def test_test_sh_leaves_the_excluded_folders_out_of_the_code_it_compares():
    """test.sh's own lines (the code listing and its .dockerignore filter) run on this checkout:
    no file of an excluded folder or module is left, every other drac_algo file is."""
    script = (REPO / "test.sh").read_text()
    start = script.index("list_code=")
    listing = script[start : script.index("\n\n", start)]
    start = script.index("not_in_image=")
    end = script.index("') || die", start)
    code = f'ROOT={str(REPO)!r}\n{listing}\n{script[start:end]}\')\nprintf "%s\\n" "$host_code"\n'
    done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = {line.split()[1] for line in done.stdout.splitlines() if line.strip()}
    entries = [e.rstrip("/") for e in _image_exclusions()]
    code_files = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "drac_algo").rglob("*")
        if p.is_file() and p.suffix != ".pyc" and "__pycache__" not in p.parts
    }
    excluded = {f for f in code_files if any(f == e or f.startswith(e + "/") for e in entries)}
    assert {f for f in code_files if f.startswith("drac_algo/tools/bench/")} <= excluded
    assert "drac_algo/tools/bench/cli.py" in excluded
    assert not listed & excluded, sorted(listed & excluded)[:10]
    assert code_files - excluded <= listed
    assert {"process.py", "drac_algo/engine/core.py"} <= listed


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # serve -> training: the image would import code it leaves out; and serve and training
        # are independent siblings in the layers.
        ("serve/results.py", "from drac_algo.training import RECIPES_DIR", "Stages import only"),
        # training -> serve: allowed by neither.
        ("training/curves.py", "from drac_algo.serve import results", "Stages import only"),
        # engine -> tools: a stage importing upwards.
        ("engine/tta.py", "from drac_algo.tools import evaluate", "never import what the image"),
        # a stage importing a command module.
        ("data/images.py", "import drac_algo.evaluate", "No stage imports a command"),
        ("serve/pipeline.py", "import drac_algo.doctor", "No stage imports a command"),
        # an entry point importing a stage's private module (engine/_views.py, made here).
        ("serve/cli.py", "from drac_algo.engine import _views", "Private modules stay inside"),
    ],
)
def test_the_layer_contracts_catch_a_violation(tmp_path, module, line, broken):
    """The contracts in pyproject.toml fail on a deliberate violation (a contract written with
    the wrong separator, ':' instead of '|', once let serve import training unseen). The private
    module the last case imports is written beside the clean check, so that only the import
    breaks a contract."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip(f"lint-imports not installed beside {sys.executable}")
    shutil.copytree(
        REPO / "drac_algo", tmp_path / "drac_algo", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(
        REPO / "train", tmp_path / "train", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    (tmp_path / "drac_algo" / "engine" / "_views.py").write_text('"""Private to engine."""\n')
    clean = subprocess.run([lint], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout[-2000:]
    with (tmp_path / "drac_algo" / module).open("a") as f:
        f.write(f"\n{line}  # noqa\n")
    done = subprocess.run([lint], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout[-2000:]
    report = " ".join(done.stdout.split())  # the report wraps long contract names
    assert f"{broken}" in report.split("Broken contracts")[-1], report[-2000:]
