"""The benchmark's configuration: :class:`BenchConfig` (one run, validated), the rows it asks
for, and :func:`config_from_options` (the command line's options, ``--quick`` applied)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drac_algo.common.choices import BACKENDS, PRECISIONS
from drac_algo.common.errors import DracInputError

METHODS = ("naive", "ttach", "engine")
# What --quick changes: a tiny run that exercises every code path in seconds.
QUICK = {
    "size": 64,
    "repeats": 1,
    "warmup": 1,
    "train_size": 64,
    "train_batch": 1,
    "train_repeats": 1,
    "encoder": "resnet18",
    "decoder_channels": (32, 32, 16, 16, 16),
    "isolate": False,
    "matmul_side": 512,
}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. See :mod:`drac_algo.tools.bench` and ``python -m drac_algo.bench --help``.

    ``size``: side of the (square, phantom) test images and, without a bundle, the networks'
    input size. ``arch``/``encoder``/``decoder_channels``: override the recipes' models (random
    weights only). ``precision``: the engine's (naive and ttach are always float32).
    """

    size: int = 1024
    bundle: Path | None = None
    images: Path | None = None
    n_images: int = 1
    members: int = 1
    arch: str | None = None
    encoder: str | None = None
    decoder_channels: tuple[int, ...] | None = None
    tta: str = "d4"
    device: str = "cpu"
    precision: str = "auto"
    views_per_batch: int | None = None  # None: the engine's default for the device
    methods: tuple[str, ...] = METHODS
    repeats: int = 3
    warmup: int = 1
    isolate: bool = True
    threads: int | None = None
    train: bool = True
    train_task: str = "irma"
    train_size: int | None = None
    train_batch: int | None = None
    train_repeats: int = 3
    matmul_side: int | None = None
    engine_module: str = "drac_algo.engine.predictor"
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        for name in ("size", "n_images", "members", "views_per_batch", "repeats", "train_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DracInputError(
                    f"--{name.replace('_', '-')} must be >= 1, found {getattr(self, name)}"
                )
        if self.warmup < 0:
            raise DracInputError(f"--warmup must be >= 0, found {self.warmup}")
        bad = [
            p
            for p in self.engine_precisions
            if split_engine_token(p)[0] not in PRECISIONS
            or split_engine_token(p)[1] not in BACKENDS
        ]
        if bad or not self.engine_precisions:
            raise DracInputError(
                f"unknown precision(s) {', '.join(bad) or '(none given)'} in "
                f"{self.precision!r}; valid: {', '.join(PRECISIONS)}, each optionally followed "
                f"by :BACKEND ({', '.join(BACKENDS)})"
            )
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise DracInputError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                f"valid: {', '.join(METHODS)}"
            )
        if self.bundle is not None and (
            self.arch or self.encoder or self.decoder_channels or self.members != 1
        ):
            raise DracInputError(
                "--arch/--encoder/--decoder-channels/--members describe random-weight models; "
                "a --bundle brings its own"
            )

    @property
    def engine_precisions(self) -> tuple[str, ...]:
        """``precision`` may list several (``"bf16,fp32"``): one engine row each. Each may name
        the backend too (``"fp32:torch"``, ``"fp32:onnxruntime"``; default ``auto``, the
        Predictor's rule)."""
        return tuple(dict.fromkeys(p.strip() for p in self.precision.split(",") if p.strip()))

    def rows(self) -> list[tuple[str, str, str | None]]:
        """``(row name, method, engine precision)`` for every row of the table: the first
        engine precision is the row ``engine``, further ones ``engine-<precision>``."""
        out: list[tuple[str, str, str | None]] = []
        for method in self.methods:
            if method != "engine":
                out.append((method, method, None))
                continue
            for i, precision in enumerate(self.engine_precisions):
                out.append(("engine" if i == 0 else f"engine-{precision}", method, precision))
        return out

    @property
    def resolved_train_size(self) -> int:
        return self.train_size or self.size

    def resolved_train_batch(self, recipe_batch: int) -> int:
        """``train_batch``, else the recipe's batch size on CUDA and 1 on the CPU (a float32
        Unet++ step at 1024 x 1024 holds about 7 GiB of activations per image there)."""
        if self.train_batch is not None:
            return self.train_batch
        return recipe_batch if self.device.startswith("cuda") else 1


def split_engine_token(token: str) -> tuple[str, str]:
    """``"fp32:onnxruntime"`` -> ``("fp32", "onnxruntime")``; ``"bf16"`` -> ``("bf16", "auto")``."""
    precision, _, backend = token.partition(":")
    return precision, backend or "auto"


def config_from_options(**options: Any) -> BenchConfig:
    """A :class:`BenchConfig` from CLI options: ``None`` means the default, or the ``--quick``
    value when ``quick`` is set."""
    quick = options.get("quick", False)
    defaults = dict(QUICK) if quick else {}
    if options.get("bundle") is not None:
        defaults.pop("encoder", None)
        defaults.pop("decoder_channels", None)
    values = {}
    for f in dataclasses.fields(BenchConfig):
        if f.name not in options:
            continue
        value = options[f.name]
        if value is None and f.name in defaults:
            value = defaults[f.name]
        if value is not None:
            values[f.name] = value
    if quick and "matmul_side" not in values:
        values["matmul_side"] = QUICK["matmul_side"]
    return BenchConfig(**values)
