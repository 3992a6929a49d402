import struct
import zlib

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from drac_algo.common.errors import DracInputError
from drac_algo.data.images import image_size, load_image, read_mask_png, write_png


def _gray(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w), np.uint8)


def test_gray_png_is_read_unchanged(tmp_path):
    pixels = _gray()
    cv2.imwrite(str(tmp_path / "086.png"), pixels)
    loaded = load_image(tmp_path / "086.png")
    assert loaded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.converted is None
    assert loaded.spacing == (1.0, 1.0)
    assert loaded.origin == (0.0, 0.0)
    assert loaded.direction == (1.0, 0.0, 0.0, 1.0)


def test_three_channel_gray_is_read_as_one_channel_exactly(tmp_path):
    pixels = _gray()
    cv2.imwrite(str(tmp_path / "a.png"), np.stack([pixels] * 3, axis=-1))
    loaded = load_image(tmp_path / "a.png")
    assert loaded.pixels.shape == pixels.shape
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert "RGB converted to grayscale" in loaded.converted


def test_colour_and_alpha_are_reduced_to_luminance(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    bgra = np.concatenate([rgb[..., ::-1], np.full((8, 8, 1), 7, np.uint8)], axis=-1)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    loaded = load_image(tmp_path / "a.png")
    assert loaded.pixels.shape == (8, 8)
    assert int(loaded.pixels[0, 0]) == 76  # 0.299 * 255, the ITU-R 601 red weight
    assert "alpha channel dropped" in loaded.converted and "luminance" in loaded.converted


def test_gray_plus_alpha_png_falls_back_to_opencv(tmp_path):
    # SimpleITK has no pixel type for 2-channel PNGs; written here as raw PNG chunks.
    gray = _gray(4, 6)
    rows = b"".join(b"\0" + bytes(np.stack([r, np.full_like(r, 9)], -1).ravel()) for r in gray)
    (tmp_path / "la.png").write_bytes(_png_bytes(gray.shape, 4, rows))
    loaded = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(loaded.pixels, gray)
    assert "alpha channel dropped" in loaded.converted
    assert image_size(tmp_path / "la.png") == (4, 6)


def _png_bytes(shape, colour_type, raw_rows):
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", shape[1], shape[0], 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw_rows))
        + chunk(b"IEND", b"")
    )


def test_sixteen_bit_is_scaled(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.array([[0, 257 * 10, 65535]], np.uint16))
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.pixels, [[0, 10, 255]])
    assert loaded.converted == "16-bit scaled to 8-bit"


@pytest.mark.parametrize(
    ("values", "bits", "expected"),
    [
        ([0, 2048, 4095], 12, [0, 128, 255]),  # 12-bit data in a 16-bit file: not /257
        ([0, 512, 1023], 10, [0, 128, 255]),
        ([0, 100, 255], 8, [0, 100, 255]),
    ],
)
def test_sixteen_bit_file_with_fewer_bits_of_data_is_scaled_by_its_depth(
    tmp_path, values, bits, expected
):
    cv2.imwrite(str(tmp_path / "a.png"), np.array([values], np.uint16))
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.pixels, [expected])
    assert f"16-bit file holding {bits}-bit data (largest value {values[-1]})" in loaded.converted


def test_single_slice_volume_is_accepted_and_multi_slice_is_not(tmp_path):
    one = sitk.GetImageFromArray(_gray(6, 5)[None])
    sitk.WriteImage(one, str(tmp_path / "one.mha"))
    assert load_image(tmp_path / "one.mha").pixels.shape == (6, 5)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 6, 5), np.uint8)), str(tmp_path / "v.mha"))
    with pytest.raises(DracInputError, match=r"v\.mha.*3D"):
        load_image(tmp_path / "v.mha")


def test_float_without_8bit_mapping_is_an_error(tmp_path):
    sitk.WriteImage(
        sitk.GetImageFromArray(np.full((4, 4), 0.5, np.float32)), str(tmp_path / "f.mha")
    )
    with pytest.raises(DracInputError, match=r"f\.mha.*float32"):
        load_image(tmp_path / "f.mha")


@pytest.mark.parametrize("cut", [0.5, -12])  # half the file; only the IEND chunk missing
def test_truncated_png_is_an_error_naming_the_file(tmp_path, cut):
    cv2.imwrite(str(tmp_path / "full.png"), _gray())
    data = (tmp_path / "full.png").read_bytes()
    end = int(len(data) * cut) if cut > 0 else cut
    (tmp_path / "cut.png").write_bytes(data[:end])
    with pytest.raises(DracInputError, match=r"cut\.png: unreadable or truncated"):
        load_image(tmp_path / "cut.png")


def test_missing_unknown_and_garbage_files(tmp_path):
    with pytest.raises(DracInputError, match="no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(DracInputError, match="unsupported image type '.jpg'"):
        load_image(tmp_path / "a.jpg")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DracInputError, match=r"junk\.png"):
        load_image(tmp_path / "junk.png")


def test_image_size_reads_the_header(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), _gray(24, 32))
    assert image_size(tmp_path / "a.png") == (24, 32)


@pytest.mark.parametrize("high", [255, 1])
def test_mask_png_is_mapped_to_0_1(tmp_path, high):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 3:6] = high
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    read = read_mask_png(tmp_path / "m.png", expected_shape=(8, 8))
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, (mask > 0).astype(np.uint8))


def test_sixteen_bit_0_1_mask_is_not_scaled_away(tmp_path):
    mask = np.zeros((4, 4), np.uint16)
    mask[1, 2] = 1
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    np.testing.assert_array_equal(read_mask_png(tmp_path / "m.png"), mask.astype(np.uint8))


def test_mask_with_other_values_is_an_error(tmp_path):
    cv2.imwrite(str(tmp_path / "m.png"), np.array([[0, 128, 255]], np.uint8))
    with pytest.raises(DracInputError, match=r"m\.png: mask values .*found \{0, 128, 255\}"):
        read_mask_png(tmp_path / "m.png")


def test_mask_size_must_match_its_image(tmp_path):
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((8, 9), np.uint8))
    with pytest.raises(DracInputError, match=r"m\.png: mask size .*\(8, 9\).*\(8, 8\)"):
        read_mask_png(tmp_path / "m.png", expected_shape=(8, 8))


def test_write_png_round_trips_gray_and_rgb(tmp_path):
    gray = _gray()
    write_png(tmp_path / "g.png", gray)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED), gray)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200  # red must land in the file's red channel
    write_png(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "c.png"))[..., ::-1], rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "g.png"]


def test_write_png_rejects_bad_arrays(tmp_path):
    with pytest.raises(DracInputError, match="uint8"):
        write_png(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    with pytest.raises(DracInputError, match="shape"):
        write_png(tmp_path / "a.png", np.zeros((2, 4, 4), np.uint8))
