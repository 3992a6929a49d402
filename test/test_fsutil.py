import json
import os
import stat

import pytest

from drac_algo.common.fsutil import (
    FolderBusy,
    FolderLock,
    atomic_dir,
    atomic_path,
    atomic_write_text,
    find_links,
    remove_all_but,
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


def test_folder_lock_one_holder_at_a_time_and_gone_after(tmp_path):
    first = FolderLock(tmp_path, ".lock").acquire(program="a")
    holder = json.loads((tmp_path / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["program"] == "a" and holder["started"]
    with pytest.raises(FolderBusy) as busy:
        FolderLock(tmp_path, ".lock").acquire()
    assert busy.value.holder == holder
    first.release()
    assert not (tmp_path / ".lock").exists()
    # A file left by a holder that died (kill -9: the kernel dropped its lock) takes no part.
    (tmp_path / ".lock").write_text('{"pid": 1}')
    with FolderLock(tmp_path, ".lock") as lock:
        assert lock.holder["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_folder_lock_never_opens_a_link(tmp_path):
    (tmp_path / "elsewhere").write_text("x")
    (tmp_path / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        FolderLock(tmp_path, ".lock").acquire()
    assert (tmp_path / "elsewhere").read_text() == "x"


def test_find_links_on_the_way_and_inside_never_followed(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "link").symlink_to(tmp_path)  # never reached: not followed
    out = tmp_path / "out"
    (out / "masks" / "a").mkdir(parents=True)
    (out / "masks" / "a" / "1.png").symlink_to(outside / "x.png")
    (out / "masks" / "b").symlink_to(outside, target_is_directory=True)
    (out / "log").symlink_to(outside / "log")
    (out / "sockets").symlink_to(outside, target_is_directory=True)
    found = find_links(out, ["masks", "log", "sockets/deep/output.mha", "absent/x", "results"])
    assert found == [out / "log", out / "masks/a/1.png", out / "masks/b", out / "sockets"]


def test_remove_all_but_leaves_exactly_what_is_kept(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    folder = tmp_path / "masks"
    for rel in ("a/1.png", "a/2.png", "b/1.png", ".marker"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(rel)
    (folder / "c").symlink_to(outside, target_is_directory=True)
    keep = {folder / "a/1.png", folder / ".marker"}
    removed = remove_all_but(folder, keep)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        ".marker",
        "a",
        "a/1.png",
    ]
    assert set(removed) == {folder / "a/2.png", folder / "b/1.png", folder / "b", folder / "c"}
    assert (outside / "keep.txt").is_file()
