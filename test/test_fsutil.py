import os
import stat

import pytest

from drac_algo.common.fsutil import (
    atomic_dir,
    atomic_path,
    atomic_write_text,
    remove_stale_partials_within,
)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_and_folders_get_default_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "bundle") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.json") == 0o644
    assert mode(tmp_path / "bundle") == 0o755


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_stale_partials_within_a_folder_are_found_at_any_depth_and_only_ours(tmp_path):
    inner = tmp_path / "masks" / "1. Intraretinal Microvascular Abnormalities"
    inner.mkdir(parents=True)
    # What a process killed inside atomic_path / atomic_dir leaves: their own temporary names.
    with atomic_path(inner / "087.png") as tmp:
        name = tmp.name
    (inner / name).write_bytes(b"half")
    with atomic_dir(tmp_path / "masks" / "sub") as tmp:
        folder = tmp_path / "masks" / tmp.name
    (folder / "x").mkdir(parents=True)
    ours = [inner / name, tmp_path / "masks" / ".090.json.ab12_x.partial.json", folder]
    ours[1].write_text("{")
    theirs = [
        inner / "086.png.partial",  # not hidden
        inner / ".notes.partial",  # no random part
        inner / ".a.png.r1.partial.jpg",  # suffix not the name's
    ]
    for path in theirs:
        path.write_text("someone else's")
    (inner / "086.png").write_bytes(b"final")

    removed = remove_stale_partials_within(tmp_path / "masks")
    assert sorted(removed) == sorted(ours)
    assert not any(p.exists() for p in ours)
    assert all(p.is_file() for p in theirs) and (inner / "086.png").is_file()
    assert remove_stale_partials_within(tmp_path / "missing") == []
