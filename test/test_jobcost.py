"""``python -m drac_algo.jobcost``: the --local runner end to end on a tiny bundle, a failing job,
the size parser, skipped sizes, the docker command line and the random-weight bundle. No timing
assertions (shared CI machines): only that the numbers are consistent with each other."""

import json
import shutil
import statistics

import pytest
from click.testing import CliRunner
from helpers import rejected

from drac_algo.bundle.store import load_bundle
from drac_algo.common.errors import DracInputError
from drac_algo.tools.jobcost import runners
from drac_algo.tools.jobcost.bundle import (
    QUICK_MODEL,
    cached_bundle,
    default_members_per_class,
    recipe_manifest,
)
from drac_algo.tools.jobcost.cli import main
from drac_algo.tools.jobcost.config import JobCostConfig, Size, parse_size, parse_sizes
from drac_algo.tools.jobcost.report import format_report
from drac_algo.tools.jobcost.run import job_numbers, summarise
from drac_algo.tools.jobcost.runners import DockerRunner, JobRun


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- end to end, --local ---


@pytest.mark.slow
def test_local_quick_run_writes_a_consistent_table_and_json(tmp_path, tiny_bundle):
    md, js = tmp_path / "job-cost.md", tmp_path / "job-cost.json"
    result = invoke(
        "--local", "--quick", "--bundle", tiny_bundle, "--sizes", "1:4g", "--jobs", "2",
        "--out", md, "--json", js,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    report = json.loads(js.read_text())
    assert report["format"] == "drac-algo-jobcost"
    assert report["runner"]["runner"] == "local"
    assert report["bundle"]["members_total"] == 3 and report["bundle"]["bytes"] > 0
    assert report["job"]["side"] == 256
    (size,) = report["sizes"]
    assert size["size"] == "1:4g" and len(size["jobs"]) == 2
    for job in size["jobs"]:
        assert job["exit_status"] == 0
        assert job["threads"] == 1  # OMP_NUM_THREADS from the size's CPUs
        for key in ("wall_s", "first_line_s", "startup_s", "bundle_check_s", "model_load_s",
                    "decode_s", "inference_s", "write_s", "total_s", "peak_rss_bytes"):  # fmt: skip
            assert job[key] > 0, key
        assert job["members_count"] == 3 and len(job["members"]) == 3
        assert job["member_min_s"] <= job["member_mean_s"] <= job["member_max_s"]
        assert job["members_total_s"] >= max(m["seconds"] for m in job["members"])
        assert job["inference_s"] < job["total_s"] < job["wall_s"]
        assert job["first_line_s"] < job["wall_s"]
        assert 0 < job["overhead_share"] < 1
        assert job["overhead_share"] == pytest.approx(
            (job["wall_s"] - job["inference_s"]) / job["wall_s"]
        )
    summary = size["summary"]
    walls = [job["wall_s"] for job in size["jobs"]]
    assert summary["wall_s"]["median"] == pytest.approx(statistics.median(walls))
    assert summary["wall_s"]["min"] == min(walls) and summary["wall_s"]["max"] == max(walls)
    assert summary["test_set"]["extrapolated"] is True
    assert summary["test_set"]["seconds"] == pytest.approx(65 * statistics.median(walls))

    table = md.read_text()
    assert table == result.stdout.split("wrote ")[0]
    assert "| size | wall per job | first log line | startup (imports) |" in table
    assert "| 1 vCPU / 4g (1 thread) |" in table
    assert "65 x the median wall time per job" in table and "not measured" in table
    assert "CPU: " in table and "Bundle: 3 members" in table


def test_a_size_with_more_cpus_than_the_host_is_reported_as_skipped(
    tmp_path, tiny_bundle, monkeypatch
):
    monkeypatch.setattr(runners, "usable_cpus", lambda: [0])
    js = tmp_path / "job-cost.json"
    result = invoke("--local", "--quick", "--bundle", tiny_bundle, "--sizes", "2:8g", "--json", js)
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    reason = "it asks for 2 CPUs and this process may use 1"
    assert reason in result.stderr  # the warning line, as it happens
    (size,) = json.loads(js.read_text())["sizes"]
    assert size["size"] == "2:8g" and reason in size["skipped"] and "jobs" not in size
    assert f"| 2 vCPU / 8g | skipped: {reason}" in result.stdout


def test_docker_skips_a_size_above_the_host_cpu_count(monkeypatch):
    monkeypatch.setattr(runners.os, "cpu_count", lambda: 2)
    runner = DockerRunner(JobCostConfig())
    assert runner.unavailable(parse_size("2:8g")) is None
    reason = runner.unavailable(parse_size("4:16g"))
    assert "asks for 4 CPUs and this host has 2" in reason
    assert "docker refuses --cpus above the host's CPU count" in reason


@pytest.mark.slow
def test_a_failing_job_stops_the_run_naming_it_and_writes_nothing(tmp_path, tiny_bundle):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "model")
    with open(bundle / "irma.pt", "ab") as f:
        f.write(b"corrupt")
    md, js = tmp_path / "job-cost.md", tmp_path / "job-cost.json"
    result = invoke(
        "--local", "--quick", "--bundle", bundle, "--sizes", "1:4g", "--out", md, "--json", js
    )
    stderr = rejected(
        result, "job 1 of 1 at size 1:4g (local) exited with status 2", "irma.pt", "sha256"
    )
    assert "last lines of its stderr" in stderr
    assert not md.exists() and not js.exists()
    assert "| size |" not in result.stdout


def test_a_bundle_folder_without_manifest_is_refused_before_any_job(tmp_path):
    (tmp_path / "model").mkdir()
    js = tmp_path / "job-cost.json"
    result = invoke("--local", "--bundle", tmp_path / "model", "--json", js)
    rejected(result, f"--bundle {tmp_path / 'model'}: no manifest.json there")
    assert not js.exists()


# --- sizes ---


def test_sizes_parse_as_docker_spells_them():
    assert parse_sizes("2:8g,4:16g") == (
        Size("2:8g", 2.0, "8g", 8 * 2**30),
        Size("4:16g", 4.0, "16g", 16 * 2**30),
    )
    assert parse_size(" 1.5:512M ") == Size("1.5:512m", 1.5, "512m", 512 * 2**20)
    assert parse_size("1.5:512m").threads == 2


@pytest.mark.parametrize(
    ("sizes", "found"),
    [("1:4g,2:8x", "'2:8x'"), ("2", "'2'"), ("0:8g", "'0:8g'"), ("2:0g", "'2:0g'"),
     ("two:8g", "'two:8g'"), ("2:8g:1", "'2:8g:1'"), (":8g", "':8g'"), ("1:4g,", "''"),
     ("", "nothing")],
)  # fmt: skip
def test_a_bad_size_names_the_format_expected_and_what_was_found(sizes, found):
    with pytest.raises(DracInputError) as raised:
        parse_sizes(sizes)
    message = str(raised.value)
    assert message.startswith("--sizes: expected CPUS:MEMORY items"), message
    assert "e.g. 2:8g,4:16g" in message
    assert message.endswith(f"; found {found}")


def test_a_bad_size_on_the_command_line_is_a_usage_error():
    stderr = rejected(invoke("--sizes", "2:8x"), "Invalid value for '--sizes'", "found '2:8x'")
    assert "CPUS:MEMORY" in stderr


def test_a_repeated_size_is_refused():
    with pytest.raises(DracInputError, match="2:8g repeated"):
        parse_sizes("2:8g,4:16g,2:8G")


# --- the docker command line ---


def test_the_docker_command_has_the_platform_restrictions_and_the_size_limits(tmp_path):
    runner = DockerRunner(JobCostConfig(image="drac-algo:x", gpus="none", process_args=("-v",)))
    argv = runner.command(
        parse_size("2:8g"), tmp_path / "model", tmp_path / "in", tmp_path / "out", "drac-jc-1"
    )
    line = " ".join(argv)
    assert argv[:3] == ["docker", "run", "--rm"]
    flags = ["--network none", "--cpus 2", "--memory 8g", "--memory-swap 8g", "--cap-drop ALL"]
    flags += ["--security-opt no-new-privileges", "--name drac-jc-1"]
    for flag in flags:
        assert flag in line, flag
    assert "--tmpfs /tmp:" in line
    assert f"--volume {tmp_path / 'in'}:/input:ro" in line
    assert f"--volume {tmp_path / 'model'}:/opt/ml/model:ro" in line
    assert f"--volume {tmp_path / 'out'}:/output " in line  # writable
    assert "--gpus" not in argv
    assert argv[-2:] == ["drac-algo:x", "-v"]  # the image, then process.py's arguments

    runner.use_gpus = True
    argv = runner.command(parse_size("4:16g"), tmp_path, tmp_path, tmp_path, "n")
    assert "--gpus all" in " ".join(argv) and "--cpus 4" in " ".join(argv)


def test_the_local_command_limits_threads_and_pins_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(runners, "usable_cpus", lambda: [3, 5, 7])
    runner = runners.LocalRunner(JobCostConfig(runner="local"))
    runner.taskset = "/usr/bin/taskset"
    argv, env = runner.command(parse_size("2:8g"), tmp_path, tmp_path / "in", tmp_path / "out")
    assert argv[:3] == ["/usr/bin/taskset", "-c", "3,5"]
    assert argv[4:6] == ["-m", "process"]
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"


# --- the numbers of one job ---


def results(**cold_start):
    return {
        "diagnostics": {
            "cold_start": {"startup_s": 1.5, "gpu_probe_s": 0.1, "bundle_check_s": 0.2,
                           "members": [{"file": "a.pt", "seconds": 0.3},
                                       {"file": "b.pt", "seconds": 0.5}], **cold_start},
            "stages": {"model_load_s": 1.0, "decode_s": 0.1, "inference_s": 6.0, "write_s": 0.2},
            "peak_rss_bytes": 2**30,
        },
        "timings": {"total_s": 7.5},
    }  # fmt: skip


def test_job_numbers_come_from_results_json_and_the_host_clock():
    job = job_numbers(JobRun(10.0, 0.8, "first", 0), results(), "job 1")
    assert job["wall_s"] == 10.0 and job["first_line_s"] == 0.8
    assert job["members_count"] == 2 and job["members_total_s"] == pytest.approx(0.8)
    assert job["member_min_s"] == 0.3 and job["member_max_s"] == 0.5
    assert job["member_mean_s"] == pytest.approx(0.4)
    assert job["overhead_share"] == pytest.approx(0.4)
    summary = summarise([job, {**job, "wall_s": 20.0}, {**job, "wall_s": 12.0}])
    assert summary["wall_s"] == {"median": 12.0, "min": 10.0, "max": 20.0}
    assert summary["test_set"]["seconds"] == pytest.approx(65 * 12.0)
    # Built several at once: the wall time of building them all, not the sum of their own.
    assert job_numbers(JobRun(10.0, 0.8, "first", 0), results(members_s=0.55), "j")[
        "members_total_s"
    ] == pytest.approx(0.55)


def test_results_without_the_cold_start_diagnostics_are_refused():
    old = results()
    del old["diagnostics"]["cold_start"]
    with pytest.raises(DracInputError) as raised:
        job_numbers(JobRun(10.0, 0.8, "first", 0), old, "job 1 of 1 at size 2:8g (docker)")
    message = str(raised.value)
    assert message.startswith("job 1 of 1 at size 2:8g (docker): its results.json lacks ")
    assert "diagnostics.cold_start.startup_s" in message and "rebuild" in message


# --- the random-weight bundle ---


def test_the_default_bundle_is_the_recipes_ensemble():
    assert default_members_per_class() == 5
    bundle = recipe_manifest(5, 1024)
    assert [len(bundle.classes[i].members) for i in (1, 2, 3)] == [5, 5, 5]
    irma, nv = bundle.classes[1].members, bundle.classes[3].members
    assert (irma[0].model.arch, irma[0].model.encoder, irma[0].model.attention) == (
        "unetplusplus",
        "resnet34",
        "cam-2sigmoid",
    )
    assert (nv[0].model.arch, nv[0].model.encoder) == ("unet", "resnet34")
    assert [m.file for m in irma] == [f"irma_fold{k}-seed0.pt" for k in range(5)]
    assert all(m.input_size == 1024 and m.tta == ("identity", "hflip") for m in irma + nv)


@pytest.mark.slow
def test_the_random_bundle_is_a_whole_bundle_and_cached(tmp_path):
    folder, reused = cached_bundle(tmp_path, 1, 0, 64, model_changes=dict(QUICK_MODEL))
    assert not reused
    bundle = load_bundle(folder)  # checksums, ONNX ties: as process.py loads it
    assert len(bundle.members()) == 3
    assert all(m.onnx is not None and m.onnx.tied for _, m in bundle.members())
    assert {m.model.encoder for _, m in bundle.members()} == {"resnet18"}
    again, reused = cached_bundle(tmp_path, 1, 0, 64, model_changes=dict(QUICK_MODEL))
    assert (again, reused) == (folder, True)


# --- docker without docker: the checks before any job, and the report's header ---


def fake_docker(tmp_path, monkeypatch, script: str) -> None:
    """A ``docker`` command on PATH that runs ``script`` (sh) with the arguments given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\n{script}\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{runners.os.environ['PATH']}")


def test_a_missing_image_is_refused_naming_it(tmp_path, monkeypatch):
    fake_docker(tmp_path, monkeypatch, 'echo "Error: No such image: $3" >&2; exit 1')
    js = tmp_path / "job-cost.json"
    result = invoke("--image", "drac-algo:nope", "--json", js)
    rejected(result, "--image drac-algo:nope: docker has no such image", "./build.sh")
    assert not js.exists()


def test_the_docker_header_names_the_image_and_the_command(tmp_path, monkeypatch):
    script = """case "$1 $2" in
  "image inspect") echo sha256:0123456789abcdef0123 ;;
  "info --format") echo '{"io.containerd.runc.v2":{},"nvidia":{}}' ;;
esac"""
    fake_docker(tmp_path, monkeypatch, script)
    runner = DockerRunner(JobCostConfig(sizes=parse_sizes("2:8g")))
    info = runner.prepare()
    assert info["image_id"] == "sha256:0123456789abcdef0123" and info["gpus"] == "all"
    assert "--cpus 2 --memory 8g" in info["command"] and "--gpus all" in info["command"]
    report = {
        "machine": {"cpu_model": "Some CPU", "cpu_features": ["avx2", "avx512f"], "cpus": 2,
                    "memory_bytes": 2**34, "load_average_1m": 0.5},
        "runner": info,
        "bundle": {"folder": "/b", "members": {"1": 5, "2": 5, "3": 5}, "members_total": 15,
                   "architectures": ["unet resnet34"], "input_sizes": [1024], "onnx": True,
                   "bytes": 2.9e9, "weights": "given (--bundle)"},
        "job": {"side": 1024, "seed": 0, "image_bytes": 5e5, "jobs_per_size": 1,
                "process_args": []},
        "sizes": [{"size": "2:8g", "cpus": 2.0, "memory": "8g", "memory_bytes": 8 * 2**30,
                   "skipped": "a reason"}],
    }  # fmt: skip
    text = format_report(report)
    assert "- CPU: Some CPU (2 CPUs on the host; avx2, avx512f)" in text
    assert "image `drac-algo` (sha256:0123456789ab), GPUs: all" in text
    assert "--network none" in text
    assert "Bundle: 15 members (class 1: 5, class 2: 5, class 3: 5;" in text
    assert "2.70 GiB on disk" in text
    assert "| 2 vCPU / 8g | skipped: a reason |" in text
