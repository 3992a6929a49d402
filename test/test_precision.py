"""The precision policy's tables and the training policy (inference's ``auto`` is pinned in
test_inference.py)."""

import pytest
import torch

from drac_algo.common.errors import DracInputError
from drac_algo.common.hardware import native_bf16
from drac_algo.engine.precision import (
    AUTOCAST_DTYPES,
    PRECISIONS,
    autocast,
    compute_dtype,
    grad_scaler,
    precision_name,
    resolve_precision,
    tensor_precision,
    training_dtype,
)


def test_every_explicit_name_round_trips_through_its_dtype():
    assert set(AUTOCAST_DTYPES) == set(PRECISIONS) - {"auto"}
    for name, dtype in AUTOCAST_DTYPES.items():
        assert precision_name(dtype) == name
        assert tensor_precision(compute_dtype(name)) == name
    assert compute_dtype("fp32") is torch.float32


def test_unknown_names_and_dtypes_say_what_was_expected():
    with pytest.raises(ValueError, match="float64"):
        precision_name(torch.float64)
    assert tensor_precision(torch.float64) == "torch.float64"
    with pytest.raises(DracInputError, match="found 'auto'"):
        compute_dtype("auto")


def test_autocast_none_is_plain_float32_and_a_dtype_casts():
    cpu = torch.device("cpu")
    a = torch.ones(4, 4)
    with autocast(cpu, None):
        assert (a @ a).dtype is torch.float32
    with autocast(cpu, torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16


def test_training_policy_on_the_cpu():
    cpu = torch.device("cpu")
    assert training_dtype("auto", cpu) is (torch.bfloat16 if native_bf16(cpu) else None)
    assert training_dtype(True, cpu) is torch.bfloat16
    assert training_dtype(False, cpu) is None


@pytest.mark.parametrize(
    ("native", "amp", "expected"),
    [
        (True, "auto", torch.bfloat16),
        (False, "auto", torch.float16),
        (False, True, torch.float16),
        (True, False, None),
    ],
)
def test_training_policy_on_cuda(monkeypatch, native, amp, expected):
    monkeypatch.setattr("drac_algo.engine.precision.native_bf16", lambda device: native)
    assert training_dtype(amp, torch.device("cuda")) is expected


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_only_fp16_training_gets_a_grad_scaler():
    assert grad_scaler(None) is None
    assert grad_scaler(torch.bfloat16) is None
    assert isinstance(grad_scaler(torch.float16), torch.amp.GradScaler)


def test_inference_and_training_agree_on_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is training_dtype("auto", cpu)
