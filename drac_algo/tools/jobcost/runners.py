"""How one job runs, and what the host measures around it: ``docker run`` of the algorithm image
with the platform's restrictions and a size's CPU and memory limits (:class:`DockerRunner`), or
``python -m process`` from this checkout with the size's CPU count (:class:`LocalRunner`, for
machines without Docker and for CI). Both time the command from launch to exit and to its first
line on stderr (:func:`run_measured`)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from drac_algo.common.errors import DracInputError
from drac_algo.tools.jobcost.config import JobCostConfig, Size

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]  # process.py's folder
TAIL_LINES = 15  # of a failed job's stderr, in the error
# What test.sh adds to every run besides the size's limits: the platform's restrictions.
PLATFORM_OPTIONS = (
    "--network", "none",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
    "--pids-limit", "256",
    "--shm-size", "128m",
    "--tmpfs", "/tmp:rw,exec,nosuid,nodev,mode=1777",
)  # fmt: skip
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class JobFailed(DracInputError):
    """A job exited non-zero, ran out of time, or wrote no usable ``results.json``."""


@dataclass
class JobRun:
    """What the host saw of one job: seconds from launch to exit (``wall_s``) and to the first
    line on stderr (``first_line_s``; None if it printed none), that line, the exit status and
    the last lines of stderr."""

    wall_s: float
    first_line_s: float | None
    first_line: str | None
    returncode: int
    timed_out: bool = False
    stderr_tail: list[str] = field(default_factory=list)


def run_measured(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float,
    on_abort: list[str] | None = None,
    prefix: str = "",
) -> JobRun:
    """Run ``command`` (stdout discarded, stderr read line by line and logged at debug level
    with ``prefix``) and time it. Past ``timeout_s`` it is killed; if this process is
    interrupted, it is killed too; either way ``on_abort`` (e.g. ``docker rm -f NAME``: killing
    the docker client leaves its container running) runs after."""
    tail: list[str] = []
    first_line_s = first_line = None
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        text=True,
        errors="replace",
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    finished = False
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if first_line_s is None:
                first_line_s = time.perf_counter() - start
                first_line = line.rstrip("\n")
            tail.append(line.rstrip("\n"))
            del tail[:-TAIL_LINES]
            log.debug("%s%s", prefix, line.rstrip("\n"))
        returncode = proc.wait()
        wall_s = time.perf_counter() - start
        finished = not expired.is_set()
    finally:
        timer.cancel()
        if not finished:
            proc.kill()
            proc.wait()
            if on_abort:
                subprocess.run(on_abort, capture_output=True, check=False)
    return JobRun(wall_s, first_line_s, first_line, returncode, expired.is_set(), tail)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), ascending."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def host_cpus() -> int:
    """The host's CPU count: docker refuses ``--cpus`` above it."""
    return os.cpu_count() or 1


class LocalRunner:
    """``python -m process`` from this checkout, with the size's CPUs: ``OMP_NUM_THREADS`` (and
    MKL's, OpenBLAS's) set to its whole CPUs and, where ``taskset`` exists, the process pinned
    to that many of the CPUs this one may use. The memory limit is not enforced (no cgroup):
    the report compares the peak with it instead."""

    name = "local"

    def __init__(self, cfg: JobCostConfig) -> None:
        self.process_args = cfg.process_args
        self.timeout_s = cfg.timeout_s
        self.taskset = shutil.which("taskset")

    def prepare(self) -> dict:
        return {
            "runner": self.name,
            "command": f"{sys.executable} -m process (in {REPO})",
            "python": sys.executable,
            "checkout": str(REPO),
            "commit": _git_commit(REPO),
            "cpu_pinning": "taskset" if self.taskset else "none (no taskset: threads only)",
            "memory_limit": "not enforced (no container): compare the peak RSS with it",
        }

    def unavailable(self, size: Size) -> str | None:
        cpus = usable_cpus()
        if size.threads > len(cpus):
            return (
                f"it asks for {size.cpus:g} CPUs and this process may use {len(cpus)}: a local "
                "run cannot have more CPUs than the host gives it"
            )
        return None

    def command(
        self, size: Size, bundle: Path, input_dir: Path, output_dir: Path
    ) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "process", "--input", str(input_dir)]
        argv += ["--output", str(output_dir), "--bundle", str(bundle), *self.process_args]
        if self.taskset:
            chosen = usable_cpus()[: size.threads]
            argv = [self.taskset, "-c", ",".join(map(str, chosen)), *argv]
        env = {**os.environ, **{name: str(size.threads) for name in THREAD_VARIABLES}}
        return argv, env

    def run(
        self, size: Size, bundle: Path, input_dir: Path, output_dir: Path, index: int
    ) -> JobRun:
        argv, env = self.command(size, bundle, input_dir, output_dir)
        prefix = f"[{size.spec} job {index}] "
        return run_measured(argv, env=env, cwd=REPO, timeout_s=self.timeout_s, prefix=prefix)

    def cleanup(self, output_dir: Path) -> None:
        shutil.rmtree(output_dir, ignore_errors=True)


class DockerRunner:
    """``docker run`` of ``image`` as ``test.sh`` runs it (:data:`PLATFORM_OPTIONS`: no network,
    no capabilities, no new privileges, pids and /dev/shm limits, a tmpfs /tmp; ``--gpus all``
    where asked or, with ``auto``, where the engine has an NVIDIA runtime), read-only ``/input``,
    a fresh ``/output``, the bundle read-only at ``/opt/ml/model``, plus the size's ``--cpus``,
    ``--memory`` and ``--memory-swap`` (no swap beyond the limit). A fresh container per job."""

    name = "docker"

    def __init__(self, cfg: JobCostConfig) -> None:
        self.image = cfg.image
        self.sizes = cfg.sizes
        self.gpus = cfg.gpus
        self.process_args = cfg.process_args
        self.timeout_s = cfg.timeout_s
        self.use_gpus = cfg.gpus == "all"

    def prepare(self) -> dict:
        """Check that docker answers and has the image; resolve ``--gpus auto``."""
        if shutil.which("docker") is None:
            raise DracInputError(
                "no docker command on this machine; build and run the image where Docker is, "
                "or measure this checkout with --local"
            )
        inspect = subprocess.run(
            ["docker", "image", "inspect", self.image, "--format", "{{.Id}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if inspect.returncode != 0:
            raise DracInputError(
                f"--image {self.image}: docker has no such image ({inspect.stderr.strip()}); "
                "build it with ./build.sh (or name another with --image)"
            )
        if self.gpus == "auto":
            runtimes = subprocess.run(
                ["docker", "info", "--format", "{{json .Runtimes}}"],
                capture_output=True,
                text=True,
                check=False,
            )
            self.use_gpus = '"nvidia"' in runtimes.stdout
        return {
            "runner": self.name,
            "image": self.image,
            "image_id": inspect.stdout.strip(),
            "gpus": "all" if self.use_gpus else "none",
            # What a job runs, for the first size, with the paths named by their role.
            "command": " ".join(
                self.command(self.sizes[0], Path("BUNDLE"), Path("INPUT"), Path("OUTPUT"), "NAME")
            ),
        }

    def unavailable(self, size: Size) -> str | None:
        cpus = host_cpus()
        if size.cpus > cpus:
            return (
                f"it asks for {size.cpus:g} CPUs and this host has {cpus} "
                "(docker refuses --cpus above the host's CPU count)"
            )
        return None

    def command(
        self, size: Size, bundle: Path, input_dir: Path, output_dir: Path, name: str
    ) -> list[str]:
        argv = ["docker", "run", "--rm", "--name", name, *PLATFORM_OPTIONS]
        argv += ["--cpus", f"{size.cpus:g}", "--memory", size.memory, "--memory-swap", size.memory]
        if self.use_gpus:
            argv += ["--gpus", "all"]
        argv += [
            "--volume", f"{bundle}:/opt/ml/model:ro",
            "--volume", f"{input_dir}:/input:ro",
            "--volume", f"{output_dir}:/output",
        ]  # fmt: skip
        return [*argv, self.image, *self.process_args]

    def run(
        self, size: Size, bundle: Path, input_dir: Path, output_dir: Path, index: int
    ) -> JobRun:
        # Named, so that an interrupted run can remove it (docker's names: [a-zA-Z0-9_.-]).
        container = f"drac-jobcost-{os.getpid()}-{size.spec.replace(':', '_')}-{index}"
        argv = self.command(
            size, bundle.resolve(), input_dir.resolve(), output_dir.resolve(), container
        )
        return run_measured(
            argv,
            timeout_s=self.timeout_s,
            on_abort=["docker", "rm", "-f", container],
            prefix=f"[{size.spec} job {index}] ",
        )

    def cleanup(self, output_dir: Path) -> None:
        """Remove a job's output folder; what the container's user wrote there may be beyond
        this user, so a container of the same image (same user) empties it first (test.sh's
        way)."""
        shutil.rmtree(output_dir, ignore_errors=True)
        if output_dir.exists():
            subprocess.run(
                ["docker", "run", "--rm", "--network", "none", "--entrypoint", "find",
                 "--volume", f"{output_dir.resolve()}:/output", self.image,
                 "/output", "-mindepth", "1", "-delete"],
                capture_output=True, check=False,
            )  # fmt: skip
            shutil.rmtree(output_dir, ignore_errors=True)


def make_runner(cfg: JobCostConfig) -> LocalRunner | DockerRunner:
    return LocalRunner(cfg) if cfg.runner == "local" else DockerRunner(cfg)


def _git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() or None
