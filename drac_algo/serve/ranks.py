"""``torchrun --nproc_per_node=N -m process ...``: each rank runs one shard of a batch folder
(:mod:`drac_algo.serve.shards`; rank r is shard r+1 of N) on ``cuda:LOCAL_RANK``, or on the CPU,
and rank 0 assembles the whole run once every rank is done (:func:`drac_algo.serve.merge.merge`).

The ranks need no collective but the rendezvous: a gloo process group (on the CPU whatever the
device, so the same code runs on GPU nodes and CPU-only ones), and its key-value store (the
``TCPStore`` torchrun serves at ``MASTER_ADDR:MASTER_PORT``), through which each rank reports
its progress after every case and its outcome at its end. Rank 0 logs the whole run's progress
with an ETA, waits for every rank's outcome (a barrier with a timeout: a rank that has neither
finished a case nor ended for ``--rank-timeout`` seconds is named and the run fails), names any
rank that failed and why, and otherwise merges. Every rank's cases are on disk with their
records as they finish, so the same command (or ``--continue``) run again completes a run
that lost a rank.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from drac_algo.common.cli import parse_device
from drac_algo.common.errors import DracInputError
from drac_algo.common.progress import progress_line
from drac_algo.common.torchrun import TorchrunProcess
from drac_algo.serve.batch import BatchOptions
from drac_algo.serve.run_state import RunConfig
from drac_algo.serve.shards import Shard

log = logging.getLogger("drac_algo.serve.pipeline")

EVERY_S = 30.0  # seconds between rank 0's progress lines


def rank_device(device: str, rank: int, local_rank: int) -> str:
    """The device of a rank: the GPU of its LOCAL_RANK for ``auto`` (where CUDA works) and
    ``cuda``, else the CPU. A fixed ``cuda:N`` is refused: every rank would take that GPU."""
    import torch

    device = parse_device(device)
    if device.startswith("cuda:"):
        raise DracInputError(
            f"--device {device}: under torchrun each rank uses the GPU of its LOCAL_RANK; "
            "expected --device auto, cuda or cpu"
        )
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        return device  # "cuda" without one: the run refuses it with the engine's diagnosis
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DracInputError(
            f"torchrun rank {rank}: LOCAL_RANK {local_rank}, but torch sees {count} GPU(s) on "
            f"{socket.gethostname()}: start at most {count} processes per node "
            "(--nproc_per_node), or pass --device cpu"
        )
    return f"cuda:{local_rank}"


class _Store:
    """The rendezvous store, under this run's own keys."""

    def __init__(self, timeout_s: float) -> None:
        import torch.distributed as dist

        self.store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        self.prefix = f"drac-process/{run_id}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/"

    def set(self, key: str, value: Any) -> None:
        self.store.set(self.prefix + key, json.dumps(value))

    def get(self, key: str) -> Any:
        """The value, or None when not set yet."""
        if not self.store.check([self.prefix + key]):
            return None
        return json.loads(self.store.get(self.prefix + key))

    def wait(self, key: str) -> None:
        self.store.wait([self.prefix + key])


class _Watch(threading.Thread):
    """Rank 0's view of every rank's progress: polls the store, logs the whole run's cases done
    with an ETA every :data:`EVERY_S` seconds, and remembers when each rank last moved."""

    def __init__(self, world: int, timeout_s: float) -> None:
        super().__init__(daemon=True, name="drac-ranks-progress")
        self.world = world
        self.store = _Store(timeout_s)  # a client of its own: the main thread uses the other
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.seen: dict[int, Any] = {}
        self.moved = dict.fromkeys(range(world), time.monotonic())
        self._last_line = -float("inf")
        self._last_state: tuple[int, int] | None = None
        self.lock = threading.Lock()

    def poll(self) -> tuple[int, int, bool]:
        """``(ran, to_run, known)`` over all ranks; ``known``: every rank has reported."""
        with self.lock:
            now = time.monotonic()
            for r in range(self.world):
                value = self.store.get(f"progress/{r}")
                if value is not None and value != self.seen.get(r):
                    self.seen[r], self.moved[r] = value, now
            ran = sum(v[1] for v in self.seen.values())
            return ran, sum(v[0] for v in self.seen.values()), len(self.seen) == self.world

    def report(self, force: bool = False) -> None:
        ran, to_run, known = self.poll()
        now = time.monotonic()
        with self.lock:
            if not known or (ran, to_run) == self._last_state:
                return  # nothing new since the last line
            if not force and now - self._last_line < EVERY_S and ran < to_run:
                return
            self._last_line, self._last_state = now, (ran, to_run)
            line = progress_line("all ranks", ran, to_run, "case", now - self.started)
            log.info("%s (%d rank(s))", line, self.world)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.report()


def run_ranks(
    process: TorchrunProcess, config: RunConfig, batch: BatchOptions, timeout_s: float
) -> dict[str, Any] | None:
    """This rank's part of a torchrun run (see the module docstring), ``process`` being what
    :func:`drac_algo.common.torchrun.torchrun_process` read. Returns ``results.json``
    on rank 0 and None on the others; raises :class:`DracInputError` (exit 2) on rank 0 when a
    rank refused its input, and exits 1 when one failed otherwise or timed out."""
    import torch.distributed as dist

    from drac_algo.engine.gpu import GpuUnavailableError
    from drac_algo.serve.merge import merge
    from drac_algo.serve.pipeline import run

    rank, world, local_rank = process.rank, process.world_size, process.local_rank
    shard = Shard(rank + 1, world, "torchrun")
    if rank != 0:  # one console: rank 0's, with the whole run; each rank's log is in shards/
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=max(timeout_s, 1800)))
    try:
        store = _Store(max(timeout_s, 1800))
        watch = _Watch(world, timeout_s) if rank == 0 else None
        if watch is not None:
            watch.start()
        outcome = {"code": 0, "error": None, "host": socket.gethostname(), "device": None}
        try:
            device = rank_device(config.device, rank, local_rank)
            outcome["device"] = device
            mine = dataclasses.replace(config, device=device)

            def progress(to_run: int, ran: int) -> None:
                store.set(f"progress/{rank}", [to_run, ran])

            run(mine, batch, shard, progress)
        except DracInputError as exc:
            outcome.update(code=2, error=str(exc))
        except (OSError, GpuUnavailableError) as exc:
            outcome.update(code=1, error=str(exc))
        except BaseException as exc:  # SIGTERM, a bug: say so before going down with it
            store.set(f"outcome/{rank}", {**outcome, "code": 1, "error": repr(exc)})
            raise
        store.set(f"outcome/{rank}", outcome)
        if rank != 0:
            if outcome["code"]:
                print(f"error: rank {rank}: {outcome['error']}", file=sys.stderr)
            store.wait("reported")  # rank 0 names this rank before torchrun sees it fail
            if outcome["code"]:
                raise SystemExit(outcome["code"])
            return None
        try:
            outcomes = _wait_for_ranks(store, watch, world, timeout_s)  # type: ignore[arg-type]
            _refuse_failures(outcomes, world)
            return merge(config.output_dir, config.input_dir)
        finally:
            store.set("reported", True)
    finally:
        dist.destroy_process_group()


def _wait_for_ranks(store: _Store, watch: _Watch, world: int, timeout_s: float) -> dict:
    """Every rank's outcome, once all have one; a rank that neither moved nor ended for
    ``timeout_s`` seconds ends the wait with an error naming it."""
    outcomes: dict[int, Any] = {}
    try:
        while True:
            for r in range(world):
                if r not in outcomes and (value := store.get(f"outcome/{r}")) is not None:
                    outcomes[r] = value
            if len(outcomes) == world:
                watch.report(force=True)
                return outcomes
            watch.poll()
            now = time.monotonic()
            stalled = [
                r for r in range(world) if r not in outcomes and now - watch.moved[r] > timeout_s
            ]
            if stalled:
                described = "; ".join(
                    f"rank {r} (shard {r + 1}/{world}; cases run/to run: {_progress_of(watch, r)})"
                    for r in stalled
                )
                print(
                    f"error: {described}: no case finished and no end reported for "
                    f"{timeout_s:.0f} s (--rank-timeout); the complete cases are kept: run the "
                    "same command again to finish",
                    file=sys.stderr,
                )
                raise SystemExit(1)
            time.sleep(0.2)
    finally:
        watch.stop.set()


def _progress_of(watch: _Watch, rank: int) -> str:
    value = watch.seen.get(rank)
    return "none reported yet" if value is None else f"{value[1]}/{value[0]}"


def _refuse_failures(outcomes: dict[int, Any], world: int) -> None:
    failed = {r: o for r, o in sorted(outcomes.items()) if o["code"]}
    if not failed:
        return
    lines = "\n".join(
        f"  rank {r} (shard {r + 1}/{world} on {o['host']}, device {o['device'] or 'none'}): "
        f"{o['error']}"
        for r, o in failed.items()
    )
    message = (
        f"{len(failed)} of {world} rank(s) failed, so nothing was assembled:\n{lines}\n"
        "  the complete cases of every rank are kept: fix the cause and run the same command "
        "again"
    )
    if all(o["code"] == 2 for o in failed.values()):
        raise DracInputError(message)
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
