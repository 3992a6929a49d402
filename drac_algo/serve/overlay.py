"""Colour overlays of lesion masks on a grey OCTA image, for previews and inference outputs.

Fixed colours (RGB), chosen to stay apart for common colour-vision deficiencies and against a
grey image:

- 1 IRMA: amber ``(255, 190, 0)``
- 2 NA (nonperfusion areas): azure ``(0, 150, 255)``
- 3 NV (neovascularisation): magenta ``(235, 0, 160)``

Classes are painted largest-first (NA, then NV, then IRMA) so small lesions stay visible on
top of nonperfusion. Outlines lie on the mask's own border pixels, so nothing outside a mask
changes.
"""

import cv2
import numpy as np

from drac_algo.common.classes import BY_INDEX
from drac_algo.common.errors import DracInputError

CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (255, 190, 0),
    2: (0, 150, 255),
    3: (235, 0, 160),
}
_PAINT_ORDER = (2, 3, 1)


def overlay(
    image: np.ndarray,
    masks: dict[int, np.ndarray],
    outline: bool = True,
    alpha: float = 0.35,
    thickness: int = 1,
) -> np.ndarray:
    """Blend class colours into a grey image where the masks are set.

    image: (H, W) uint8. masks: class index (1, 2, 3) -> (H, W) mask, any non-zero value
    counts as lesion (so {0, 1} and {0, 255} both work). Inside a mask the pixel becomes
    ``(1 - alpha) * grey + alpha * colour``; with ``outline`` the mask's border (``thickness``
    px, drawn with OpenCV contours and kept inside the mask) gets the full colour.
    Returns (H, W, 3) uint8 RGB; pixels outside every mask keep the grey value.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise DracInputError(
            f"overlay needs a (H, W) uint8 image, got shape {image.shape} dtype {image.dtype}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise DracInputError(f"overlay alpha must be in [0, 1], got {alpha}")
    unknown = sorted(set(masks) - set(CLASS_COLOURS))
    if unknown:
        valid = ", ".join(f"{i} ({BY_INDEX[i].key})" for i in CLASS_COLOURS)
        raise DracInputError(f"overlay: unknown class index {unknown}; valid: {valid}")
    out = np.repeat(image[:, :, None], 3, axis=2).astype(np.float32)
    for index in _PAINT_ORDER:
        if index not in masks:
            continue
        mask = np.asarray(masks[index])
        if mask.shape != image.shape:
            raise DracInputError(
                f"overlay: mask for class {index} has shape {mask.shape}, image has {image.shape}"
            )
        on = mask != 0
        if not on.any():
            continue
        colour = np.asarray(CLASS_COLOURS[index], np.float32)
        out[on] = (1.0 - alpha) * out[on] + alpha * colour
        if outline:
            binary = on.astype(np.uint8)
            contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            edge = np.zeros_like(binary)
            cv2.drawContours(edge, contours, -1, 1, max(1, int(thickness)))
            out[(edge != 0) & on] = colour
    return np.rint(out).astype(np.uint8)
