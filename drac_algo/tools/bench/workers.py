"""One method, one process: a :class:`MethodSession` (networks built, runner made, memory
reset) driven by commands, in this process or a fresh spawned one, and :func:`time_methods`,
which interleaves the methods' timed passes."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drac_algo.tools.bench.config import BenchConfig
from drac_algo.tools.bench.plan import Plan, build_networks, fingerprint, load_images
from drac_algo.tools.bench.probes import LayoutProbe, MemoryProbe, synchronize
from drac_algo.tools.bench.runners import RUNNERS, method_settings


@dataclass
class Job:
    """What a worker process needs (picklable)."""

    cfg: BenchConfig
    plan: Plan
    name: str  # the table row
    method: str  # a key of RUNNERS
    precision: str | None
    out_dir: str


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


_TTACH_MISSING = "ttach is not installed (pip install ttach==0.0.3); row skipped"


class MethodSession:
    """One method, ready to time: networks built, runner made, memory high-water mark reset.

    Driven by :meth:`handle` with ``"warmup"`` (``warmup`` untimed passes), ``"pass"`` (one
    timed pass over the images; returns its seconds) and ``"finish"`` (the result; saves the
    probabilities of the last pass to ``<out_dir>/<row name>.npz``). The parent interleaves the
    methods' passes, so a change in background load spreads over all of them.
    """

    def __init__(self, job: Job) -> None:
        cfg = job.cfg
        self.job, self.device = job, torch.device(cfg.device)
        self.images = load_images(cfg)
        networks = build_networks(job.plan, self.device)
        self.fingerprints = {key: fingerprint(net) for key, net in networks.items()}
        self.runner = RUNNERS[job.method](cfg, job.plan, networks, self.device, job.precision)
        self.layout = LayoutProbe(next(iter(networks.values())))
        self.seconds: list[float] = []
        self.latest: list[dict[int, np.ndarray]] = []
        self.memory = MemoryProbe(self.device)
        self.memory.reset()

    def handle(self, command: str) -> Any:
        if command == "warmup":
            for _ in range(self.job.cfg.warmup):
                for image in self.images:
                    self.runner(image)
            return None
        if command == "pass":
            synchronize(self.device)
            start = time.perf_counter()
            latest = [self.runner(image)[0] for image in self.images]
            synchronize(self.device)
            self.latest = latest
            self.seconds.append(time.perf_counter() - start)
            return self.seconds[-1]
        if command == "finish":
            return self.finish()
        raise ValueError(f"unknown worker command {command!r}")

    def finish(self) -> dict[str, Any]:
        job, seconds = self.job, self.seconds
        self.layout.remove()
        np.savez(
            Path(job.out_dir) / f"{job.name}.npz",
            **{f"{i}/{c}": p for i, maps in enumerate(self.latest) for c, p in maps.items()},
        )
        median = statistics.median(seconds)
        settings = method_settings(job.cfg, job.method, job.precision, self.device)
        onnx = settings["backend"] == "onnxruntime"  # no torch convolution ran to probe
        return {
            "method": job.method,
            **settings,
            "ran_dtype": "fp32" if onnx else self.layout.dtype,
            "ran_layout": "ORT" if onnx else self.layout.layout,
            "images": len(self.images),
            "warmup": job.cfg.warmup,
            "repeats": len(seconds),
            "run_seconds": seconds,
            "median_seconds": median,
            "images_per_second": len(self.images) / median,
            "memory": self.memory.read(),
            "threads": torch.get_num_threads(),
            "fingerprints": self.fingerprints,
        }


class WorkerError(RuntimeError):
    """A method's worker failed; the message says how (traceback or exit code)."""


def _serve(job: Job, conn: Any) -> None:
    """Worker process: build a :class:`MethodSession`, then answer commands until finish."""
    if job.cfg.threads:
        torch.set_num_threads(job.cfg.threads)
    try:
        session = MethodSession(job)
        conn.send(("ok", None))
        while True:
            command = conn.recv()
            conn.send(("ok", session.handle(command)))
            if command == "finish":
                return
    except Exception:
        conn.send(("error", traceback.format_exc()))


class _LocalWorker:
    """A method session in this process (``--no-isolate``)."""

    def __init__(self, job: Job) -> None:
        self.session = MethodSession(job)

    def call(self, command: str) -> Any:
        return self.session.handle(command)

    def close(self) -> None:
        self.session = None


class _ProcessWorker:
    """A method session in a fresh spawned process, driven over a pipe."""

    def __init__(self, job: Job) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(job, child), name=job.name)
        self.process.start()
        child.close()
        self._receive()

    def _receive(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join()
            code = self.process.exitcode
            why = " (killed: out of memory?)" if code == -9 else ""
            raise WorkerError(f"{self.process.name}: worker exited with code {code}{why}") from None
        if status == "error":
            raise WorkerError(f"{self.process.name}: {value.strip().splitlines()[-1]}\n{value}")
        return value

    def call(self, command: str) -> Any:
        self.conn.send(command)
        return self._receive()

    def close(self) -> None:
        self.conn.close()
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def time_methods(
    cfg: BenchConfig,
    plan: Plan,
    out_dir: Path,
    progress: Callable[[str], None],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Every method's result, and the timed passes in the order they ran.

    All methods are built first (each in its own process with ``cfg.isolate``), warmed up one
    after the other, then timed pass by pass in turn (the order rotating each round), so that
    slow drifts in the machine's load affect every method alike. A method that fails becomes
    an ``error`` entry and the others go on.
    """
    results: dict[str, dict[str, Any]] = {}
    workers: dict[str, Any] = {}
    passes: list[dict[str, Any]] = []
    rows = cfg.rows()
    for name, method, precision in rows:
        if method == "ttach" and importlib.util.find_spec("ttach") is None:
            results[name] = {"method": method, "skipped": _TTACH_MISSING}
            progress(_TTACH_MISSING)
            continue
        progress(f"{name}: building the networks")
        job = Job(cfg, plan, name, method, precision, str(out_dir))
        try:
            workers[name] = (_ProcessWorker if cfg.isolate else _LocalWorker)(job)
        except WorkerError as exc:
            results[name] = {"method": method, "error": str(exc)}

    def call(method: str, command: str) -> Any:
        try:
            return workers[method].call(command)
        except WorkerError as exc:
            results[method] = {"method": method, "error": str(exc)}
            workers.pop(method).close()
            return None

    try:
        for method in list(workers):
            progress(f"{method}: {cfg.warmup} warm-up pass(es)")
            call(method, "warmup")
        for round_ in range(cfg.repeats):
            order = list(workers)
            order = order[round_ % len(order) :] + order[: round_ % len(order)] if order else []
            for method in order:
                if method not in workers:
                    continue
                load = _load_average()
                seconds = call(method, "pass")
                if seconds is not None:
                    progress(f"{method}: pass {round_ + 1}/{cfg.repeats}: {seconds:.2f} s")
                    passes.append(
                        {"method": method, "round": round_, "seconds": seconds, "load": load}
                    )
        for method in list(workers):
            result = call(method, "finish")
            if result is not None:
                results[method] = result
    finally:
        for worker in workers.values():
            worker.close()
    for method, result in results.items():
        loads = [p["load"] for p in passes if p["method"] == method and p["load"] is not None]
        result["load_average"] = loads
    return {name: results[name] for name, _, _ in rows if name in results}, passes
