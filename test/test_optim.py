"""The optimiser and learning-rate schedule registries: the schedules' shapes, and unknown names
refused with the valid ones."""

import math

import pytest
import torch

from drac_algo.common.errors import DracInputError
from drac_algo.training.config import load_config
from drac_algo.training.optim import (
    OPTIMIZERS,
    SCHEDULES,
    lr_factor,
    make_optimizer,
    make_scheduler,
    registered,
)


def config(task: str = "irma", recipe: str = "method", **overrides):
    return load_config(task, None, recipe, **overrides)


def lrs(cfg, epochs):
    opt = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    sched = make_scheduler(cfg, opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_multistep_drops_tenfold_at_a_quarter_of_the_epochs():
    cfg = config("irma", epochs=8)
    assert lrs(cfg, 8) == pytest.approx([1e-4, 1e-4] + [1e-5] * 6)


def test_cosine_anneals_to_min_lr():
    cfg = config("nv", "best", epochs=4, crop_size="none")
    assert cfg.scheduler == "cosine"
    out = lrs(cfg, 5)
    assert out[0] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(out[:4], out[1:4], strict=False))
    assert out[4] == pytest.approx(cfg.min_lr, abs=1e-12)


def test_method_nv_schedule_cuts_the_cosine_to_60_percent_at_each_quarter():
    cfg = config("nv", epochs=8, min_lr=0.0)
    assert (cfg.scheduler, cfg.milestones, cfg.gamma) == ("cosine_steps", (0.25, 0.5, 0.75), 0.6)
    cosine = [1e-4 * 0.5 * (1 + math.cos(math.pi * e / 8)) for e in range(8)]
    cuts = [1, 1, 0.6, 0.6, 0.36, 0.36, 0.216, 0.216]
    assert lrs(cfg, 8) == pytest.approx([c * k for c, k in zip(cosine, cuts, strict=True)])


def test_every_registered_name_is_a_valid_recipe_value():
    for name, optimizer in OPTIMIZERS.items():
        assert isinstance(
            make_optimizer(config(optimizer=name), [torch.nn.Parameter(torch.zeros(1))]), optimizer
        )
    for name in SCHEDULES:
        assert 0 < lr_factor(config(scheduler=name, epochs=4), 2) <= 1


def test_an_unknown_name_is_refused_with_the_valid_ones():
    schedulers = r"unknown scheduler 'step'; valid: multistep, cosine, cosine_steps, constant"
    with pytest.raises(DracInputError, match=schedulers):
        registered(SCHEDULES, "scheduler", "step")
    with pytest.raises(DracInputError, match=schedulers):
        config(scheduler="step")
    with pytest.raises(DracInputError, match="unknown optimizer 'sgd'; valid: adam, adamw"):
        config(optimizer="sgd")
    # A config changed behind its validation still meets the same error where the name is used.
    cfg = config()
    object.__setattr__(cfg, "optimizer", "sgd")
    object.__setattr__(cfg, "scheduler", "step")
    with pytest.raises(DracInputError, match="unknown optimizer 'sgd'; valid: adam, adamw"):
        make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(DracInputError, match=schedulers):
        lr_factor(cfg, 0)
