import json

import numpy as np
import pytest
import SimpleITK as sitk

from drac_algo.common.errors import DracInputError
from drac_algo.data.images import load_image
from drac_algo.serve.gc_io import (
    choose_image_socket,
    find_job_image,
    is_grand_challenge_job,
    read_inputs_json,
    write_mask_mha,
)


def socket_value(slug, super_kind="Image", key="interface", relative_path=None, **extra):
    """An inputs.json entry shaped like the platform's (and grand-challenge-forge's stubs)."""
    relative_path = relative_path or (f"images/{slug}" if super_kind == "Image" else f"{slug}.json")
    return {
        "pk": 1,
        "file": None,
        "image": {"pk": "0b5c", "name": "upload.png"} if super_kind == "Image" else None,
        "value": None if super_kind == "Image" else 3,
        key: {
            "pk": 7,
            "slug": slug,
            "title": slug.title(),
            "kind": "Image" if super_kind == "Image" else "Integer",
            "super_kind": super_kind,
            "relative_path": relative_path,
            "default_value": None,
        },
        **extra,
    }


def write_job(folder, entries, images=None):
    """inputs.json plus, per relative path, the given image files (name -> (H, W) uint8)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inputs.json").write_text(json.dumps(entries))
    for relative, files in (images or {}).items():
        (folder / relative).mkdir(parents=True, exist_ok=True)
        for name, array in files.items():
            sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / relative / name))
    return folder


IMAGE = np.arange(48, dtype=np.uint8).reshape(6, 8)


@pytest.mark.parametrize("key", ["interface", "socket"])
def test_the_one_image_socket_and_its_file_are_found(tmp_path, key):
    entries = [socket_value("age", "Value", key=key), socket_value("uw-octa", key=key)]
    job = write_job(tmp_path / "in", entries, {"images/uw-octa": {"1b2c-uuid.mha": IMAGE}})
    assert is_grand_challenge_job(job) and not is_grand_challenge_job(tmp_path)
    sockets = read_inputs_json(job)
    assert [(s.slug, s.is_image) for s in sockets] == [("age", False), ("uw-octa", True)]
    assert sockets[1].image_name == "upload.png"
    socket, path = find_job_image(job)
    assert socket.slug == "uw-octa"
    assert path == job / "images/uw-octa/1b2c-uuid.mha"


def test_super_kind_missing_falls_back_to_the_image_value(tmp_path):
    entry = socket_value("octa")
    del entry["interface"]["super_kind"]
    job = write_job(tmp_path / "in", [entry], {"images/octa": {"a.tif": IMAGE}})
    socket, path = find_job_image(job)
    assert socket.is_image and path.name == "a.tif"


def test_several_image_sockets_need_input_slug(tmp_path):
    entries = [socket_value("octa-a"), socket_value("octa-b")]
    files = {"images/octa-a": {"a.mha": IMAGE}, "images/octa-b": {"b.mha": IMAGE}}
    job = write_job(tmp_path / "in", entries, files)
    with pytest.raises(DracInputError, match=r"2 image sockets \(octa-a, octa-b\).*--input-slug"):
        find_job_image(job)
    assert find_job_image(job, "octa-b")[1].name == "b.mha"
    with pytest.raises(DracInputError, match=r"no socket 'octa-c'; it holds octa-a"):
        find_job_image(job, "octa-c")


def test_input_slug_must_name_an_image_socket(tmp_path):
    job = write_job(tmp_path, [socket_value("age", "Value"), socket_value("octa")])
    with pytest.raises(DracInputError, match="'age' is not an image socket"):
        find_job_image(job, "age")
    sockets = read_inputs_json(job)
    assert choose_image_socket(sockets).slug == "octa"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ('{"a": 1}', "expected a JSON list of socket values, found dict"),
        ('[{"image": null}]', r"entry 0: no 'interface' \(or 'socket'\) object"),
        ('[{"interface": {"slug": "x"}}]', "entry 0: interface lacks the text field"),
        (
            '[{"interface": {"slug": "x", "relative_path": "../etc", "super_kind": "Image"}}]',
            "must stay inside the input folder",
        ),
        ("[]", r"names no image socket; it holds no sockets"),
    ],
)
def test_malformed_inputs_json_names_the_file(tmp_path, content, message):
    (tmp_path / "inputs.json").write_text(content)
    with pytest.raises(DracInputError, match=message) as info:
        find_job_image(tmp_path)
    assert str(tmp_path / "inputs.json") in str(info.value)


def test_inputs_json_without_an_image_socket_lists_the_sockets(tmp_path):
    job = write_job(tmp_path, [socket_value("age", "Value"), socket_value("notes", "File")])
    with pytest.raises(DracInputError, match=r"no image socket; it holds age \(Value\), notes"):
        find_job_image(job)


def test_image_folder_must_hold_exactly_one_image(tmp_path):
    job = write_job(tmp_path / "none", [socket_value("octa")])
    with pytest.raises(DracInputError, match=r"image folder .*images/octa missing"):
        find_job_image(job)
    (job / "images/octa").mkdir(parents=True)
    (job / "images/octa/readme.txt").write_text("x")
    with pytest.raises(DracInputError, match=r"found no image file; .* holds: readme.txt"):
        find_job_image(job)
    two = {"images/octa": {"a.mha": IMAGE, "b.mha": IMAGE}}
    job = write_job(tmp_path / "two", [socket_value("octa")], two)
    with pytest.raises(DracInputError, match="found 2 image files"):
        find_job_image(job)


def test_mask_mha_copies_the_input_geometry(tmp_path):
    image = sitk.GetImageFromArray(IMAGE)
    image.SetSpacing((0.012, 0.015))
    image.SetOrigin((-3.0, 4.5))
    image.SetDirection((0.0, 1.0, 1.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "in.mha"))
    loaded = load_image(tmp_path / "in.mha")
    mask = (IMAGE % 3 == 0).astype(np.uint8)
    path = write_mask_mha(tmp_path / "out/images/x/output.mha", mask, loaded)
    written = sitk.ReadImage(str(path))
    assert written.GetDimension() == 2
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(written.GetSpacing(), (0.012, 0.015))
    np.testing.assert_allclose(written.GetOrigin(), (-3.0, 4.5))
    np.testing.assert_allclose(written.GetDirection(), (0.0, 1.0, 1.0, 0.0))
    assert np.array_equal(sitk.GetArrayFromImage(written), mask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["output.mha"]


def test_mask_mha_refuses_non_binary_or_mismatched_masks(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(IMAGE), str(tmp_path / "in.mha"))
    loaded = load_image(tmp_path / "in.mha")
    with pytest.raises(DracInputError, match="values must be 0 or 1, found up to 255"):
        write_mask_mha(tmp_path / "o.mha", np.full(IMAGE.shape, 255, np.uint8), loaded)
    with pytest.raises(DracInputError, match=r"expected a \(6, 8\) uint8 mask"):
        write_mask_mha(tmp_path / "o.mha", np.zeros((8, 6), np.uint8), loaded)
    assert not (tmp_path / "o.mha").exists()
