"""Augmentation and input preparation (albumentations 2.0.8).

Input: an image ``(H, W)`` uint8 (one channel) and optionally a mask ``(H, W)`` uint8 in {0, 1}.
Output of :func:`apply_transform`: image tensor ``(1, S, S)`` float32, normalised as
``(pixels / 255 - mean) / std`` (:class:`~drac_algo.networks.models.Normalization`), and mask tensor
``(1, S, S)`` float32 in {0, 1} (``S`` = the input size), or ``None`` without a mask.

The training pipeline is the method's: horizontal flip, rotation, random crop (lesion-aware on
request, :class:`LesionCrop`), Gaussian noise,
random brightness/contrast, one of {elastic, grid distortion, affine}, then normalisation.
Geometric transforms move the mask with the image (nearest-neighbour, so it stays binary);
intensity transforms touch the image only. The random crop needs an image larger than the
crop: the image is first resized to the input size (as in evaluation), then with probability
``crop_p`` zoomed by a random factor in ``[1, crop_zoom_max]`` and cropped back to the input
size at a random place (scale-then-crop). Validation and inference do not use albumentations:
they go through :mod:`drac_algo.data.preprocess`, whose resize and normalisation give a square image
exactly what this pipeline gives it with every augmentation switched off (tested).

Every transform is built with ``strict=True`` and so is the ``Compose``: a misspelt or
pre-2.0 argument name raises instead of being dropped with a warning. ``OneOf`` takes no
``strict`` argument in 2.0.8; the strict ``Compose`` checks the transforms inside it.

Albumentations transforms carry their own random generator, which a DataLoader copies into
every worker unchanged: reseed each worker's copy (``transform.set_random_seed(seed)`` from a
``worker_init_fn``) or the workers repeat each other's augmentations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop

from drac_algo.common.errors import DracInputError
from drac_algo.engine.tta import TRANSFORMS
from drac_algo.networks.spec import Normalization

REFERENCE_SIZE = 1024  # the DRAC image size, at which AugmentConfig's elastic values are given
# AugmentConfig's probabilities: of the transforms that move the mask with the image, and of
# those that touch the image only.
GEOMETRIC_PROBABILITIES = ("hflip_p", "rotate_p", "crop_p", "distortion_p")
INTENSITY_PROBABILITIES = ("noise_p", "brightness_contrast_p")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of the training augmentation (a recipe's ``[augment]``).

    Probabilities are in [0, 1]; ``distortion_p`` is the chance that one of elastic / grid /
    affine is applied (each then equally likely). Noise std is a fraction of 255.
    """

    hflip_p: float = 0.5
    rotate_p: float = 0.5
    rotate_limit: float = 45.0  # degrees, either way
    crop_p: float = 0.5
    crop_zoom_max: float = 1.25
    noise_p: float = 0.2
    noise_std_range: tuple[float, float] = (0.01, 0.05)
    brightness_contrast_p: float = 0.3
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    distortion_p: float = 0.3
    # Elastic strength as at 1024 x 1024 (REFERENCE_SIZE): alpha 3000 with sigma 50 displaces
    # pixels by about 3 px on average (max about 10). Other input sizes scale sigma with the
    # size and alpha with its square, which keeps the displacement the same fraction of the image.
    elastic_alpha: float = 3000.0
    elastic_sigma: float = 50.0
    grid_distort_limit: float = 0.15
    affine_scale: tuple[float, float] = (0.9, 1.1)
    affine_translate: float = 0.05  # fraction of the image size, either way
    affine_shear: float = 5.0  # degrees, either way

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise DracInputError(f"{f.name} must be numeric; got {value!r}")
            if f.name.endswith("_p") and not 0 <= value <= 1:
                raise DracInputError(f"{f.name} is a probability in [0, 1]; got {value}")
            if any(v < 0 for v in values):
                raise DracInputError(f"{f.name} must be >= 0; got {value!r}")
        for name in ("noise_std_range", "affine_scale"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise DracInputError(f"{name} must be [low, high]; got {list(low_high)}")
        if self.crop_zoom_max < 1:
            raise DracInputError(f"crop_zoom_max must be >= 1; got {self.crop_zoom_max}")
        if self.affine_scale[0] <= 0:
            raise DracInputError(f"affine_scale must be > 0; got {self.affine_scale}")

    @classmethod
    def switched(cls, *, geometric: bool, intensity: bool) -> AugmentConfig:
        """Every geometric transform (:data:`GEOMETRIC_PROBABILITIES`) always on or always off,
        and the same for every intensity transform; the strengths stay the defaults."""
        chance = {True: 1.0, False: 0.0}
        return cls(
            **dict.fromkeys(GEOMETRIC_PROBABILITIES, chance[geometric]),
            **dict.fromkeys(INTENSITY_PROBABILITIES, chance[intensity]),
        )

    @classmethod
    def geometric_only(cls) -> AugmentConfig:
        """All geometric transforms always on, intensity transforms off (for tests/previews)."""
        return cls.switched(geometric=True, intensity=False)

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every transform off: the pipeline only resizes, crops and normalises (what
        :mod:`drac_algo.data.preprocess` gives a square image; tests compare the two)."""
        return cls.switched(geometric=False, intensity=False)


class LesionCrop(BaseCrop):
    """A ``height`` x ``width`` crop that, with probability ``foreground_p``, is centred on a
    lesion pixel drawn uniformly from the mask (nnU-Net's foreground oversampling; the crop is
    shifted inwards where the centre is near the border), and is otherwise at a uniformly
    random place. A mask without lesion pixels always gets a random crop.

    Why: IRMA covers about 0.1 % of a DRAC image and NV about 0.6 %, so most random crops hold
    none of the lesion (32 % of 128 px IRMA crops of 256 px phantom images held any), and the
    network mostly learns to predict nothing.
    """

    class InitSchema(BaseCrop.InitSchema):
        height: int
        width: int
        foreground_p: float

    def __init__(self, height: int, width: int, foreground_p: float = 0.0, p: float = 1.0):
        super().__init__(p=p)
        if height < 1 or width < 1:
            raise DracInputError(f"LesionCrop size must be >= 1; got {height} x {width}")
        if not 0.0 <= foreground_p <= 1.0:
            raise DracInputError(f"foreground_p is a probability in [0, 1]; got {foreground_p}")
        self.height = height
        self.width = width
        self.foreground_p = foreground_p

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image_h, image_w = params["shape"][:2]
        if self.height > image_h or self.width > image_w:
            raise DracInputError(
                f"crop {self.height} x {self.width} is larger than the image {image_h} x {image_w}"
            )
        mask = data.get("mask")
        centred = (
            self.foreground_p > 0
            and mask is not None
            and self.py_random.random() < self.foreground_p
        )
        lesion = np.flatnonzero(mask) if centred else np.empty(0, np.int64)
        if len(lesion):
            y, x = divmod(int(lesion[self.py_random.randrange(len(lesion))]), mask.shape[1])
            y_min = min(max(y - self.height // 2, 0), image_h - self.height)
            x_min = min(max(x - self.width // 2, 0), image_w - self.width)
        else:
            y_min = self.py_random.randint(0, image_h - self.height)
            x_min = self.py_random.randint(0, image_w - self.width)
        return {"crop_coords": (x_min, y_min, x_min + self.width, y_min + self.height)}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "foreground_p")


def _normalize(norm: Normalization) -> A.Normalize:
    # albumentations computes (img - mean * max) / (std * max): the same as (img / 255 - m) / s.
    return A.Normalize(mean=norm.mean, std=norm.std, max_pixel_value=255.0, p=1.0, strict=True)


def _check_size(input_size: int) -> None:
    if not isinstance(input_size, int) or input_size < 1:
        raise DracInputError(f"input_size must be a positive integer; got {input_size!r}")


def train_transform(
    input_size: int,
    norm: Normalization,
    cfg: AugmentConfig | None = None,
    seed: int | None = None,
    crop_size: int | None = None,
    foreground_fraction: float = 0.0,
) -> A.Compose:
    """The training pipeline for images resized to ``input_size`` x ``input_size``.

    ``crop_size`` (default ``input_size``): the random crop taken after the geometric
    transforms, so training sees ``crop_size`` patches of the full-resolution image (the
    networks are fully convolutional; validation and inference run on whole images).
    ``foreground_fraction``: the share of crops centred on a lesion pixel (:class:`LesionCrop`).
    Call it as ``transform(image=image, mask=mask)`` or through :func:`apply_transform`.
    ``seed`` fixes the pipeline's random generator (``None``: fresh randomness).
    """
    _check_size(input_size)
    crop = input_size if crop_size is None else crop_size
    _check_size(crop)
    if crop > input_size:
        raise DracInputError(f"crop_size {crop} is larger than input_size {input_size}")
    cfg = cfg or AugmentConfig()
    scale = input_size / REFERENCE_SIZE
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
    transforms = [
        A.Resize(input_size, input_size, interpolation=cv2.INTER_LINEAR, p=1.0, strict=True),
        A.HorizontalFlip(p=cfg.hflip_p, strict=True),
        A.Rotate(limit=cfg.rotate_limit, p=cfg.rotate_p, strict=True, **border),
        A.RandomScale(
            scale_limit=(0.0, cfg.crop_zoom_max - 1.0),
            interpolation=cv2.INTER_LINEAR,
            p=cfg.crop_p,
            strict=True,
        ),
        # The method's RandomCrop: a crop_size patch (or, at crop_size = input_size, a no-op
        # unless RandomScale enlarged the image), lesion-centred for foreground_fraction of them.
        LesionCrop(crop, crop, foreground_p=foreground_fraction, p=1.0, strict=True),
        A.GaussNoise(std_range=cfg.noise_std_range, p=cfg.noise_p, strict=True),
        A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_limit,
            contrast_limit=cfg.contrast_limit,
            p=cfg.brightness_contrast_p,
            strict=True,
        ),
        A.OneOf(
            [
                A.ElasticTransform(
                    alpha=cfg.elastic_alpha * scale**2,
                    sigma=cfg.elastic_sigma * scale,
                    p=1.0,
                    strict=True,
                    **border,
                ),
                A.GridDistortion(
                    distort_limit=cfg.grid_distort_limit, p=1.0, strict=True, **border
                ),
                A.Affine(
                    scale=cfg.affine_scale,
                    translate_percent=(-cfg.affine_translate, cfg.affine_translate),
                    shear=(-cfg.affine_shear, cfg.affine_shear),
                    p=1.0,
                    strict=True,
                    **border,
                ),
            ],
            p=cfg.distortion_p,
        ),
        _normalize(norm),
    ]
    return A.Compose(transforms, strict=True, seed=seed)


def to_tensors(
    image: np.ndarray, mask: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(H, W)`` float32 normalised image -> ``(1, H, W)`` float32 tensor; ``(H, W)`` mask in
    {0, 1} -> ``(1, H, W)`` float32 tensor in {0, 1} (``None`` stays ``None``)."""
    if image.ndim != 2:
        raise DracInputError(f"expected a one-channel (H, W) image; got shape {image.shape}")
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(0)
    if mask is None:
        return image_t, None
    if mask.shape != image.shape:
        raise DracInputError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise DracInputError(
            f"mask values must be in {{0, 1}}; found range [{mask.min()}, {mask.max()}]"
        )
    mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).unsqueeze(0)
    return image_t, mask_t


def apply_transform(
    transform: A.Compose, image: np.ndarray, mask: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``transform`` on a ``(H, W)`` uint8 image (and ``(H, W)`` uint8 {0, 1} mask) and
    return ``(1, S, S)`` float32 tensors (see :func:`to_tensors`)."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise DracInputError(
            f"expected an (H, W) uint8 image; got shape {image.shape}, dtype {image.dtype}"
        )
    if mask is None:
        out = transform(image=image)
        return to_tensors(out["image"])
    if mask.shape != image.shape:
        raise DracInputError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    out = transform(image=image, mask=mask.astype(np.uint8, copy=False))
    return to_tensors(out["image"], out["mask"])


def invariant_views(cfg: AugmentConfig) -> tuple[str, ...]:
    """The test-time views (:data:`drac_algo.engine.tta.TRANSFORMS` names) a network trained with
    ``cfg``
    has seen: identity; ``hflip`` when horizontal flips are on; the 90-degree rotations only
    when the random rotation reaches 90 degrees (``rot180`` 180 degrees); the views composed of
    a flip and a rotation (``vflip`` = hflip + rot180, the transposes = hflip + rot90) only when
    both parts are covered. The method's augmentation (flips, +-45 degree rotations) gives
    identity and hflip: a UW-OCTA scan has an orientation (left and right eyes mirror each other;
    vertical flips and quarter turns never occur), and views the network never saw pull the
    ensemble down instead of up."""
    flip = cfg.hflip_p > 0
    rotates = cfg.rotate_p > 0
    quarter = rotates and cfg.rotate_limit >= 90
    half = rotates and cfg.rotate_limit >= 180
    seen = {
        "identity": True,
        "hflip": flip,
        "vflip": flip and half,
        "rot90": quarter,
        "rot180": half,
        "rot270": quarter,
        "transpose": flip and quarter,
        "antitranspose": flip and quarter,
    }
    return tuple(name for name in TRANSFORMS if seen[name])
