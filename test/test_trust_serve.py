"""Issue 21, the serving side: no run of ``process.py`` ends with a wrong result and exit status
0, or with a broken output folder.

- A ``--continue`` record names its input (size, sha256, decoded shape): a changed input is
  recomputed, and a resumed run refuses the stacks a fresh run refuses.
- One writer per output folder: a second run into it is refused at once and touches nothing;
  the lock dies with its process (``kill -9``).
- ``--continue`` converges to exactly what a plain run writes.
- No run writes through a symbolic link inside its output folder.

The tiny bundle is conftest's ``tiny_bundle``; the helpers are :mod:`helpers`'.
"""

import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import (
    REPO,
    SIZE,
    SLUGS,
    counting_predictions,
    gray,
    invoke,
    ok,
    read_png_mask,
    rejected,
    results_of,
    tree,
    write_job,
    write_png,
)

from drac_algo.common.classes import LESION_CLASSES

LOCK = ".drac-process.lock"
IRMA = LESION_CLASSES[0].folder
NA = LESION_CLASSES[1].folder


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def outputs(folder):
    """What a run leaves that a plain run would also write: :func:`helpers.tree` less the
    ``--continue`` records (``cases/``, the resumed run's own bookkeeping)."""
    return [rel for rel in tree(folder) if not rel.startswith("cases/")]


def same_outputs(resumed, fresh):
    """The two folders hold the same outputs; masks, overlays, maps and stacks byte for byte."""
    assert outputs(resumed) == outputs(fresh)
    for rel in outputs(fresh):
        if rel.endswith((".png", ".nii.gz", ".npz")):
            assert (resumed / rel).read_bytes() == (fresh / rel).read_bytes(), rel
    a, b = results_of(resumed), results_of(fresh)
    assert [c["case"] for c in a["cases"]] == [c["case"] for c in b["cases"]]
    for x, y in zip(a["cases"], b["cases"], strict=True):
        assert {**x, "seconds": None} == {**y, "seconds": None}
    assert a["classes"] == b["classes"] and a["submission"] == b["submission"]


# --- 1. A case's identity includes its input ------------------------------------------------


@pytest.mark.slow
def test_continue_recomputes_a_case_whose_input_changed_and_says_why(
    tiny_bundle, tmp_path, monkeypatch
):
    images = tmp_path / "images"
    for seed in (86, 90, 285):
        write_png(images / f"{seed:03d}.png", gray(seed))
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "none")
    out = tmp_path / "out"
    ok(invoke(*args, "--output", out, "--continue"))
    write_png(images / "090.png", gray(9090))  # another image under the same name
    (out / "cases" / "285.json").unlink()
    ran = counting_predictions(monkeypatch)
    result = ok(invoke(*args, "--output", out, "--continue"))
    assert ran == ["090.png", "285.png"]
    assert "090: recomputed, its input 090.png changed since the case was written" in (
        result.stderr
    )
    assert "285: recomputed, no record cases/285.json" in result.stderr
    assert "--continue: 1 case(s) complete, 2 to run" in result.stderr
    fresh = tmp_path / "fresh"
    ok(invoke(*args, "--output", fresh))
    same_outputs(out, fresh)
    data = (images / "090.png").read_bytes()
    assert json.loads((out / "cases" / "090.json").read_text())["input"] == {
        "file": "090.png",
        "bytes": len(data),
        "sha256": sha256(data),
        "shape": [SIZE, SIZE],
    }


@pytest.mark.slow
def test_a_resumed_run_refuses_the_stacks_a_fresh_run_refuses(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    for seed in (86, 90, 285):
        write_png(images / f"{seed:03d}.png", gray(seed))
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "none")
    out = tmp_path / "out"
    ok(invoke(*args, "--output", out, "--continue"))
    assert (out / "1.nii.gz").is_file()
    write_png(images / "090.png", gray(90, (SIZE - 8, SIZE)))  # shrunk, same name
    fresh = tmp_path / "fresh"
    refused = rejected(invoke(*args, "--output", fresh), "images differ in size")
    resumed = rejected(invoke(*args, "--output", out, "--continue"), "images differ in size")
    last = [stderr.strip().splitlines()[-1] for stderr in (refused, resumed)]
    assert last[1] == last[0].replace(str(fresh), str(out))
    assert not any(rel.endswith(".nii.gz") for rel in tree(out))
    assert read_png_mask(out / "masks" / IRMA / "090.png").shape == (SIZE - 8, SIZE)
    same_outputs(out, fresh)


# --- 2. One writer per output folder ----------------------------------------------------------


def test_a_run_into_a_folder_another_run_writes_is_refused_and_touches_nothing(
    tiny_bundle, tmp_path
):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    # The other run, mid-way: its staged masks, its log, the lock it holds.
    (out / ".masks.k3j.partial").mkdir(parents=True)
    (out / ".masks.k3j.partial" / "x").write_text("in progress")
    (out / "process.log").write_text("the other run's log\n")
    with open(out / LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps({"pid": 4242, "started": "2025-01-02T03:04:05+00:00"}))
        held.flush()
        before = {rel: (out / rel).read_bytes() for rel in tree(out)}
        before_log = (out / "process.log").read_bytes()
        for extra in ((), ("--continue",)):
            stderr = rejected(
                invoke("--input", images, "--output", out, "--bundle", tiny_bundle, *extra)
            )
            assert stderr.strip().splitlines()[-1] == (
                "error: another process.py run (pid 4242, started 2025-01-02T03:04:05+00:00) "
                f"is writing into {out}"
            )
            assert {rel: (out / rel).read_bytes() for rel in tree(out)} == before
            assert (out / "process.log").read_bytes() == before_log


def test_a_job_into_an_output_folder_another_run_writes_is_refused(tiny_bundle, tmp_path):
    job = write_job(tmp_path / "input")
    out = tmp_path / "output"
    out.mkdir()
    with open(out / LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps({"pid": 4242, "started": "2025-01-02T03:04:05+00:00"}))
        held.flush()
        rejected(
            invoke("--input", job, "--output", out, "--bundle", tiny_bundle),
            "error: another process.py run (pid 4242, started 2025-01-02T03:04:05+00:00) is "
            f"writing into {out}\n",
        )
    assert sorted(p.name for p in out.iterdir()) == [LOCK]


def _popen_run(images, out, tiny_bundle):
    """``process.py`` in a process of its own: two views per case, one thread (the test
    machine's cores are shared)."""
    command = [sys.executable, "process.py", "--input", images, "--output", out]
    command += ["--bundle", tiny_bundle, "--tta", "flips", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _wait_mid_run(proc, out):
    """Until ``proc`` has written a few cases into its staged masks folder."""
    deadline = time.monotonic() + 120
    while not any(len(list(p.rglob("*.png"))) >= 3 for p in out.glob(".masks.*.partial")):
        assert proc.poll() is None, "the run ended before it could be caught mid-way"
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_two_processes_into_one_folder_the_second_is_refused(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    names = [f"{i:03d}" for i in range(40)]
    for i, name in enumerate(names):
        write_png(images / f"{name}.png", gray(i))
    out = tmp_path / "out"
    first = _popen_run(images, out, tiny_bundle)
    try:
        _wait_mid_run(first, out)
        first.send_signal(signal.SIGSTOP)  # held mid-run, whatever the machine's speed
        second = _popen_run(images, out, tiny_bundle)
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 2, stderr[-2000:]
        assert re.search(
            rf"^error: another process\.py run \(pid {first.pid}, started [0-9T:+-]+\) is "
            rf"writing into {re.escape(str(out))}$",
            stderr,
            re.M,
        ), stderr[-2000:]
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert "half-written" not in stderr
    results = results_of(out)
    assert [c["case"] for c in results["cases"]] == names
    assert results["submission"]["written"]
    for c in LESION_CLASSES:
        assert sorted(p.stem for p in (out / "masks" / c.folder).glob("*.png")) == names
    assert (out / "masks" / ".drac-algo-output").is_file()
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    assert not (out / LOCK).exists()  # released with the run


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_no_lock_that_refuses_the_next(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    for i in range(40):
        write_png(images / f"{i:03d}.png", gray(i))
    out = tmp_path / "out"
    first = _popen_run(images, out, tiny_bundle)
    _wait_mid_run(first, out)
    first.kill()
    first.communicate(timeout=60)
    assert (out / LOCK).is_file()  # the file stays; the kernel dropped the lock
    result = ok(
        invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none")
    )
    assert "half-written output(s) of an interrupted earlier run" in result.stderr
    assert len(results_of(out)["cases"]) == 40
    assert not (out / LOCK).exists()


def test_the_lock_is_held_for_the_run_and_released_after(tiny_bundle, tmp_path, monkeypatch):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    import drac_algo.serve.pipeline as pipeline

    seen = {}
    original = pipeline.load_predictor

    def load_predictor(config, classes):
        # Mid-run: the lock file names this process, and a second taker is refused.
        seen["holder"] = json.loads((out / LOCK).read_text())
        with open(out / LOCK) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return original(config, classes)

    monkeypatch.setattr(pipeline, "load_predictor", load_predictor)
    ok(invoke("--input", images, "--output", out, "--bundle", tiny_bundle, "--tta", "none"))
    assert seen["holder"]["pid"] == os.getpid()
    assert not (out / LOCK).exists()


# --- 3. --continue converges to what a plain run writes ----------------------------------------


@pytest.mark.slow
def test_continue_after_changes_writes_exactly_what_a_plain_run_writes(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    for seed in (86, 90, 285, 1200):
        write_png(images / f"{seed:03d}.png", gray(seed))
    args = ("--input", images, "--bundle", tiny_bundle, "--tta", "none")
    out = tmp_path / "out"
    ok(invoke(*args, "--output", out, "--save-probabilities"))  # a plain run first: no records
    (images / "285.png").unlink()  # a case gone from the input
    write_png(images / "090.png", gray(9090))  # a case changed
    steps = [("--classes", "irma"), (), ("--save-probabilities",), ("--classes", "nv,na")]
    for number, extra in enumerate(steps):
        ok(invoke(*args, "--output", out, "--continue", *extra))
        fresh = tmp_path / f"fresh{number}"
        ok(invoke(*args, "--output", fresh, *extra))
        same_outputs(out, fresh)
    # A case gone after a --continue run: its record goes with its files.
    (images / "1200.png").unlink()
    ok(invoke(*args, "--output", out, "--continue", "--classes", "nv,na"))
    ok(invoke(*args, "--output", fresh, "--classes", "nv,na"))
    same_outputs(out, fresh)
    assert not (out / "masks" / IRMA).exists() and (out / "masks" / NA).is_dir()
    assert sorted(p.name for p in (out / "cases").iterdir()) == [
        ".drac-algo-output",
        "086.json",
        "090.json",
    ]


# --- 7. No writes through a symbolic link in the output folder --------------------------------

LINKED = [
    "process.log",
    "results.json",
    "1.nii.gz",
    "overlays",
    "cases",
    f"masks/{NA}",
    f"masks/{NA}/086.png",
    "probabilities",
]


@pytest.mark.parametrize("resume", [False, True], ids=["plain", "continue"])
@pytest.mark.parametrize("where", LINKED)
def test_a_symlink_in_the_output_folder_is_refused(tiny_bundle, tmp_path, where, resume):
    images = tmp_path / "images"
    write_png(images / "086.png", gray(86))
    out = tmp_path / "out"
    for folder in ("masks", f"masks/{NA}", "overlays", "cases"):
        if folder == where:
            continue
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / folder / ".drac-algo-output").write_text("")
    outside = tmp_path / "outside"
    if where.endswith((".log", ".json", ".gz", ".png")):
        outside.write_text("not the run's\n")
    else:
        outside.mkdir()
        (outside / "keep.txt").write_text("not the run's\n")
    (out / where).parent.mkdir(parents=True, exist_ok=True)
    (out / where).symlink_to(outside, target_is_directory=outside.is_dir())
    before = tree(out)
    outside_before = sorted(p.name for p in outside.iterdir()) if outside.is_dir() else None
    extra = ("--continue", "--save-probabilities") if resume else ("--save-probabilities",)
    stderr = rejected(invoke("--input", images, "--output", out, "--bundle", tiny_bundle, *extra))
    assert stderr.strip().splitlines()[-1] == (
        f"error: {out / where} is a symbolic link (to {outside}): a run writes only inside its "
        "output folder and never through a link; remove the link or choose another --output"
    )
    assert (out / where).is_symlink() and tree(out) == before
    if outside.is_dir():
        assert sorted(p.name for p in outside.iterdir()) == outside_before
    else:
        assert outside.read_text() == "not the run's\n"


def test_a_symlinked_socket_folder_of_a_job_is_refused(tiny_bundle, tmp_path):
    job = write_job(tmp_path / "input")
    out = tmp_path / "output"
    outside = tmp_path / "outside"
    outside.mkdir()
    link = out / "images" / SLUGS[2]
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    rejected(
        invoke("--input", job, "--output", out, "--bundle", tiny_bundle, "--tta", "none"),
        f"error: {link} is a symbolic link (to {outside})",
    )
    assert list(outside.iterdir()) == [] and not (out / "process.log").exists()
