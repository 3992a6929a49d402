"""The plain baseline: the reference row of the ablation (``python -m drac_algo.ablate``).

What a competent newcomer writes in 40 lines, kept deliberately plain: per class an smp ``Unet``
(ResNet-18, random init) on the whole images, smp ``DiceLoss("binary")`` + BCE, Adam 1e-3,
batch 4, random horizontal flip and rot90, the images with the lesion only, threshold 0.5, no
TTA, no threshold tuning, no post-processing. It shares nothing with the product's training or
inference code except the data reader, so it measures what the product adds.
"""

from __future__ import annotations

import numpy as np
import segmentation_models_pytorch as smp
import torch

from drac_algo.training.dataset import Sample

EPOCHS, BATCH, LR = 12, 4, 1e-3


def _batch(samples: list[Sample], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = [], []
    for s in samples:
        image, mask = s.image.astype(np.float32) / 255.0, s.mask.astype(np.float32)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        k = int(rng.integers(4))
        images.append(np.rot90(image, k).copy())
        masks.append(np.rot90(mask, k).copy())
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(masks))[:, None]


def train_baseline(samples: list[Sample], seed: int, epochs: int = EPOCHS) -> torch.nn.Module:
    """One binary Unet trained on the ``samples`` that have the lesion (square, one size)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    positives = [s for s in samples if s.positive]
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)
    dice, bce = smp.losses.DiceLoss("binary"), torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(positives))
        for start in range(0, len(order), BATCH):
            x, y = _batch([positives[i] for i in order[start : start + BATCH]], rng)
            logits = model(x)
            loss = dice(logits, y) + bce(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.inference_mode()
def predict_baseline(model: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    """(N, H, W) uint8 {0, 1} masks at threshold 0.5 for (H, W) uint8 images (sides multiples
    of 32)."""
    masks = []
    for image in images:
        x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
        masks.append((torch.sigmoid(model(x))[0, 0] >= 0.5).numpy().astype(np.uint8))
    return np.stack(masks)
