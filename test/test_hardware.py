"""CPU facts: instruction-set features, the cgroup CPU quota and the intra-op thread count."""

import os

import pytest
import torch

from drac_algo.common import hardware
from drac_algo.common.hardware import cgroup_cpu_limit, cpu_features, cpu_threads

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_tile
processor\t: 1
"""


def test_cpu_features_names_those_that_decide_speed(tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert cpu_features(tmp_path / "cpuinfo") == ["avx2", "avx512f", "avx512_bf16"]
    (tmp_path / "avx2").write_text("flags\t: sse2 avx avx2 fma\n")
    assert cpu_features(tmp_path / "avx2") == ["avx2"]
    assert cpu_features(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_limit_reads_v2_and_v1(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_cpu_threads_is_the_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert cpu_threads(tmp_path) == 64  # no quota
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_threads(tmp_path) == 2  # 1.5 CPUs: rounded up
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert cpu_threads(tmp_path) == 1  # a tenth of a CPU: still one thread
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    (tmp_path / "cpu.max").write_text("800000 100000\n")
    assert cpu_threads(tmp_path) == 1  # pinned to one core


@pytest.mark.parametrize(("value", "threads"), [("3", 3), ("0", 1), ("many", 1), ("", 1)])
def test_omp_num_threads_wins_when_it_is_a_positive_integer(tmp_path, monkeypatch, value, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert hardware.cpu_threads(tmp_path) == threads


def test_release_freed_memory_calls_malloc_trim_and_tolerates_its_absence(monkeypatch):
    calls = []

    class Libc:
        def malloc_trim(self, pad):
            calls.append(pad)
            return 1

    monkeypatch.setattr(hardware.ctypes, "CDLL", lambda name: Libc())
    assert hardware.release_freed_memory() is True and calls == [0]

    def no_libc(name):
        raise OSError("not found")

    monkeypatch.setattr(hardware.ctypes, "CDLL", no_libc)
    assert hardware.release_freed_memory() is False
    monkeypatch.setattr(hardware.ctypes, "CDLL", lambda name: object())  # musl: no malloc_trim
    assert hardware.release_freed_memory() is False


@pytest.mark.parametrize(
    ("onednn", "features", "expected"),
    [
        (True, ["avx2", "avx512f"], False),  # Skylake-SP / Cascade Lake: torch says yes, emulated
        (True, ["avx2", "avx512f", "avx512_bf16"], True),  # Cooper Lake, Zen 4
        (True, ["avx2", "avx512f", "avx512_bf16", "amx_bf16"], True),  # Sapphire Rapids
        (False, ["avx2", "avx512f", "avx512_bf16"], False),  # torch cannot run bf16 kernels
        (False, ["avx2"], False),
        (True, [], True),  # flags unreadable: torch's answer
    ],
)
def test_cpu_native_bf16_needs_the_bf16_instructions(monkeypatch, onednn, features, expected):
    monkeypatch.setattr(hardware, "onednn_bf16", lambda: onednn)
    monkeypatch.setattr(hardware, "cpu_features", lambda: features)
    assert hardware.native_bf16(torch.device("cpu")) is expected
