"""A half-set torchrun environment (WORLD_SIZE without the rest) is one clear error, in training
and in process.py, instead of a KeyError traceback or a rendezvous that never comes."""

import pytest
from helpers import gray, invoke, rejected, write_png

from drac_algo.common.errors import DracInputError
from drac_algo.common.torchrun import TorchrunProcess, torchrun_process
from drac_algo.training.distributed import init_distributed

FULL = {
    "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
    "MASTER_ADDR": "node1", "MASTER_PORT": "29500",
}  # fmt: skip


def test_a_single_process_has_no_torchrun_place():
    assert torchrun_process({}) is None
    assert torchrun_process({"WORLD_SIZE": ""}) is None
    assert torchrun_process({"WORLD_SIZE": "1"}) is None  # torchrun --nproc_per_node=1
    assert torchrun_process(FULL) == TorchrunProcess(rank=3, world_size=4, local_rank=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"MASTER_ADDR": None}, "MASTER_ADDR is not set: start it with torchrun"),
        (
            {"RANK": None, "MASTER_PORT": None},
            "one of 4 torchrun processes, but RANK, MASTER_PORT are not set",
        ),
        ({"WORLD_SIZE": "four"}, "WORLD_SIZE='four': expected an integer >= 1"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected an integer >= 1"),
        ({"RANK": "-1"}, "RANK='-1': expected an integer >= 0"),
        ({"RANK": "4"}, "RANK=4: expected a rank below WORLD_SIZE=4"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT='http': expected an integer >= 1"),
    ],
)
def test_a_half_set_or_malformed_environment_is_named(changes, message):
    environ = {k: v for k, v in {**FULL, **changes}.items() if v is not None}
    with pytest.raises(DracInputError, match=message.replace("(", r"\(")):
        torchrun_process(environ)


def only_world_size(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")


def test_process_py_refuses_world_size_alone_and_writes_nothing(monkeypatch, tmp_path):
    only_world_size(monkeypatch)
    write_png(tmp_path / "images" / "1.png", gray(1))
    out = tmp_path / "out"
    result = invoke("--input", tmp_path / "images", "--output", out, "--device", "cpu")
    rejected(result, "WORLD_SIZE=2", "MASTER_ADDR", "unset WORLD_SIZE to run a single process")
    assert not out.exists() or not any(out.iterdir())


def test_training_refuses_world_size_alone(monkeypatch):
    only_world_size(monkeypatch)
    with pytest.raises(DracInputError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"):
        init_distributed("cpu")
