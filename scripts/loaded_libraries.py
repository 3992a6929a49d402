"""Which installed packages' shared libraries a process.py run really loads, and which it never
touches: the evidence for leaving a package out of the image (Dockerfile LEAVE_OUT).

    python scripts/loaded_libraries.py --out libraries.md -- --input IN --output OUT ...

Runs ``process.py`` in this process once per ``--``-separated argument list (e.g. once with
``--precision auto`` and once with ``--precision fp32``: their GPU kernels come from different
libraries), then reads ``/proc/self/maps``: every mapped shared library is attributed to the
pip distribution that installed it. Two tables: per distribution with shared libraries, its
size on disk and how much of it was mapped; then every file over 10 MB never mapped.

How to read it: ``import torch`` maps every library torch links (``readelf -d``) and, with a
CUDA build, preloads one per nvidia-* package (its ``_preload_cuda_deps``), so "mapped" says
little about those packages; what runs on the GPU decides the rest, which is loaded on first
use (cuDNN's engine libraries, NVRTC's builtins, ...). Only a run on the GPU shows which
(scripts/gpu-check.sh runs this there). A library loaded and closed again before the end is
not seen; the CUDA libraries stay loaded once opened.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import runpy
import sys
from pathlib import Path


def installed_libraries() -> dict[str, tuple[str, int]]:
    """Every installed shared library's real path -> (its distribution, its size in bytes)."""
    libraries: dict[str, tuple[str, int]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        for file in dist.files or []:
            if ".so" not in file.name:
                continue
            path = Path(dist.locate_file(file))
            if path.is_file():
                libraries[os.path.realpath(path)] = (name, path.stat().st_size)
    return libraries


def mapped_files() -> set[str]:
    """The real paths of the files mapped into this process."""
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    return {os.path.realpath(p) for p in paths if p.startswith("/")}


def run_process(args: list[str]) -> int:
    """One process.py run in this process; its exit status."""
    sys.argv = ["process.py", *args]
    try:
        runpy.run_module("process", run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def _mb(size: int) -> str:
    return f"{size / 2**20:.0f} MB"


def tables(libraries: dict[str, tuple[str, int]], loaded: set[str], statuses: list[int]) -> str:
    """The markdown report: per distribution, then the large files never mapped."""
    total: dict[str, int] = {}
    mapped: dict[str, int] = {}
    for path, (name, size) in libraries.items():
        total[name] = total.get(name, 0) + size
        mapped[name] = mapped.get(name, 0) + (size if path in loaded else 0)
    lines = [
        f"process.py runs: {len(statuses)}, exit status {', '.join(map(str, statuses))}",
        "",
        "| distribution | shared libraries | mapped |",
        "|---|---|---|",
    ]
    for name in sorted(total, key=lambda n: (-total[n], n)):
        share = f"{_mb(mapped[name])}" if mapped[name] else "**none**"
        lines.append(f"| {name} | {_mb(total[name])} | {share} |")
    never = sorted(
        ((size, name, path) for path, (name, size) in libraries.items() if path not in loaded),
        reverse=True,
    )
    lines += ["", "| never mapped (over 10 MB) | distribution | size |", "|---|---|---|"]
    for size, name, path in never:
        if size > 10 * 2**20:
            lines.append(f"| {Path(path).name} | {name} | {_mb(size)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print(
            "usage: loaded_libraries.py [--out FILE] -- PROCESS_ARGS [-- PROCESS_ARGS ...]",
            file=sys.stderr,
        )
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    options = parser.parse_args(argv[:split])
    runs, current = [], []
    for arg in argv[split + 1 :] + ["--"]:
        if arg == "--":
            if current:
                runs.append(current)
            current = []
        else:
            current.append(arg)
    if not runs:
        parser.error("expected process.py arguments after --, found none")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # process.py's folder
    statuses = [run_process(args) for args in runs]
    text = tables(installed_libraries(), mapped_files(), statuses)
    print(text, end="")
    if options.out:
        options.out.write_text(text, encoding="utf-8")
    return 0 if all(s == 0 for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
