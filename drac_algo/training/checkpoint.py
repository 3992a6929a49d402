"""Training checkpoints: written atomically, holding everything ``--resume`` needs to continue
exactly where an interrupted run stopped (model, optimizer, scheduler, grad scaler, RNG states,
metric history)."""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drac_algo.common.errors import DracInputError
from drac_algo.common.fsutil import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it onto ``path``:
    a crash mid-write leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DracInputError(f"checkpoint not found: {path}")
    try:
        # Our own training state holds numpy RNG state and plain containers: not weights-only.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DracInputError(f"cannot read checkpoint {path}: {exc}") from exc


def rng_state() -> dict[str, Any]:
    # The legacy global numpy state is saved too: third-party code (augmentations) may draw from it.
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
