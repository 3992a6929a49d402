"""The one preprocessing contract: geometry, normalisation, padding and the way back; and that
training's validation feeds the networks exactly what inference feeds them."""

import logging

import numpy as np
import pytest
import torch

from drac_algo.common.errors import DracInputError
from drac_algo.data.preprocess import from_network_output, plan_geometry, to_network_input
from drac_algo.engine.ensemble import ClassEnsemble, Member
from drac_algo.engine.predictor import Predictor
from drac_algo.networks.spec import Normalization
from drac_algo.training.augment import (
    AugmentConfig,
    apply_transform,
    invariant_views,
    train_transform,
)
from drac_algo.training.config import load_config
from drac_algo.training.dataset import Sample
from drac_algo.training.distributed import init_distributed
from drac_algo.training.epoch import validate
from drac_algo.training.losses import build_loss

MEAN, STD = 0.5, 0.25


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_plan_geometry():
    g = plan_geometry((37, 53), 53)
    assert (g.resized, g.side, g.top, g.left) == ((37, 53), 64, 13, 5)
    g = plan_geometry((37, 53), 64)
    assert (g.resized, g.side) == ((45, 64), 64)
    g = plan_geometry((1024, 1024), 256)
    assert (g.resized, g.side, g.top, g.left) == ((256, 256), 256, 0, 0)
    assert plan_geometry((100, 100), 50).side == 64
    assert plan_geometry((3, 500), 64).resized == (1, 64)
    with pytest.raises(DracInputError, match="positive"):
        plan_geometry((0, 5), 32)


@pytest.mark.parametrize(("h", "w", "input_size"), [(37, 53, 53), (53, 37, 53), (70, 45, 50)])
def test_non_square_non_multiple_of_32_round_trip(h, w, input_size):
    image = random_image(h, w)
    x, geometry = to_network_input(image, input_size, MEAN, STD)
    assert x.shape == (geometry.side, geometry.side) and geometry.side % 32 == 0
    assert x.dtype == np.float32
    (rh, rw), top, left = geometry.resized, geometry.top, geometry.left
    assert max(rh, rw) == input_size
    if (rh, rw) == (h, w):
        inside = x[top : top + h, left : left + w]
        np.testing.assert_allclose(inside, (image / 255.0 - MEAN) / STD, atol=1e-6)
    # Reflect padding: the row above the image mirrors its second row.
    if top > 0:
        np.testing.assert_allclose(x[top - 1], x[top + 1])
    back = from_network_output(sigmoid(x), geometry)
    assert back.shape == (h, w) and back.dtype == np.float32
    if (rh, rw) == (h, w):
        np.testing.assert_allclose(back, sigmoid((image / 255.0 - MEAN) / STD), atol=1e-6)


def test_bad_image_is_refused():
    with pytest.raises(DracInputError, match="uint8"):
        to_network_input(np.zeros((8, 8), np.float32), 32, MEAN, STD)


@pytest.mark.parametrize(("side", "input_size"), [(64, 32), (48, 32), (24, 32)])
def test_square_input_matches_the_unaugmented_training_pipeline(side, input_size):
    image = random_image(side, side, seed=9)
    x, geometry = to_network_input(image, input_size, 0.4, 0.3)
    pipeline = train_transform(input_size, Normalization(0.4, 0.3), AugmentConfig.none())
    trained, _ = apply_transform(pipeline, image)
    assert geometry.side == input_size
    np.testing.assert_allclose(x, trained[0].numpy(), atol=1e-5)


class Recorder(torch.nn.Module):
    """A fake network that keeps every input batch and answers with a fixed function of it."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone().contiguous())
        return x * self.weight - 0.1 * x.roll(1, -1)


@pytest.mark.parametrize(
    ("shape", "tta"), [((48, 48), "none"), ((40, 56), "none"), ((40, 56), "d4")]
)
def test_validation_feeds_the_network_exactly_what_inference_feeds_it(shape, tta, caplog):
    caplog.set_level(logging.INFO)
    cfg = load_config(
        "irma",
        input_size=32,
        crop_size="none",
        model__encoder="resnet18",
        amp=False,
        val__tta=tta,
    )
    image = random_image(*shape, seed=4)
    mask = (image > 200).astype(np.uint8)
    validation_net, inference_net = Recorder(), Recorder()
    thresholds = np.array([0.3, 0.5, 0.7])
    _, counts = validate(
        validation_net,
        [Sample(1, image, mask)],
        build_loss("dice"),
        cfg,
        init_distributed("cpu"),
        None,
        thresholds,
    )
    # The member as its bundle lists it: the views its augmentation covers (identity, hflip).
    assert "not valid for this network" not in caplog.text  # no line per image and epoch
    member = Member(
        inference_net,
        input_size=32,
        mean=cfg.normalization.mean,
        std=cfg.normalization.std,
        tta=invariant_views(cfg.augment),
    )
    predictor = Predictor([ClassEnsemble(1, (member,))], device="cpu", precision="fp32", tta=tta)
    probability = predictor.predict(image).probabilities[1]
    views = sum(x.shape[0] for x in validation_net.inputs)
    assert views == (1 if tta == "none" else 2)  # identity (and hflip)
    assert len(validation_net.inputs) == len(inference_net.inputs)
    for seen, fed in zip(validation_net.inputs, inference_net.inputs, strict=True):
        torch.testing.assert_close(seen, fed, rtol=0, atol=0)
    # ... and the validation counts are those of inference's full-resolution probabilities.
    for t, row in zip(thresholds, counts[0, :, 0], strict=True):
        predicted = probability >= t
        assert tuple(row) == (
            int((predicted & (mask > 0)).sum()),
            int(predicted.sum()),
            int(mask.sum()),
        )
