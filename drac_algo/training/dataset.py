"""A torch dataset for one lesion task: images and that class's masks, decoded once and held in
memory as uint8 (109 DRAC images at 1024 x 1024 are about 220 MB with their masks)."""

import random
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from drac_algo.data.images import load_image
from drac_algo.data.release import Case, load_case_masks
from drac_algo.training.augment import to_tensors


@dataclass(frozen=True)
class Sample:
    case_id: int
    image: np.ndarray  # (H, W) uint8
    mask: np.ndarray  # (H, W) uint8 in {0, 1}

    @property
    def positive(self) -> bool:
        return bool(self.mask.any())


def load_samples(cases: Sequence[Case], class_index: int) -> list[Sample]:
    """Decode each case's image and its mask for ``class_index`` (missing file = empty mask)."""
    samples = []
    for case in cases:
        pixels = load_image(case.image).pixels
        mask = load_case_masks(case, pixels.shape)[class_index]
        samples.append(Sample(case.case_id, pixels, mask))
    return samples


class LesionDataset(Dataset):
    """Items are ``(image, mask)`` float32 tensors of shape (1, S, S): the image normalised, the
    mask in {0, 1}.

    ``length`` (default: one item per sample) sets the items per epoch: item ``i`` is sample
    ``i % len(samples)``, so a shuffled epoch of ``length`` items visits every sample
    ``length / len(samples)`` times, each time with its own augmentation.

    Augmentation is reproducible and independent of worker count and of resuming: each item
    seeds the transform from ``(seed, epoch, index)``. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: A.Compose,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if not samples:
            raise ValueError("LesionDataset needs at least one sample")
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.length = len(self.samples) if length is None else length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index % len(self.samples)]
        item_seed = (self.seed * 1_000_003 + self.epoch * 10_007 + index) % 2**63
        # One generator shared by every transform in the pipeline, so their draws differ.
        self.transform.set_random_state(np.random.default_rng(item_seed), random.Random(item_seed))
        out = self.transform(image=sample.image, mask=sample.mask)
        return to_tensors(out["image"], out["mask"])
