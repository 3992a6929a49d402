"""Helpers the test modules share: the one way to build a tiny model bundle, random test images
and Grand Challenge job folders, running ``process.py``, and what a refused command looks like.

test/ is not a package: pytest puts this folder on ``sys.path`` (``rootdir``-relative "prepend"
import mode), so test modules and ``conftest.py`` say ``from helpers import ...``. Fixtures built
on these live in ``conftest.py``; test modules never import fixtures from each other.
"""

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import SimpleITK as sitk
import torch
from click.testing import CliRunner, Result

from drac_algo.bundle.manifest import MANIFEST, TTA_NAMES, Bundle, ClassEntry, MemberSpec
from drac_algo.bundle.store import save_bundle
from drac_algo.common.classes import BY_INDEX, LESION_CLASSES
from drac_algo.networks.models import build_network
from drac_algo.networks.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
# The container test's trained bundle: 3 classes, 1 tiny LCNet member each at 128 px, tied ONNX
# files. Its outputs are the golden files in test/container/expected: copy it, never edit it.
CONTAINER_BUNDLE = REPO / "test" / "container" / "model"

TINY = ModelSpec("unet", "tu-mobilenetv3_small_050", encoder_depth=5, decoder_channels=(16,) * 5)
SIZE = 40  # random test image side; tiny bundles run at 32, so every image is resized both ways
SLUGS = {c.index: c.slug for c in LESION_CLASSES}
# Zeroed output head plus this bias: IRMA is positive everywhere, NV nowhere; NA keeps random
# weights. So two classes have known masks and the third a real, input-dependent one.
KNOWN_HEADS = {1: 6.0, 3: -6.0}


# --- model bundles ----------------------------------------------------------------------------


def tiny_manifest(classes=(1, 2, 3), *, members=1, input_size=32, tta=TTA_NAMES, model=TINY):
    """A :class:`Bundle` of ``members`` tiny Unet members per class (threshold 0.5, components of
    2 px or more, no hole filling). Member files are ``<key>.pt``, or ``<key>_<i>.pt`` when a
    class has more than one."""
    entries = {}
    for index in classes:
        key = BY_INDEX[index].key
        files = [f"{key}.pt"] if members == 1 else [f"{key}_{i}.pt" for i in range(members)]
        specs = [MemberSpec(f, model, input_size, tta=tuple(tta)) for f in files]
        entries[index] = ClassEntry(index, key, 0.5, 2, False, specs)
    return Bundle(entries)


def write_bundle(folder, bundle=None, *, heads=KNOWN_HEADS, onnx=False, seed=0) -> Path:
    """Save ``bundle`` (default :func:`tiny_manifest`) into ``folder`` with freshly initialised
    networks (torch seed ``seed``, built in member order). Every member of a class in ``heads``
    gets a zeroed output head with that bias (``heads={}``: all random). ``onnx`` adds the ONNX
    files as ``drac-onnx-export`` does. Returns ``folder``."""
    bundle = tiny_manifest() if bundle is None else bundle
    torch.manual_seed(seed)
    states = {}
    for index, member in bundle.members():
        state = build_network(member.model).state_dict()
        if index in heads:
            state["segmentation_head.0.weight"].zero_()
            state["segmentation_head.0.bias"].fill_(heads[index])
        states[member.file] = state
    folder = Path(folder)
    save_bundle(bundle, folder, states)
    if onnx:
        from drac_algo.training.onnx_export import add_onnx

        add_onnx(folder)
    return folder


def copy_container_bundle(folder, *, onnx=True) -> Path:
    """A writable copy of :data:`CONTAINER_BUNDLE` in ``folder``; ``onnx=False`` makes it a
    bundle trained before the ONNX backend existed (weights and manifest only)."""
    folder = Path(folder)
    if onnx:
        return Path(shutil.copytree(CONTAINER_BUNDLE, folder))
    folder.mkdir(parents=True)
    for path in CONTAINER_BUNDLE.glob("*.pt"):
        shutil.copy(path, folder / path.name)
    manifest = json.loads((CONTAINER_BUNDLE / MANIFEST).read_text())
    for entry in manifest["classes"].values():
        for member in entry["members"]:
            del member["onnx"]
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


# --- random inputs (phantom data, the synth's, comes from the phantom_release fixture) ------


def gray(seed, shape=(SIZE, SIZE)):
    """A random ``uint8`` image of ``shape``, the same for the same ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_png(path, array):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def write_sitk(path, array, spacing=None, origin=None, direction=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    if spacing:
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def write_job(folder, image_name="5a3e-uuid.mha", array=None, **geometry):
    """A Grand Challenge job folder: inputs.json with an image socket and a value socket."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = [
        {
            "pk": 2,
            "file": None,
            "image": None,
            "value": 61,
            "interface": {
                "slug": "age-in-years",
                "kind": "Integer",
                "super_kind": "Value",
                "relative_path": "age-in-years.json",
            },
        },
        {
            "pk": 1,
            "file": None,
            "image": {"pk": "5a3e", "name": "086.png"},
            "value": None,
            "interface": {
                "slug": "uw-octa-image",
                "kind": "Image",
                "super_kind": "Image",
                "relative_path": "images/uw-octa-image",
            },
        },
    ]
    (folder / "inputs.json").write_text(json.dumps(entries))
    (folder / "age-in-years.json").write_text("61")
    image = gray(7) if array is None else array
    write_sitk(folder / "images/uw-octa-image" / image_name, image, **geometry)
    return folder


# --- running commands -------------------------------------------------------------------------


def torchrun_environment(monkeypatch, world: int = 2, rank: int = 0) -> None:
    """The environment torchrun gives rank ``rank`` of ``world`` processes (no store behind
    MASTER_ADDR: for code that refuses before it connects)."""
    for name, value in {
        "WORLD_SIZE": world, "RANK": rank, "LOCAL_RANK": rank,
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, str(value))


def invoke(*args):
    """``process.py`` with these arguments, in this process."""
    from process import main

    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result


def rejected(result: Result | subprocess.CompletedProcess, *fragments) -> str:
    """The stderr of a command that refused its input, a click ``Result`` or a finished
    subprocess (run with ``text=True``): exit status 2, no exception but ``SystemExit``, no
    traceback, ``error: ...`` last on stderr, and every fragment (``str()``-ed) in
    stderr."""
    if isinstance(result, subprocess.CompletedProcess):
        code, stderr, exception = result.returncode, result.stderr, None
        output = result.stdout
    else:
        code, stderr, exception = result.exit_code, result.stderr, result.exception
        output = result.output
    assert code == 2, (code, output, stderr, exception)
    assert exception is None or isinstance(exception, SystemExit), exception
    assert "Traceback" not in stderr, stderr
    # The message may go on in indented lines (a list of problems); nothing is logged after it.
    lines = [line for line in stderr.splitlines() if line and not line[0].isspace()]
    assert lines and lines[-1].startswith("error: "), stderr
    for fragment in fragments:
        assert str(fragment) in stderr, (fragment, stderr)
    return stderr


def results_of(folder):
    """The ``results.json`` a run wrote in ``folder``."""
    return json.loads((Path(folder) / "results.json").read_text())


def tree(folder):
    """Every file below ``folder`` (hidden ones included), relative, sorted; but the run log
    ``process.log``, which every run appends to, failed ones too (its own tests check it)."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in Path(folder).rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != "process.log"
    )


def read_png_mask(path):
    """A 0/255 mask PNG as ``uint8`` {0, 1}."""
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8 and set(np.unique(stored)) <= {0, 255}
    return stored // 255


def counting_predictions(monkeypatch):
    """Record which images the engine runs in this process (names, in order)."""
    from drac_algo.engine.predictor import Predictor

    ran = []
    original = Predictor.predict_many

    def predict_many(self, paths, **kwargs):
        ran.extend(Path(p).name for p in paths)
        return original(self, paths, **kwargs)

    monkeypatch.setattr(Predictor, "predict_many", predict_many)
    return ran


# --- report pages -----------------------------------------------------------------------------


@dataclass
class ReportRow:
    """One ``<tr data-case>`` of a report's case table: the case, each cell's ``data-v``
    (None for a thumbnail cell), and the thumbnails' ``src`` and links' ``href``."""

    case: str
    values: list = field(default_factory=list)
    images: list = field(default_factory=list)
    links: list = field(default_factory=list)


class ReportParser(HTMLParser):
    """What the tests read from a report page (as written, or as Chromium dumps it): the
    ``<body>``'s attributes, the sortable headings (``data-col`` -> their attributes), the case
    rows in order (:class:`ReportRow`), every ``<img src>`` on the page, and the text of the
    broken-image banner (None while it is hidden)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.body: dict = {}
        self.headings: dict = {}
        self.rows: list[ReportRow] = []
        self.images: list[str] = []
        self.banner: str | None = None
        self._row: ReportRow | None = None
        self._in_banner = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "th" and "data-col" in a:
            self.headings[int(a["data-col"])] = a
        elif tag == "tr" and "data-case" in a:
            self._row = ReportRow(a["data-case"])
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._row.values.append(a.get("data-v"))
        elif tag == "img":
            self.images.append(a["src"])
            if self._row is not None:
                self._row.images.append(a["src"])
        elif tag == "a" and self._row is not None:
            self._row.links.append(a["href"])
        elif tag == "p" and a.get("id") == "broken" and "hidden" not in a:
            self._in_banner, self.banner = True, ""

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        elif tag == "p":
            self._in_banner = False

    def handle_data(self, data):
        if self._in_banner:
            self.banner += data


def read_report(path) -> ReportParser:
    """The report page at ``path``, parsed (:class:`ReportParser`)."""
    return ReportParser(Path(path).read_text(encoding="utf-8"))
