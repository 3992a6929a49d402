"""Regenerate the container test's fixtures under test/container/: a small model bundle trained on
phantom data, the test inputs of both input modes, and the expected outputs.

    .venv/bin/python test/container/make_fixtures.py                  # everything: 1-2 min
    .venv/bin/python test/container/make_fixtures.py --expected-only  # keep model/, inputs/

Each step runs the project's own command (printed before it runs), on the CPU, single-threaded
(OMP_NUM_THREADS=1: the same floating-point summation order on any machine):

1. ``python -m drac_algo.synth WORK/data --n-train 24 --n-test 3 --size 128 --seed 0``
2. ``python -m train --data WORK/data --out WORK/run --config test/container/bundle.toml
   --device cpu`` -> ``model/`` (manifest.json + one state dict per class, about 2.7 MB, and
   each one's verified ONNX export, 1.7 MB)
3. ``inputs/batch/``: the three phantom test images (``003.png 605.png 1324.png``: integer
   names, one of 4 digits). ``inputs/gc-job/``: one more phantom image (``python -m
   drac_algo.tools.synth WORK/gc --n-train 0 --n-test 1 --size 256 --seed 1``) cut to 224 x 256
   (H x W; not square, not the model's input size), saved as ``.mha`` with a uuid name,
   non-default spacing, origin and direction, in its socket folder beside ``inputs.json``, as the
   platform lays out a job.
4. ``python process.py --input inputs/<mode> --output expected/<run> --model-dir model
   --device cpu --precision fp32`` (default D4 TTA) for each run of :data:`RUNS`, from a scratch
   folder that links to the fixtures so the paths in ``results.json`` are short and stable; the
   ``gc-job-sockets`` run uses a copy of the model with ``platform-sockets.json`` as its
   ``platform.json`` (other socket names, as a retargeting ``model.tar.gz`` carries them).
   Overlays (large, derived from the masks) and hidden marker files are then removed from
   ``expected/``.

The training run is seeded, so the same library versions on the same machine give the same
weights; other machines may differ in the last bits, which changes the model (commit the new
one with its expected outputs) but never the pass/fail of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from compare import OVERLAYS_DIR, PROCESS_LOG, REPORT_DIR, REPORT_FILE

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / "bundle.toml"
MODEL, INPUTS, EXPECTED = HERE / "model", HERE / "inputs", HERE / "expected"
MODES = ("gc-job", "batch")
# Each container test run: name -> (inputs/<mode>, the model's platform.json or None).
PLATFORM_SOCKETS = HERE / "platform-sockets.json"
RUNS = {"gc-job": ("gc-job", None), "batch": ("batch", None)}
RUNS["gc-job-sockets"] = ("gc-job", PLATFORM_SOCKETS)

# The Grand Challenge job: one image socket, laid out as the platform writes it.
GC_SLUG = "uw-octa-image"
GC_IMAGE_PK = "3f0b6c2e-8d4a-4f57-9b1e-6a2d5c7e9f10"
GC_SHAPE = (224, 256)  # H x W
GC_SPACING = (0.046875, 0.046875)  # 12 mm over 256 px
GC_ORIGIN = (-6.0, -5.25)
GC_DIRECTION = (1.0, 0.0, 0.0, -1.0)  # rows run bottom to top: any writer that drops it is caught


def run(cmd: list[str], cwd: Path = REPO) -> None:
    shown = " ".join(f"'{c}'" if " " in c else c for c in cmd)
    print(f"\n$ {shown}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def replace_dir(target: Path, source: Path) -> None:
    """Put ``source``'s contents at ``target``, replacing what was there."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def synth(out: Path, n_train: int, n_test: int, size: int, seed: int) -> Path:
    """Write phantom data; returns its test image folder."""
    run(
        [sys.executable, "-m", "drac_algo.tools.synth", str(out), "--n-train", str(n_train)]
        + ["--n-test", str(n_test), "--size", str(size), "--seed", str(seed), "--no-preview"]
    )
    return out / "A. Segmentation" / "1. Original Images" / "b. Testing Set"


def make_model(work: Path) -> None:
    data = work / "data"
    synth(data, n_train=24, n_test=3, size=128, seed=0)
    run(
        [sys.executable, "-m", "train", "--data", str(data), "--out", str(work / "run")]
        + ["--config", str(CONFIG), "--device", "cpu"]
    )
    replace_dir(MODEL, work / "run" / "model")


def make_batch_inputs(work: Path) -> None:
    test_images = work / "data" / "A. Segmentation" / "1. Original Images" / "b. Testing Set"
    if not test_images.is_dir():
        synth(work / "data", n_train=24, n_test=3, size=128, seed=0)
    names = sorted(p.name for p in test_images.glob("*.png"))
    if not any(len(Path(n).stem) == 4 for n in names):
        raise SystemExit(f"expected a 4-digit case name among the phantom test images: {names}")
    replace_dir(INPUTS / "batch", test_images)


def make_gc_job_inputs(work: Path) -> None:
    import SimpleITK as sitk

    from drac_algo.data.images import load_image

    (source,) = synth(work / "gc", n_train=0, n_test=1, size=256, seed=1).glob("*.png")
    pixels = load_image(source).pixels[: GC_SHAPE[0], : GC_SHAPE[1]]
    job = work / "gc-job"
    relative_path = f"images/{GC_SLUG}"
    (job / relative_path).mkdir(parents=True)
    image = sitk.GetImageFromArray(pixels.copy())
    image.SetSpacing(GC_SPACING)
    image.SetOrigin(GC_ORIGIN)
    image.SetDirection(GC_DIRECTION)
    sitk.WriteImage(image, str(job / relative_path / f"{GC_IMAGE_PK}.mha"), useCompression=True)
    # One socket value as the platform writes it (see drac_algo/serve/gc_io.py).
    inputs = [
        {
            "pk": 1,
            "file": None,
            "image": {"pk": GC_IMAGE_PK, "name": f"uw-octa-{source.stem}.png"},
            "value": None,
            "interface": {
                "pk": 1,
                "title": "UW-OCTA image",
                "slug": GC_SLUG,
                "kind": "Image",
                "super_kind": "Image",
                "relative_path": relative_path,
                "description": "Ultra-wide-field OCT angiography en-face image",
                "default_value": None,
                "look_up_table": None,
                "overlay_segments": [],
            },
        }
    ]
    (job / "inputs.json").write_text(json.dumps(inputs, indent=2) + "\n", encoding="utf-8")
    replace_dir(INPUTS / "gc-job", job)


def make_expected(work: Path) -> None:
    scratch = work / "scratch"
    scratch.mkdir()
    (scratch / "inputs").symlink_to(INPUTS)
    (scratch / "model").symlink_to(MODEL)
    shutil.copytree(MODEL, scratch / "model-sockets")
    shutil.copy(PLATFORM_SOCKETS, scratch / "model-sockets" / "platform.json")
    for name, (mode, platform) in RUNS.items():
        run(
            [sys.executable, str(REPO / "process.py"), "--input", f"inputs/{mode}"]
            + ["--output", f"expected/{name}"]
            + ["--model-dir", "model" if platform is None else "model-sockets"]
            + ["--device", "cpu", "--precision", "fp32"],
            cwd=scratch,
        )
        out = scratch / "expected" / name
        # What compare.py derives from results.json or only checks for (the overlays, the
        # report, the log) is not an expected file: keep the masks and results.json alone.
        for derived in (OVERLAYS_DIR, REPORT_DIR):
            shutil.rmtree(out / derived, ignore_errors=True)
        for name_ in (REPORT_FILE, PROCESS_LOG):
            (out / name_).unlink(missing_ok=True)
        for marker in out.rglob(".*"):
            marker.unlink()
    replace_dir(EXPECTED, scratch / "expected")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--expected-only",
        action="store_true",
        help="keep the checked-in model/ and inputs/; only rewrite expected/",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="drac-algo-fixtures.") as tmp:
        work = Path(tmp)
        if not args.expected_only:
            make_model(work)
            make_batch_inputs(work)
            make_gc_job_inputs(work)
        make_expected(work)
    sizes = {
        p.relative_to(HERE).as_posix(): p.stat().st_size
        for folder in (MODEL, INPUTS, EXPECTED)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    print(f"\nfixtures in {HERE}: {len(sizes)} files, {sum(sizes.values()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
