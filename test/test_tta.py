import logging

import numpy as np
import pytest
import torch

from drac_algo.common.errors import DracInputError
from drac_algo.engine.tta import TRANSFORMS, TTA_SETS, get_transform, select_transforms, tta_set

# A 2 x 3 matrix and each transform's result written out by hand (rows top to bottom), so the
# names are pinned to a meaning independent of the implementation.
A = [[1, 2, 3], [4, 5, 6]]
EXPECTED = {
    "identity": [[1, 2, 3], [4, 5, 6]],
    "hflip": [[3, 2, 1], [6, 5, 4]],
    "vflip": [[4, 5, 6], [1, 2, 3]],
    "rot90": [[3, 6], [2, 5], [1, 4]],  # counter-clockwise
    "rot180": [[6, 5, 4], [3, 2, 1]],
    "rot270": [[4, 1], [5, 2], [6, 3]],  # clockwise
    "transpose": [[1, 4], [2, 5], [3, 6]],
    "antitranspose": [[6, 3], [5, 2], [4, 1]],
}


def test_the_group_has_the_eight_named_elements():
    assert set(TRANSFORMS) == set(EXPECTED)
    assert TTA_SETS["d4"] == tuple(TRANSFORMS)
    assert TTA_SETS["flips"] == ("identity", "hflip", "vflip", "rot180")
    assert TTA_SETS["none"] == ("identity",)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_forward_matches_hand_written_result(name):
    x = torch.tensor(A)[None, None]
    assert get_transform(name).forward(x)[0, 0].tolist() == EXPECTED[name]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_inverse_undoes_forward_on_non_square_batches(name):
    t = get_transform(name)
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    y = t.forward(x)
    assert y.shape[:2] == (2, 3)
    assert y.shape[2:] == ((7, 5) if t.swaps_axes else (5, 7))
    assert torch.equal(t.inverse(y), x)
    assert torch.equal(t.forward(t.inverse(x)), x)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(DracInputError, match="valid: none, flips, d4"):
        tta_set("all")
    with pytest.raises(DracInputError, match="rot90"):
        get_transform("rot45")
    with pytest.raises(DracInputError, match="empty"):
        tta_set([])


def test_explicit_names_and_duplicates():
    assert [t.name for t in tta_set(["vflip", "identity", "vflip"])] == ["vflip", "identity"]


def test_select_intersects_with_the_valid_names_and_logs_what_is_dropped(caplog):
    with caplog.at_level(logging.INFO, logger="drac_algo.engine.tta"):
        kept = select_transforms("d4", ["hflip", "vflip", "rot180"], where="member x")
    assert [t.name for t in kept] == ["identity", "hflip", "vflip", "rot180"]
    assert "member x" in caplog.text
    assert "rot90" in caplog.text and "antitranspose" in caplog.text


def test_select_with_nothing_valid_keeps_identity_and_none_means_all(caplog):
    assert [t.name for t in select_transforms(["rot90"], ["hflip"])] == ["identity"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="drac_algo.engine.tta"):
        assert len(select_transforms("d4", None)) == 8
        assert len(select_transforms("flips", list(TRANSFORMS))) == 4
    assert caplog.text == ""
    with pytest.raises(DracInputError, match="unknown TTA transform"):
        select_transforms("d4", ["mirror"])


def test_transforms_match_numpy_equivalents():
    x = np.arange(20).reshape(4, 5)
    t = torch.from_numpy(x)[None, None]
    assert np.array_equal(get_transform("rot90").forward(t)[0, 0].numpy(), np.rot90(x))
    assert np.array_equal(get_transform("rot270").forward(t)[0, 0].numpy(), np.rot90(x, -1))
    assert np.array_equal(get_transform("antitranspose").forward(t)[0, 0].numpy(), np.rot90(x, 2).T)


def test_the_bundle_validates_against_the_same_names():
    from drac_algo.bundle.manifest import TTA_NAMES

    assert tuple(TTA_NAMES) == tuple(TRANSFORMS)
