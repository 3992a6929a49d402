"""Scale-out inference (issue 26): ``process.py --shard K/N`` and ``--merge OUT``, and
``torchrun --nproc_per_node=N -m process``, on the tiny bundle and phantom images.

What must hold: N shards or N ranks write the same masks, overlays and stacks, byte for byte,
as one process; each case has one writer (shards hold the folder's lock shared, each shard its
own lock exclusive, the assembler the folder's lock exclusive); a killed shard's records are
completed by running it again; a merge with a shard missing is refused naming its cases; a
Grand Challenge job is never sharded."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    REPO,
    gray,
    invoke,
    ok,
    rejected,
    results_of,
    torchrun_environment,
    tree,
    write_job,
    write_png,
)

from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import FolderBusy, FolderLock
from drac_algo.serve.shards import assign, parse_shard

LOCK = ".drac-process.lock"


def phantom_images(folder, count):
    names = [f"{i:03d}" for i in range(1, count + 1)]
    for i, name in enumerate(names):
        write_png(folder / f"{name}.png", gray(i))
    return names


def plain_outputs(folder):
    """What a single plain run writes: :func:`helpers.tree` less the records and summaries."""
    return [rel for rel in tree(folder) if not rel.startswith(("cases/", "shards/"))]


def same_as_single(out, single):
    """``out`` holds a single run's files; masks, overlays and stacks byte for byte."""
    assert plain_outputs(out) == plain_outputs(single)
    compared = [rel for rel in plain_outputs(single) if rel.endswith((".png", ".nii.gz"))]
    assert any(rel.endswith(".nii.gz") for rel in compared)
    for rel in compared:
        assert (out / rel).read_bytes() == (single / rel).read_bytes(), rel
    a, b = results_of(out), results_of(single)
    assert [c["case"] for c in a["cases"]] == [c["case"] for c in b["cases"]]
    for x, y in zip(a["cases"], b["cases"], strict=True):
        assert {**x, "seconds": None} == {**y, "seconds": None}
    assert a["classes"] == b["classes"] and a["submission"] == b["submission"]


# --- the K/N syntax and the assignment ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2", "expected K/N (shard K of N, e.g. 2/3), found '2'"),
        ("a/3", "expected K/N (shard K of N, e.g. 2/3), found 'a/3'"),
        ("0/3", "expected K/N with 1 <= K <= N (shard K of N, K counted from 1), found '0/3'"),
        ("4/3", "expected K/N with 1 <= K <= N (shard K of N, K counted from 1), found '4/3'"),
        ("1/0", "expected K/N with 1 <= K <= N (shard K of N, K counted from 1), found '1/0'"),
    ],
)
def test_a_bad_shard_spec_is_refused_before_anything_is_written(
    tiny_bundle, tmp_path, value, message
):
    images = tmp_path / "images"
    phantom_images(images, 1)
    out = tmp_path / "out"
    result = invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--shard", value)
    rejected(result, f"error: --shard: {message}")
    assert not out.exists()
    assert parse_shard(" 2 / 3 ").label == "2/3"


def test_the_assignment_balances_sizes_and_is_the_same_everywhere(tmp_path):
    paths = [tmp_path / f"{i:03d}.png" for i in range(7)]
    # Equal sizes: round robin in case order.
    assert assign(paths, 3, [1] * 7) == [1, 2, 3, 1, 2, 3, 1]
    # One large image gets a shard to itself; the rest share the others, heaviest first.
    weights = [1, 1, 1, 1, 16, 1, 1]
    table = assign(paths, 2, weights)
    assert table[4] == 1 and table.count(1) == 1
    assert assign(paths, 2, weights) == table  # deterministic
    loads = [sum(w for w, k in zip(weights, table, strict=True) if k == s) for s in (1, 2)]
    assert loads == [16, 6]
    # From the files' headers: a 4x larger image weighs 4x.
    write_png(paths[0], gray(0, (80, 80)))
    for p in paths[1:5]:
        write_png(p, gray(1))
    assert assign(paths[:5], 2) == [1, 2, 2, 2, 2]


# --- locks: shared for shards, exclusive for one shard, a plain run and the merge -------------


def test_the_folder_lock_taken_shared(tmp_path):
    first = FolderLock(tmp_path, ".lock").acquire(shared=True, shards=3)
    second = FolderLock(tmp_path, ".lock").acquire(shared=True, shards=2)
    # The second shared taker reads what the first wrote; it does not overwrite it.
    assert second.holder["shards"] == 3 and second.holder["pid"] == os.getpid()
    with pytest.raises(FolderBusy) as busy:
        FolderLock(tmp_path, ".lock").acquire()
    assert busy.value.holder["shards"] == 3
    first.release()
    assert (tmp_path / ".lock").exists()  # the second still holds it
    second.release()
    assert not (tmp_path / ".lock").exists()
    with FolderLock(tmp_path, ".lock"), pytest.raises(FolderBusy):
        FolderLock(tmp_path, ".lock").acquire(shared=True)


def test_shared_takers_starting_together_wait_out_each_others_exclusive_moment(tmp_path):
    """torchrun starts its ranks at once: the first shared taker holds the file exclusive while
    it writes it, and the second must not read that as a plain run (CI saw rank 0 refused by
    rank 1 this way). A plain run's exclusive lock still refuses a shared taker at once."""
    lock = tmp_path / ".lock"
    first = _hold(lock, {"pid": 1, "shared": True, "shards": 2})  # mid-write, not downgraded
    downgraded = threading.Timer(0.3, fcntl.flock, (first, fcntl.LOCK_SH))
    downgraded.start()
    started = time.monotonic()
    second = FolderLock(tmp_path, ".lock").acquire(shared=True, shards=2)
    assert time.monotonic() - started >= 0.25
    assert second.holder["shards"] == 2 and second.holder["pid"] == 1
    downgraded.join()
    second.release()
    first.close()
    lock.unlink()
    plain = _hold(lock, {"pid": 1, "program": "process.py"})
    started = time.monotonic()
    with pytest.raises(FolderBusy) as busy:
        FolderLock(tmp_path, ".lock").acquire(shared=True, shards=2)
    assert busy.value.holder["program"] == "process.py"
    assert time.monotonic() - started < FolderLock.SHARED_WAIT
    plain.close()


def _hold(path, content):
    held = open(path, "a+")  # noqa: SIM115 (held across the test)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write(json.dumps(content))
    held.flush()
    return held


def test_a_shard_already_running_or_split_otherwise_is_refused(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    phantom_images(images, 2)
    out = tmp_path / "out"
    out.mkdir()
    args = ("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none")
    # The same K at once: refused (the second copy would write the same cases).
    with _hold(out / ".drac-shard-1-of-2.lock", {"pid": 4242, "started": "T0"}):
        rejected(
            invoke(*args, "--shard", "1/2"),
            f"error: shard 1/2 is already running into {out} (pid 4242, started T0): one "
            "writer per case",
        )
    assert sorted(p.name for p in out.iterdir()) == [".drac-shard-1-of-2.lock"]
    # Shards of another split hold the folder (shared, as a shard does): refused.
    held = open(out / LOCK, "a+")  # noqa: SIM115
    held.write(json.dumps({"pid": 4343, "started": "T1", "shards": 3}))
    held.flush()
    fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
    with held:
        rejected(
            invoke(*args, "--shard", "1/2"),
            f"a run split into 3 shards (first pid 4343, started T1) is writing into {out}; "
            "--shard 1/2 splits the cases 2 ways",
        )
        # A plain run and a merge are refused while shards hold it, naming them.
        rejected(invoke(*args), "error: a run split into 3 shards (first pid 4343")
        rejected(invoke("--merge", out), "error: cannot merge yet: a run split into 3 shards")
    assert not (out / "masks").exists() and not (out / "process.log").exists()


def test_a_grand_challenge_job_is_never_sharded(tiny_bundle, tmp_path):
    job = write_job(tmp_path / "input")
    out = tmp_path / "output"
    rejected(
        invoke("--input", job, "--output", out, "--bundle", tiny_bundle, "--shard", "1/2"),
        "error: --shard 1/2: ",
        "holds a Grand Challenge job (inputs.json), which is one image run in one process",
    )
    assert not out.exists() or not any(out.iterdir())


def test_merge_needs_shards_and_goes_alone(tmp_path):
    rejected(invoke("--merge", tmp_path), "no shard summaries (shards/K-of-N.json)")
    rejected(invoke("--merge", tmp_path / "nowhere"), "--merge: output folder not found")
    rejected(invoke("--merge", tmp_path, "--shard", "1/2"), "expected it alone")


# --- shards and merge equal one run -----------------------------------------------------------


@pytest.mark.slow
def test_three_shards_and_merge_equal_a_single_run(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    names = phantom_images(images, 7)
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "flips")
    single = tmp_path / "single"
    ok(invoke(*args, "--output", single))
    out = tmp_path / "out"
    # Shards 1 and 3 run; shard 2 has not (a queued array task): nothing is assembled and the
    # merge is refused, naming shard 2's cases.
    for k in (1, 3):
        result = ok(invoke(*args, "--output", out, "--shard", f"{k}/3"))
        assert "not assembling yet" in result.stderr
    assert not (out / "results.json").exists() and not (out / "1.nii.gz").exists()
    mine = json.loads((out / "shards" / "1-of-3.json").read_text())["cases"]
    assert mine == [names[0], names[3], names[6]]  # equal sizes: round robin
    stderr = rejected(invoke("--merge", out), f"error: cannot merge {out}: 2 of 7 case(s)")
    assert (
        f"  shard 2/3 (no shards/2-of-3.json: never ran, or was stopped before its end): "
        f"{names[1]}, {names[4]}\n" in stderr
    )
    # The last shard to finish assembles, once.
    result = ok(invoke(*args, "--output", out, "--shard", "2/3"))
    assert "merged 3 shard(s): 7 case(s)" in result.stderr
    same_as_single(out, single)
    results = results_of(out)
    assert [s["shard"] for s in results["shards"]] == ["1/3", "2/3", "3/3"]
    assert results["continued"] == {"complete_before": 0, "run": 7}
    # --merge again: the same files.
    before = {
        rel: (out / rel).read_bytes()
        for rel in plain_outputs(out)
        if "results" not in rel and not rel.startswith("report")
    }
    ok(invoke("--merge", out))
    assert {rel: (out / rel).read_bytes() for rel in before} == before
    # A plain run afterwards takes the folder back: no records, no summaries.
    ok(invoke(*args, "--output", out))
    assert not (out / "shards").exists() and not (out / "cases").exists()
    same_as_single(out, single)


def test_no_report_holds_for_the_merge_of_shards_that_ran_with_it(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    phantom_images(images, 3)
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "none")
    out = tmp_path / "out"
    for k in (1, 2):
        ok(invoke(*args, "--output", out, "--shard", f"{k}/2", "--no-report"))
    assert results_of(out)["report"] is None and not (out / "report.html").exists()
    ok(invoke("--merge", out))  # the shards' own --no-report
    assert results_of(out)["report"] is None and not (out / "report.html").exists()
    # Shards with the report, then a merge asked for none: the earlier page goes too.
    again = tmp_path / "again"
    for k in (1, 2):
        ok(invoke(*args, "--output", again, "--shard", f"{k}/2"))
    assert results_of(again)["report"] == "report.html" and (again / "report.html").is_file()
    ok(invoke("--merge", again, "--no-report"))
    assert results_of(again)["report"] is None
    assert not (again / "report.html").exists() and not (again / "report").exists()
    # Shards that disagree about it are not one run.
    mixed = tmp_path / "mixed"
    ok(invoke(*args, "--output", mixed, "--shard", "1/2", "--no-report"))
    result = ok(invoke(*args, "--output", mixed, "--shard", "2/2"))
    assert "not assembled: the shards' summaries disagree on" in result.stderr
    assert not (mixed / "results.json").exists()
    rejected(invoke("--merge", mixed), "--no-submission or --no-report")


def _popen_shard(images, out, bundle, spec):
    command = [sys.executable, "process.py", "--input", images, "--output", out]
    command += ["--bundle", bundle, "--tta", "flips", "--device", "cpu", "--shard", spec]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_shard_run_again_completes_the_run(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    names = phantom_images(images, 30)
    out = tmp_path / "out"
    ok(
        invoke(
            "--input",
            images,
            "--output",
            out,
            "--bundle",
            tiny_bundle,
            "--tta",
            "flips",
            "--shard",
            "1/2",
        )
    )
    shard = _popen_shard(images, out, tiny_bundle, "2/2")
    deadline = time.monotonic() + 120
    while len(list((out / "cases").glob("*.json"))) < 15 + 3:
        assert shard.poll() is None, "the shard ended before it could be killed mid-way"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    shard.kill()
    shard.communicate(timeout=60)
    stderr = rejected(invoke("--merge", out), "shard 2/2 (did not finish (killed, or failed))")
    assert "shard 1/2" not in stderr
    # Records only: a kill mid-write leaves a hidden temporary (".086.json.*.partial.json").
    done = len([p for p in (out / "cases").glob("*.json") if not p.name.startswith(".")])
    # A single --continue run completes it too (in a copy): the shards' records are its own.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "flips")
    result = ok(invoke(*args, "--output", copy, "--continue"))
    assert f"--continue: {done} case(s) complete, {30 - done} to run" in result.stderr
    assert not (copy / "shards").exists() and not list(copy.glob(".drac-shard-*"))
    result = ok(
        invoke(
            "--input",
            images,
            "--output",
            out,
            "--bundle",
            tiny_bundle,
            "--tta",
            "flips",
            "--shard",
            "2/2",
        )
    )
    assert f"2/2: {done - 15} case(s) complete, {30 - done} to run" in result.stderr
    assert "merged 2 shard(s): 30 case(s)" in result.stderr
    assert [c["case"] for c in results_of(out)["cases"]] == names
    assert not list(out.glob(".drac-shard-*")) and not (out / LOCK).exists()
    single = tmp_path / "single"
    ok(invoke("--input", images, "--output", single, "--bundle", tiny_bundle, "--tta", "flips"))
    same_as_single(out, single)


# --- torchrun --------------------------------------------------------------------------------


def _torchrun(images, out, bundle, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "process", "--input", images, "--output", out]
    command += ["--bundle", bundle, "--tta", "flips", "--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(c) for c in command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_equal_a_single_run(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    phantom_images(images, 5)
    single = tmp_path / "single"
    ok(invoke("--input", images, "--output", single, "--bundle", tiny_bundle, "--tta", "flips"))
    out = tmp_path / "out"
    done = _torchrun(images, out, tiny_bundle)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all ranks: 5/5 cases" in done.stderr
    assert "merged 2 shard(s): 5 case(s)" in done.stderr
    same_as_single(out, single)
    shards = results_of(out)["shards"]
    assert [(s["shard"], s["launcher"], s["device"]) for s in shards] == [
        ("1/2", "torchrun", "cpu"),
        ("2/2", "torchrun", "cpu"),
    ]
    assert not (out / LOCK).exists()

    # A rank that fails is named by rank 0, and nothing is assembled: here rank 1's shard is
    # already running (its lock is held), so rank 1 is refused.
    out2 = tmp_path / "out2"
    out2.mkdir()
    with _hold(out2 / ".drac-shard-2-of-2.lock", {"pid": 4242, "started": "T0"}):
        failed = _torchrun(images, out2, tiny_bundle)
    assert failed.returncode != 0
    assert "error: 1 of 2 rank(s) failed, so nothing was assembled:" in failed.stderr
    assert "  rank 1 (shard 2/2 on " in failed.stderr
    assert "shard 2/2 is already running into" in failed.stderr
    assert not (out2 / "results.json").exists()
    # Run again: rank 0's cases are kept, rank 1's written, and the run assembled.
    again = _torchrun(images, out2, tiny_bundle)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1/2: 3 case(s) complete, 0 to run" in again.stderr
    same_as_single(out2, single)


def test_torchrun_refuses_a_fixed_gpu_and_shard(monkeypatch):
    from drac_algo.serve.ranks import rank_device

    with pytest.raises(DracInputError, match="each rank uses the GPU of its LOCAL_RANK"):
        rank_device("cuda:1", 0, 0)
    assert rank_device("cpu", 1, 1) == "cpu"
    torchrun_environment(monkeypatch)
    rejected(invoke("--shard", "1/2"), "--shard 1/2 under torchrun")


@pytest.mark.parametrize("before", ["absent", "empty", "ours"])
def test_a_shard_marking_its_folder_never_looks_foreign_to_another(tmp_path, monkeypatch, before):
    """Shards start side by side: while one creates ``shards/`` or ``masks/`` another checks
    that the folder is this program's. At every rename (the moments a file appears), the
    folder must be absent, empty, or hold the marker; a marker written into the folder after
    creating it left a moment with only a temporary inside (a torchrun rank was refused)."""
    from drac_algo.serve.outputs import OWNED_MARKER, check_replaceable
    from drac_algo.serve.shards import mark_owned

    folder = tmp_path / "out" / "shards"
    if before != "absent":
        folder.mkdir(parents=True)
    if before == "ours":
        (folder / OWNED_MARKER).write_text("earlier run\n")
        (folder / "1-of-2.json").write_text("{}")
    seen = []
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def checked(src, dst, *args, _real=real, **kwargs):
            check_replaceable(folder)  # what another shard does at this moment
            seen.append(Path(dst).name)
            return _real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, checked)
    mark_owned(folder)
    mark_owned(folder)  # the second shard: the folder is there, marked
    monkeypatch.undo()
    assert (folder / OWNED_MARKER).is_file()
    assert seen == ([] if before == "ours" else ["shards"])
    assert sorted(p.name for p in folder.parent.iterdir()) == ["shards"]  # no temporary left


def test_create_dir_holding_leaves_a_folder_that_holds_something_alone(tmp_path):
    from drac_algo.common.fsutil import create_dir_holding

    target = tmp_path / "masks"
    assert create_dir_holding(target, {"a.txt": "first\n"})
    assert not create_dir_holding(target, {"a.txt": "second\n", "b.txt": "x"})
    assert (target / "a.txt").read_text() == "first\n" and not (target / "b.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError):
        create_dir_holding(tmp_path / "file", {"a.txt": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "masks"]
