"""The job input: one Grand Challenge job folder as the platform lays it out (``inputs.json``
and ``images/uw-octa-image/<uuid>.mha``), holding a phantom UW-OCTA angiogram
(:mod:`drac_algo.tools.synth`), as ``test/container/make_fixtures.py`` writes the container
test's job."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from drac_algo.tools.synth import generate_case

SLUG = "uw-octa-image"
RELATIVE_PATH = f"images/{SLUG}"


def write_job(folder: Path, side: int, seed: int) -> Path:
    """Write a job for one ``side`` x ``side`` uint8 phantom image (seed ``seed``) to ``folder``
    (created; readable by any uid: a container's user reads it through a read-only mount).
    The image's uuid is derived from ``side`` and ``seed``, so the same job gets the same name.
    Returns the image file."""
    pixels = generate_case(np.random.default_rng(seed), side)[0]
    pk = str(uuid.uuid5(uuid.NAMESPACE_URL, f"drac-algo/jobcost/{side}/{seed}"))
    image_dir = folder / RELATIVE_PATH
    image_dir.mkdir(parents=True)
    image_file = image_dir / f"{pk}.mha"
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(image_file), useCompression=True)
    # One socket value, as the platform writes it (see drac_algo/serve/gc_io.py).
    inputs = [
        {
            "pk": 1,
            "file": None,
            "image": {"pk": pk, "name": f"phantom-{side}-seed{seed}.png"},
            "value": None,
            "interface": {
                "pk": 1,
                "title": "UW-OCTA image",
                "slug": SLUG,
                "kind": "Image",
                "super_kind": "Image",
                "relative_path": RELATIVE_PATH,
                "description": "Ultra-wide-field OCT angiography en-face image",
                "default_value": None,
                "look_up_table": None,
                "overlay_segments": [],
            },
        }
    ]
    (folder / "inputs.json").write_text(json.dumps(inputs, indent=2) + "\n", encoding="utf-8")
    for path in (folder, *folder.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return image_file
