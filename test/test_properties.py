"""Property tests for every parser of outside data: for any input, a parsed object or a
:class:`DracInputError`, never another exception (issue 21).

Inputs are arbitrary JSON shapes (``st.recursive`` over JSON values, unicode text) written as
the file each parser reads, valid documents with one subtree replaced by such a value, arbitrary
bytes, and generated folder trees with odd names and broken links. The quick tier runs a modest
number of examples per property; the ``slow`` twins run many more.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drac_algo.bundle.manifest import MANIFEST
from drac_algo.bundle.store import load_bundle
from drac_algo.common.datafiles import MAX_DEPTH, parse_json, read_json, read_toml
from drac_algo.common.errors import DracInputError
from drac_algo.data.images import IMAGE_SUFFIXES
from drac_algo.data.release import find_layout, list_cases, list_images
from drac_algo.data.submission import check_team, results_case_list
from drac_algo.serve.gc_io import INPUTS_JSON, find_job_image, read_inputs_json
from drac_algo.serve.job_settings import (
    INPUT_SOCKET_ENV,
    OUTPUT_SOCKETS_ENV,
    PLATFORM_FILE,
    parse_output_specs,
    read_platform_file,
    resolve_job_settings,
)

CONTAINER = Path(__file__).parent / "container"
FIXTURE_BUNDLE = CONTAINER / "model"
FIXTURE_JOB = CONTAINER / "inputs" / "gc-job"
VALID_MANIFEST = json.loads((FIXTURE_BUNDLE / MANIFEST).read_text())
VALID_INPUTS = json.loads((FIXTURE_JOB / INPUTS_JSON).read_text())
VALID_PLATFORM = json.loads((CONTAINER / "platform-sockets.json").read_text())

QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities too: Python's json reads and writes them
    | st.text()
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _paths(value, prefix=()):
    """Every key path into ``value`` (dict keys and list indices), the root included."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _replaced(document, path, value):
    """A deep copy of ``document`` with the subtree at ``path`` replaced by ``value``."""
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return copy


def mutations(document):
    """``document`` with one subtree (any of its key paths) replaced by an arbitrary JSON value;
    sometimes with that key removed instead."""
    paths = list(_paths(document))

    @st.composite
    def mutate(draw):
        path = draw(st.sampled_from(paths))
        if path and isinstance(path[-1], str) and draw(st.booleans()):
            copy = json.loads(json.dumps(document))
            parent = copy
            for key in path[:-1]:
                parent = parent[key]
            del parent[path[-1]]
            return copy
        return _replaced(document, path, draw(JSON))

    return mutate()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for the examples' own subfolders (a function-scoped tmp_path would be shared
    by every example of one test)."""
    return tmp_path_factory.mktemp("properties")


def _fresh(scratch) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


# --- the JSON/TOML readers themselves ------------------------------------------------------


@QUICK
@given(raw=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_parse_json_gives_a_value_or_dracinputerror(raw):
    try:
        value = parse_json(raw, "some.json", expect=None)
    except DracInputError as exc:
        assert "some.json" in str(exc)
    else:
        assert value is None or isinstance(value, bool | int | float | str | list | dict)


@QUICK
@given(depth=st.integers(min_value=MAX_DEPTH + 1, max_value=200_000), opener=st.sampled_from("[{"))
def test_parse_json_refuses_any_depth_past_the_bound(depth, opener):
    raw = '{"a":' * depth + "1" + "}" * depth if opener == "{" else "[" * depth + "]" * depth
    with pytest.raises(DracInputError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_json(raw, "deep.json", expect=None)


@QUICK
@given(text=st.text(max_size=200))
def test_read_toml_gives_tables_or_dracinputerror(scratch, text):
    path = _fresh(scratch) / "x.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(read_toml(path), dict)
    except DracInputError as exc:
        assert str(path) in str(exc)


# --- manifest.json ------------------------------------------------------------------------


def _bundle_folder(scratch, manifest) -> Path:
    folder = _fresh(scratch)
    for member in FIXTURE_BUNDLE.iterdir():
        if member.name != MANIFEST:
            (folder / member.name).symlink_to(member)
    _write_json(folder / MANIFEST, manifest)
    return folder


def _check_manifest(scratch, manifest):
    folder = _bundle_folder(scratch, manifest)
    try:
        bundle = load_bundle(folder)
    except DracInputError as exc:
        assert MANIFEST in str(exc) or str(folder) in str(exc)
    else:
        assert bundle.classes
    shutil.rmtree(folder)


def test_the_unchanged_manifest_loads(scratch):
    assert load_bundle(_bundle_folder(scratch, VALID_MANIFEST)).classes


@QUICK
@given(manifest=JSON | mutations(VALID_MANIFEST))
def test_manifest_gives_a_bundle_or_dracinputerror(scratch, manifest):
    _check_manifest(scratch, manifest)


@pytest.mark.slow
@SLOW
@given(manifest=mutations(VALID_MANIFEST))
def test_manifest_mutations_many(scratch, manifest):
    _check_manifest(scratch, manifest)


# --- inputs.json --------------------------------------------------------------------------


def _check_inputs(scratch, entries):
    job = _fresh(scratch)
    shutil.copytree(FIXTURE_JOB / "images", job / "images")
    _write_json(job / INPUTS_JSON, entries)
    try:
        sockets = read_inputs_json(job)
        find_job_image(job)
    except DracInputError as exc:
        assert INPUTS_JSON in str(exc) or "socket" in str(exc)
    else:
        assert isinstance(sockets, list)
    shutil.rmtree(job)


def test_the_unchanged_inputs_json_reads(scratch):
    assert [s.slug for s in read_inputs_json(FIXTURE_JOB)] == ["uw-octa-image"]


@QUICK
@given(entries=JSON | mutations(VALID_INPUTS))
def test_inputs_json_gives_sockets_or_dracinputerror(scratch, entries):
    _check_inputs(scratch, entries)


@pytest.mark.slow
@SLOW
@given(entries=mutations(VALID_INPUTS))
def test_inputs_json_mutations_many(scratch, entries):
    _check_inputs(scratch, entries)


# --- platform.json and the socket settings ------------------------------------------------

PLATFORM_KEYS = st.sampled_from(["input_socket", "output_sockets", "require_gpu"])
PLATFORM = st.dictionaries(PLATFORM_KEYS, JSON, max_size=3) | JSON | mutations(VALID_PLATFORM)
SPEC_TEXT = st.text(
    alphabet=st.sampled_from(list("irmanv123=:/,._- aZ\n\x00é")) | st.characters(), max_size=40
)


def _check_settings(model_dir, environ, **cli):
    try:
        settings_ = resolve_job_settings(model_dir, environ=environ, **cli)
    except DracInputError:
        return
    assert set(settings_.output_sockets) == {1, 2, 3}
    assert len({s.relative_path for s in settings_.output_sockets.values()}) == 3


@QUICK
@given(platform=PLATFORM)
def test_platform_json_gives_settings_or_dracinputerror(scratch, platform):
    folder = _fresh(scratch)
    _write_json(folder / PLATFORM_FILE, platform)
    try:
        read_platform_file(folder)
    except DracInputError as exc:
        assert PLATFORM_FILE in str(exc)
    _check_settings(folder, {})


@QUICK
@given(
    outputs=SPEC_TEXT,
    input_socket=SPEC_TEXT,
    require=st.sampled_from(["1", "0", "true", "yes", "", "2", "maybe", "\x00"]),
)
def test_environment_settings_give_settings_or_dracinputerror(
    scratch, outputs, input_socket, require
):
    environ = {
        OUTPUT_SOCKETS_ENV: outputs,
        INPUT_SOCKET_ENV: input_socket,
        "DRAC_REQUIRE_GPU": require,
    }
    _check_settings(scratch / "no-model", environ)


@QUICK
@given(specs=st.lists(SPEC_TEXT, max_size=4), slug=st.none() | SPEC_TEXT)
def test_command_line_sockets_give_settings_or_dracinputerror(scratch, specs, slug):
    with contextlib.suppress(DracInputError):
        parse_output_specs(specs, "--output-slug")
    _check_settings(scratch / "no-model", {}, input_slug=slug, output_specs=specs)


@pytest.mark.slow
@SLOW
@given(platform=PLATFORM, outputs=SPEC_TEXT)
def test_socket_settings_many(scratch, platform, outputs):
    folder = _fresh(scratch)
    _write_json(folder / PLATFORM_FILE, platform)
    _check_settings(folder, {OUTPUT_SOCKETS_ENV: outputs})


# --- results.json's case list (submission zip) --------------------------------------------

VALID_RESULTS = {"mode": "batch", "cases": [{"file": "1.png", "shape": [6, 5]}]}


@QUICK
@given(results=JSON | mutations(VALID_RESULTS))
def test_results_case_list_gives_cases_or_dracinputerror(scratch, results):
    path = _fresh(scratch) / "results.json"
    _write_json(path, results)
    try:
        cases = results_case_list(read_json(path, "results file"), str(path))
    except DracInputError as exc:
        assert str(path) in str(exc)
    else:
        assert all(isinstance(n, str) and len(s) == 2 for n, s in cases)


# --- the DRAC folder layout ---------------------------------------------------------------

# Names a DRAC tree's folders and files take, and odd ones beside them.
FOLDER_NAMES = st.sampled_from(
    [
        "A. Segmentation",
        "A._Segmentation",
        "1. Original Images",
        "1._Original Images",
        "2. Groundtruths",
        "a. Training Set",
        "b. Testing Set",
        "1. Intraretinal Microvascular Abnormalities",
        "2. Nonperfusion Areas",
        "3. Neovascularization",
        "__MACOSX",
        ".hidden",
        "A.",
        "a.b",
    ]
) | st.text(min_size=1, max_size=12)
FILE_NAMES = st.sampled_from(
    ["086.png", "1299.png", "86.png", "1.mha", "2.tif", "x.png", "._086.png", "7.jpg", "0.PNG"]
) | st.text(min_size=1, max_size=12)
KINDS = st.sampled_from(["png", "garbage", "empty", "dangling", "loop", "dir"])


@st.composite
def trees(draw):
    """(relative path parts, kind) entries of a folder tree at most four folders deep."""
    entries = []
    for _ in range(draw(st.integers(0, 12))):
        parts = draw(st.lists(FOLDER_NAMES, min_size=0, max_size=4))
        entries.append(((*parts, draw(FILE_NAMES)), draw(KINDS)))
    return entries


_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00"
    b":~\x9bU\x00\x00\x00\nIDATx\x9cc`\x00\x00\x00\x02\x00\x01H\xaf\xa4q\x00\x00\x00\x00IEND"
    b"\xaeB`\x82"
)


def _make_tree(root: Path, entries) -> None:
    for parts, kind in entries:
        if any(p in (".", "..") or "/" in p or "\x00" in p for p in parts):
            continue
        path = root.joinpath(*parts)
        if path.is_symlink() or path.exists():
            continue  # two entries on one name: keep the first
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "png":
                path.write_bytes(_PNG)
            elif kind == "garbage":
                path.write_bytes(b"not an image")
            elif kind == "empty":
                path.write_bytes(b"")
            elif kind == "dangling":
                path.symlink_to(root / "nowhere")
            elif kind == "loop":
                path.symlink_to(path)
            else:
                path.mkdir()
        except OSError:
            # Two entries on one name (the first is kept), a parent that is a file or a broken
            # link, a name the file system refuses (too long): this entry cannot be made.
            continue


def _check_tree(scratch, entries):
    root = _fresh(scratch)
    _make_tree(root, entries)
    try:
        layout = find_layout(root)
        for split in ("train", "test"):
            if layout.images(split) is not None:
                list_cases(layout, split)
    except DracInputError:
        pass
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        with contextlib.suppress(DracInputError):
            found = list_images(folder)
            # Nothing with an image name is passed over: listed, or the call was refused.
            named = [
                p
                for p in folder.iterdir()
                if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            ]
            assert sorted(found) == sorted(named)
            assert all(p.is_file() for p in found)
    shutil.rmtree(root)


@QUICK
@given(entries=trees())
def test_drac_layout_reader_gives_cases_or_dracinputerror(scratch, entries):
    _check_tree(scratch, entries)


@pytest.mark.slow
@SLOW
@given(entries=trees())
def test_drac_layout_reader_many(scratch, entries):
    _check_tree(scratch, entries)


# --- team names ---------------------------------------------------------------------------


@QUICK
@given(team=st.text(max_size=80) | st.from_regex(r"[A-Za-z0-9._-]{1,70}", fullmatch=True))
def test_team_names_follow_the_rule_or_dracinputerror(team):
    try:
        assert check_team(team) == team
    except DracInputError as exc:
        assert repr(team)[:50].rstrip("'") in str(exc) or len(repr(team)) > 200
        return
    assert 1 <= len(team) <= 64 and not team.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in team)
    assert not math.isnan(len(team)) and os.sep not in team
