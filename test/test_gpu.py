"""GPU probing: what counts as a visible GPU, the driver version, torch's reason, the one loud
line, and the requirement."""

import logging

import pytest
import torch

from drac_algo.engine.gpu import (
    GpuStatus,
    GpuUnavailableError,
    check_gpu,
    cuda_unusable_reason,
    driver_version,
    env_truthy,
    gpu_status,
    visible_devices,
)

DRIVER_TEXT = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
OPEN_DRIVER_TEXT = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n"
)


def test_visible_devices_from_nodes_and_the_container_runtime_variable():
    assert visible_devices({}, []) == []
    assert visible_devices({"NVIDIA_VISIBLE_DEVICES": "void"}, []) == []
    assert visible_devices({"NVIDIA_VISIBLE_DEVICES": "none"}, []) == []
    assert visible_devices({"NVIDIA_VISIBLE_DEVICES": ""}, []) == []
    assert visible_devices({"NVIDIA_VISIBLE_DEVICES": "all"}, ["/dev/nvidia0"]) == [
        "/dev/nvidia0",
        "NVIDIA_VISIBLE_DEVICES=all",
    ]


def test_driver_version_parses_both_kernel_module_lines(tmp_path):
    for text, expected in [(DRIVER_TEXT, "535.183.01"), (OPEN_DRIVER_TEXT, "580.65.06")]:
        path = tmp_path / "version"
        path.write_text(text)
        assert driver_version(str(path)) == expected
    assert driver_version(str(tmp_path / "missing")) is None


def test_env_truthy():
    assert [env_truthy(v) for v in (None, "", "0", "off", "No")] == [False] * 5
    assert [env_truthy(v) for v in ("1", "true", "YES", " on ")] == [True] * 4
    with pytest.raises(ValueError, match="expected 1/true/yes/on or 0/false/no/off, got 'gpu'"):
        env_truthy("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a usable GPU")
def test_without_a_gpu_torch_gives_a_reason_and_nothing_is_required():
    reason = cuda_unusable_reason()
    assert isinstance(reason, str) and reason
    status = gpu_status()
    assert status.usable is False and status.device_name is None and status.reason == reason
    assert status.torch_version == torch.__version__ and status.cuda_runtime == torch.version.cuda
    # Not visible (or visible): never raises unless required.
    assert check_gpu(False, GpuStatus(visible=False)).usable is False
    with pytest.raises(GpuUnavailableError, match="no NVIDIA GPU visible"):
        check_gpu(True, GpuStatus(visible=False, torch_version="x"))


def test_visible_but_unusable_logs_one_error_line_or_raises(caplog):
    status = GpuStatus(
        visible=True,
        evidence=["/dev/nvidia0"],
        reason="driver too old",
        driver=None,
        torch_version="2.10.0",
        cuda_runtime="12.8",
    )
    with caplog.at_level(logging.ERROR, logger="drac_algo.engine.gpu"):
        assert check_gpu(False, status) is status
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert "NVIDIA GPU visible (/dev/nvidia0) but torch 2.10.0 (CUDA 12.8)" in message
    assert "driver too old" in message and "/proc/driver/nvidia/version not readable" in message
    assert "running on the CPU instead" in message
    with pytest.raises(GpuUnavailableError, match="driver too old"):
        check_gpu(True, status)
    usable = GpuStatus(visible=True, usable=True)
    assert check_gpu(True, usable) is usable
