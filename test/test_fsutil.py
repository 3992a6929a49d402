import os
import stat

import pytest

from drac_algo.fsutil import atomic_dir, atomic_path, atomic_write_text


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
