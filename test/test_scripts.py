"""The shell scripts (build.sh, export.sh, test.sh, .ci/docker-setup.sh) and their shared helper
scripts/common.sh, without Docker: syntax, --help, usage errors (exit 2 with the synopsis),
--flag=VALUE, clean-up on exit and signals, and export.sh's model tarball with the bundle check
(python -m drac_algo.bundle check) on a valid and a broken bundle.

Every test starts bash (a subprocess), hence slow; none needs Docker or the network: the
scripts parse their arguments and check the bundle before they look for a Docker engine.
"""

import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers import copy_container_bundle

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "build.sh",
    "export.sh",
    "test.sh",
    ".ci/docker-setup.sh",
    "scripts/gpu-check.sh",
    "scripts/bench-ranks.sh",
]
FIXTURE = REPO / "test/container/model"
PLATFORM = REPO / "test/container/platform-sockets.json"

pytestmark = pytest.mark.slow


def run(args, **kwargs):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", *map(str, args)], capture_output=True, text=True, timeout=120, env=env, **kwargs
    )


@pytest.mark.parametrize("script", [*SCRIPTS, "scripts/common.sh"])
def test_syntax(script):
    done = run(["-n", REPO / script])
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_sources_the_helper_and_holds_no_python(script):
    text = (REPO / script).read_text()
    assert re.search(r'^source .*/scripts/common\.sh" [a-z-]+$', text, re.M), script
    # Python in a shell string: `python -c '...'` or the import lines of one.
    python_lines = [
        line
        for line in text.splitlines()
        if re.search(r"-c\s+['\"](import|from)\b|^\s*(from\s+\S+\s+)?import\s+\w", line)
    ]
    assert python_lines == []
    # One EXIT trap, the helper's: a script's own would replace it.
    assert not re.search(r"^\s*trap\s", text, re.M)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_header(script):
    done = run([REPO / script, "--help"])
    assert done.returncode == 0, done.stderr
    header = (REPO / script).read_text().splitlines()[1]
    assert done.stdout.splitlines()[0] == header
    assert done.stderr == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_is_a_usage_error(script):
    path = REPO / script
    done = run([path, "--no-such-flag"])
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0].startswith("usage: ")
    assert path.name in lines[0]
    assert "error: unknown argument '--no-such-flag'" in lines[-1]
    assert f"{path} --help lists the options" in lines[-1]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build.sh", "--tag"], "[build] error: --tag needs a value"),
        (["build.sh", "--base", "--offline"], "--base needs a value; found the option '--offline'"),
        (["build.sh", "--tag="], "[build] error: --tag needs a value"),
        (["build.sh", "--offline=yes"], "--offline takes no value; found '--offline=yes'"),
        (["export.sh", "--bundle"], "[export] error: --bundle needs a folder"),
        (["export.sh", "--image-only", "--model-only"], "exclude each other"),
        (["export.sh", "a", "b"], "two bundle folders given: 'a' and 'b'"),
        (["export.sh", "--image-only", "--platform", "p.json"], "not with --image-only"),
        (["test.sh", "--gpus=some"], "[test] error: --gpus some: expected auto, all or none"),
        (["test.sh", "--gpus"], "[test] error: --gpus needs auto, all or none"),
        (["test.sh", "--no-build", "--base=x"], "--no-build excludes the build options --base x"),
        ([".ci/docker-setup.sh", "--no-base=1"], "[docker-setup] error: --no-base takes no value"),
    ],
)
def test_bad_values_are_usage_errors(args, message):
    done = run([REPO / args[0], *args[1:]])
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usage: ")
    assert message in done.stderr


FAKE_DOCKER = """#!/usr/bin/env bash
# Records every call; answers info, image inspect (size, id) and save (a few bytes).
echo "$*" >>"$DOCKER_CALLS"
case "$1 $2" in
    "info "*) [[ $* == *DockerRootDir* ]] && echo /nonexistent; exit 0 ;;
    "image inspect")
        [[ $* == *Size* ]] && echo 1000
        [[ $* == *Id* ]] && echo sha256:0123456789abcdef
        exit 0 ;;
    "save "*) echo "layers of $2" ;;
esac
"""


@pytest.mark.parametrize(
    ("tag", "saved"),
    [
        (None, "drac-algo:latest"),
        ("mine", "mine:latest"),
        ("mine:v2", "mine:v2"),
        ("registry.local:5000/team/mine", "registry.local:5000/team/mine:latest"),
        ("mine@sha256:" + "a" * 64, "mine@sha256:" + "a" * 64),
    ],
)
def test_export_saves_exactly_one_image(tmp_path, tag, saved):
    """`docker save NAME` would save every local tag of NAME: the export names one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    calls = tmp_path / "calls"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", DOCKER_CALLS=str(calls))
    args = ["export.sh", "--image-only", "--out", tmp_path / "dist"]
    done = subprocess.run(
        ["bash", REPO / args[0], *args[1:], *(["--tag", tag] if tag else [])],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (save,) = [line for line in calls.read_text().splitlines() if line.startswith("save ")]
    assert save == f"save {saved}"
    assert (tmp_path / "dist" / "drac-algo.tar.gz").stat().st_size > 0


def test_export_model_tarball_with_equals_forms_and_platform(tmp_path):
    out = tmp_path / "dist"
    done = run(
        [REPO / "export.sh", "--model-only", f"--bundle={FIXTURE}", f"--platform={PLATFORM}",
         "--out", out],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = done.stdout.splitlines()
    assert log[0].startswith(
        f"[export] {FIXTURE}: valid model bundle: classes 1 irma (1 member), 2 na (1 member), "
        "3 nv (1 member); 3 members; ONNX files: all 3 members; weights load into their "
        "networks, ONNX Runtime agrees with torch within "
    ), log[0]
    assert log[1].startswith(f"[export] platform.json from {PLATFORM}: output sockets irma=drac-")
    with tarfile.open(out / "model.tar.gz") as tar:
        names = sorted(tar.getnames())
        platform = tar.extractfile("./platform.json").read()
    expected = sorted(["."] + [f"./{p.name}" for p in FIXTURE.iterdir()] + ["./platform.json"])
    assert names == expected
    assert platform == PLATFORM.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["model.tar.gz"]  # no temporary left


def test_export_refuses_a_broken_bundle_and_leaves_nothing(tmp_path):
    model = copy_container_bundle(tmp_path / "model")
    with open(model / "na_fold0-seed0.pt", "ab") as fh:
        fh.write(b"\0")
    out = tmp_path / "dist"
    done = run([REPO / "export.sh", "--model-only", model, "--out", out])
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"[export] error: model bundle {model} is incomplete or inconsistent:"
    )
    assert "class 2: member file na_fold0-seed0.pt fails its sha256 check" in done.stderr
    assert list(out.iterdir()) == []

    (model / "manifest.json").unlink()
    done = run([REPO / "export.sh", "--model-only", model, "--out", out])
    assert done.returncode == 1
    assert f"[export] error: {model} holds no manifest.json; expected a model bundle" in (
        done.stderr
    )


def test_export_names_a_bad_platform_file(tmp_path):
    bad = tmp_path / "sockets.json"
    bad.write_text('{"output_sockets": {"irma": "Bad Slug"}}')
    done = run([REPO / "export.sh", "--model-only", FIXTURE, "--platform", bad, "--out", tmp_path])
    assert done.returncode == 1
    assert done.stderr.startswith(f"[export] error: {bad}: socket slug 'Bad Slug'")
    assert not (tmp_path / "model.tar.gz").exists()


def test_build_checks_the_bundle_before_docker(tmp_path):
    model = copy_container_bundle(tmp_path / "model")
    (model / "nv_fold0-seed0.onnx").unlink()
    done = run([REPO / "build.sh", f"--bundle={model}"])
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"[build] error: model bundle {model} is incomplete or inconsistent:"
    )
    assert "class 3: member file nv_fold0-seed0.onnx missing" in done.stderr
    assert "docker" not in done.stderr


def test_bundle_check_without_a_usable_python_warns_and_checks_the_manifest(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named torch' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake))
    done = subprocess.run(
        ["bash", REPO / "export.sh", "--model-only", FIXTURE, "--out", tmp_path],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.tar.gz").is_file()
    assert "[export] warning: " in done.stdout
    assert "cannot run 'python -m drac_algo.bundle check' (exit 1: No module named torch)" in (
        done.stdout
    )


def helper_script(tmp_path, body):
    script = tmp_path / "script.sh"
    script.write_text(
        "#!/usr/bin/env bash\n# A test script.\n#\n#   script.sh [--name NAME]\n#\n"
        f'source "{REPO}/scripts/common.sh" t\n{body}\n'
    )
    return script


def test_helper_cleans_up_on_error_and_keeps_the_status(tmp_path):
    scratch = tmp_path / "scratch"
    script = helper_script(
        tmp_path,
        f'mkdir "{scratch}"; remove_on_exit "{scratch}"\n'
        'said() { echo "cleanup ran"; }; on_exit said\n'
        'false\necho "not reached"',
    )
    done = run([script])
    assert done.returncode == 1
    assert done.stdout == "cleanup ran\n"
    assert not scratch.exists()


def test_helper_parses_both_forms_and_dies_with_its_tag(tmp_path):
    script = helper_script(
        tmp_path,
        'name=\nwhile [[ $# -gt 0 ]]; do\n    opt_next "$@"\n    case $OPT in\n'
        "        --name) opt_value name ;;\n        *) opt_unknown ;;\n    esac\n"
        '    shift "$OPT_SHIFT"\ndone\nlog "name [$name]"\ndie "stop"',
    )
    for args in (["--name", "a=b c"], ["--name=a=b c"]):
        done = run([script, *args])
        assert done.returncode == 1
        assert done.stdout == "[t] name [a=b c]\n"
        assert done.stderr == "[t] error: stop\n"
    done = run([script, "x"])
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "usage: script.sh [--name NAME]"


def test_helper_cleans_up_on_sigterm(tmp_path):
    scratch = tmp_path / "scratch"
    script = helper_script(
        tmp_path,
        f'mkdir "{scratch}"; remove_on_exit "{scratch}"\n'
        f'sleep 60 & echo $! > "{tmp_path}/sleep.pid"\nwait',
    )
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "sleep.pid").exists() or not scratch.exists():
            assert time.monotonic() < deadline, "the script did not start"
            time.sleep(0.05)
        time.sleep(0.1)  # past the pid file's write, into `wait`
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert not scratch.exists()
    finally:
        proc.kill()
        sleeper = (tmp_path / "sleep.pid").read_text().strip()
        if sleeper:
            subprocess.run(["kill", sleeper], capture_output=True)


# --- scripts/loaded_libraries.py ---------------------------------------------------------------


def _loaded_libraries(tmp_path, *runs):
    args = [sys.executable, REPO / "scripts/loaded_libraries.py", "--out", tmp_path / "libs.md"]
    for i, extra in enumerate(runs):
        args += ["--", "--bundle", FIXTURE, "--output", tmp_path / f"out{i}", "--tta", "none"]
        args += extra
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


def test_loaded_libraries_attributes_what_process_py_maps(tmp_path):
    batch = ["--input", REPO / "test/container/inputs/batch"]
    # Both runs on ONNX Runtime, on every CPU: "auto" alone is bf16 on a CPU with AVX512-BF16
    # or AMX, which torch runs (and then torchvision is rightly mapped).
    done = _loaded_libraries(
        tmp_path, [*batch, "--backend", "onnxruntime"], [*batch, "--precision", "fp32"]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "libs.md").read_text()
    assert text.startswith("process.py runs: 2, exit status 0, 0\n")
    rows = dict(re.findall(r"^\| ([\w.-]+) \| \d+ MB \| (.+) \|$", text, re.M))
    assert rows["torch"] != "**none**" and rows["numpy"] != "**none**"
    # The ONNX Runtime path on the CPU never builds a network in torch.
    assert rows.get("torchvision", "**none**") == "**none**"
    assert "| never mapped (over 10 MB) | distribution | size |" in text


def test_loaded_libraries_fails_when_a_run_fails(tmp_path):
    done = _loaded_libraries(tmp_path, ["--input", tmp_path / "missing"])
    assert done.returncode == 1
    assert (tmp_path / "libs.md").read_text().startswith("process.py runs: 1, exit status 2\n")
    usage = subprocess.run(
        [sys.executable, REPO / "scripts/loaded_libraries.py"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "usage:" in usage.stderr
