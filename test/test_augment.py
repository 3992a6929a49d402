"""Augmentation pipelines: output contract, mask alignment, strict argument checking."""

import ast
import dataclasses
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from drac_algo.common.errors import DracInputError
from drac_algo.engine.tta import TRANSFORMS
from drac_algo.networks.spec import Normalization
from drac_algo.training import augment
from drac_algo.training.augment import (
    AugmentConfig,
    LesionCrop,
    apply_transform,
    invariant_views,
    to_tensors,
    train_transform,
)

NORM = Normalization(mean=0.5, std=0.25)


def blob_case(size: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image that is exactly mask * 255, the mask a few filled rectangles."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, size - 20, 2)
        h, w = rng.integers(8, 20, 2)
        mask[y : y + h, x : x + w] = 1
    return mask * 255, mask


def to_pixels(image: torch.Tensor) -> np.ndarray:
    return ((image[0].numpy() * NORM.std + NORM.mean) * 255).round()


@pytest.mark.parametrize(
    "make",
    [
        lambda: train_transform(64, NORM, seed=3),
        lambda: train_transform(64, NORM, AugmentConfig.none()),
    ],
)
def test_output_contract(make):
    image, mask = blob_case(size=80)
    image_t, mask_t = apply_transform(make(), image, mask)
    assert image_t.shape == (1, 64, 64) and image_t.dtype == torch.float32
    assert mask_t.shape == (1, 64, 64) and mask_t.dtype == torch.float32
    assert set(mask_t.unique().tolist()) <= {0.0, 1.0}
    image_only, none = apply_transform(make(), image)
    assert image_only.shape == (1, 64, 64) and none is None


def test_unaugmented_pipeline_normalises_exactly():
    image = np.full((64, 64), 128, np.uint8)
    image_t, _ = apply_transform(train_transform(64, NORM, AugmentConfig.none()), image)
    torch.testing.assert_close(image_t, torch.full((1, 64, 64), (128 / 255 - 0.5) / 0.25))
    np.testing.assert_allclose(NORM.apply(image), image_t[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_geometric_transforms_keep_mask_aligned_and_binary(seed):
    image, mask = blob_case(seed=seed)
    transform = train_transform(64, NORM, AugmentConfig.geometric_only(), seed=seed)
    image_t, mask_t = apply_transform(transform, image, mask)
    pixels, moved = to_pixels(image_t), mask_t[0].numpy().astype(np.uint8)
    assert set(np.unique(moved)) <= {0, 1}
    assert moved.sum() > 100
    # The image is interpolated linearly, the mask nearest-neighbour: compare away from the
    # mask's boundary, where a misaligned mask (e.g. one left unmoved) disagrees massively.
    inside = cv2.erode(moved, np.ones((3, 3), np.uint8)).astype(bool)
    outside = cv2.erode(1 - moved, np.ones((3, 3), np.uint8)).astype(bool)
    assert (pixels[inside] > 127).mean() > 0.95
    assert (pixels[outside] <= 127).mean() > 0.99
    # ... and the transform really moved things (otherwise the check above proves nothing).
    resized, _ = apply_transform(train_transform(64, NORM, AugmentConfig.none()), image, mask)
    assert not torch.equal(image_t, resized)


def test_intensity_transforms_leave_the_mask_alone():
    image, mask = blob_case()
    cfg = AugmentConfig.switched(geometric=False, intensity=True)
    image_t, mask_t = apply_transform(train_transform(80, NORM, cfg, seed=0), image, mask)
    np.testing.assert_array_equal(mask_t[0].numpy(), mask)
    assert not np.array_equal(to_pixels(image_t), image)


def test_every_probability_is_geometric_or_intensity():
    probabilities = {f.name for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p")}
    geometric, intensity = augment.GEOMETRIC_PROBABILITIES, augment.INTENSITY_PROBABILITIES
    assert sorted(geometric + intensity) == sorted(probabilities)


def test_seed_makes_the_pipeline_reproducible():
    image, mask = blob_case()
    a = apply_transform(train_transform(64, NORM, seed=7), image, mask)
    b = apply_transform(train_transform(64, NORM, seed=7), image, mask)
    torch.testing.assert_close(a, b)


def _all_transforms(compose):
    for t in compose.transforms:
        if isinstance(t, A.BaseCompose):
            yield t
            yield from _all_transforms(t)
        else:
            yield t


def test_pipelines_hold_the_method_transforms():
    names = {type(t).__name__ for t in _all_transforms(train_transform(64, NORM))}
    method = {"HorizontalFlip", "Rotate", "LesionCrop", "GaussNoise", "RandomBrightnessContrast"}
    assert method | {"OneOf", "ElasticTransform", "GridDistortion", "Affine", "Normalize"} <= names
    assert train_transform(64, NORM).strict


def test_every_transform_is_built_with_strict_true():
    # Albumentations validates strict=True at construction and does not keep it on the
    # instance, so check the source: every A.<Transform>(...) call passes strict=True.
    tree = ast.parse(Path(augment.__file__).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "A"
    ]
    assert len(calls) >= 12
    for call in calls:
        if call.func.attr == "OneOf":  # takes no strict argument; the strict Compose checks it
            continue
        strict = [k for k in call.keywords if k.arg == "strict"]
        assert strict and ast.literal_eval(strict[0].value) is True, call.func.attr


def test_strict_rejects_an_old_argument_name():
    # var_limit is GaussNoise's pre-2.0 argument (now std_range): strict makes it an error.
    with pytest.raises(ValueError, match="var_limit"):
        A.GaussNoise(var_limit=(10.0, 50.0), strict=True)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="var_limit"):
        A.Compose([A.OneOf([A.GaussNoise(var_limit=(10.0, 50.0))])], strict=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hflip_p": 1.5}, "probability"),
        ({"noise_std_range": (0.1, 0.01)}, "low, high"),
        ({"crop_zoom_max": 0.5}, "crop_zoom_max"),
        ({"rotate_limit": "45"}, "numeric"),
    ],
)
def test_augment_config_rejects_bad_values(kwargs, match):
    with pytest.raises(DracInputError, match=match):
        AugmentConfig(**kwargs)


def test_input_checks():
    with pytest.raises(DracInputError, match="mask values"):
        to_tensors(np.zeros((4, 4), np.float32), np.full((4, 4), 255, np.uint8))
    with pytest.raises(DracInputError, match="uint8"):
        apply_transform(train_transform(32, NORM), np.zeros((32, 32), np.float32))
    with pytest.raises(DracInputError, match="uint8"):
        apply_transform(train_transform(32, NORM), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DracInputError, match="input_size"):
        train_transform(0, NORM)


def test_crop_size_trains_on_patches_of_the_full_resolution_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 96), dtype=np.uint8)
    mask = (image > 128).astype(np.uint8)
    transform = train_transform(
        96, Normalization(), AugmentConfig.geometric_only(), 0, crop_size=32
    )
    img_t, mask_t = apply_transform(transform, image, mask)
    assert img_t.shape == mask_t.shape == (1, 32, 32)
    with pytest.raises(DracInputError, match="larger than input_size"):
        train_transform(32, Normalization(), crop_size=64)


# --- lesion-aware crops -------------------------------------------------------------------------


def _crop_params(crop: LesionCrop, image: np.ndarray, mask: np.ndarray) -> tuple[int, ...]:
    params = {"shape": image.shape}
    return crop.get_params_dependent_on_data(params, {"image": image, "mask": mask})["crop_coords"]


def _lesion_crops(foreground_p: float, draws: int = 400) -> float:
    """Share of 32 px crops of a 128 px image that hold its one 2 x 2 lesion."""
    image = np.zeros((128, 128), np.uint8)
    mask = np.zeros_like(image)
    mask[20:22, 100:102] = 1
    compose = A.Compose(
        [LesionCrop(32, 32, foreground_p=foreground_p, strict=True)], strict=True, seed=5
    )
    return float(np.mean([compose(image=image, mask=mask)["mask"].any() for _ in range(draws)]))


def test_lesion_crop_centres_the_requested_share_of_crops_on_a_lesion():
    # A random 32 px crop holds this lesion with probability about (33/97)^2 = 0.12.
    assert _lesion_crops(0.0) < 0.2
    assert _lesion_crops(1.0) == 1.0
    assert 0.5 < _lesion_crops(0.5) < 0.65  # 0.5 centred + 0.5 x 0.12 by chance


def test_lesion_crop_is_centred_on_the_lesion_pixel_and_stays_inside_the_image():
    image = np.zeros((100, 120), np.uint8)
    mask = np.zeros_like(image)
    mask[50, 60] = 1
    crop = LesionCrop(32, 48, foreground_p=1.0)
    crop.set_random_seed(0)
    assert _crop_params(crop, image, mask) == (60 - 24, 50 - 16, 60 + 24, 50 + 16)
    for y, x in [(0, 0), (99, 119), (0, 119), (99, 0), (3, 60)]:
        mask[:] = 0
        mask[y, x] = 1
        x0, y0, x1, y1 = _crop_params(crop, image, mask)
        assert 0 <= x0 <= x < x1 <= 120 and 0 <= y0 <= y < y1 <= 100
        assert (x1 - x0, y1 - y0) == (48, 32)


def test_lesion_crop_without_lesion_is_random_and_inside():
    image = np.zeros((64, 64), np.uint8)
    crop = LesionCrop(16, 16, foreground_p=1.0)
    crop.set_random_seed(1)
    corners = {_crop_params(crop, image, np.zeros_like(image))[:2] for _ in range(50)}
    assert len(corners) > 10
    assert all(0 <= x <= 48 and 0 <= y <= 48 for x, y in corners)
    with pytest.raises(DracInputError, match="larger than the image"):
        _crop_params(LesionCrop(80, 16), image, np.zeros_like(image))
    with pytest.raises(DracInputError, match="probability"):
        LesionCrop(16, 16, foreground_p=1.5)


@pytest.mark.parametrize(
    ("changes", "views"),
    [
        ({}, ("identity", "hflip")),  # the method's: flips and +-45 degrees
        ({"hflip_p": 0.0}, ("identity",)),
        (
            {"rotate_limit": 90.0},
            ("identity", "hflip", "rot90", "rot270", "transpose", "antitranspose"),
        ),
        ({"rotate_limit": 180.0}, tuple(TRANSFORMS)),
        ({"rotate_limit": 180.0, "hflip_p": 0.0}, ("identity", "rot90", "rot180", "rot270")),
        ({"rotate_limit": 180.0, "rotate_p": 0.0}, ("identity", "hflip")),
    ],
)
def test_invariant_views_follow_the_training_augmentation(changes, views):
    assert invariant_views(AugmentConfig(**changes)) == views
