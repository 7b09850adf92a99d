"""pasture.files: the one atomic-write helper (complete or untouched, usual permissions)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pasture import files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_failed_write_leaves_the_previous_version_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.md"
    files.write_text(target, "first\n")
    with pytest.raises(RuntimeError), files.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.md"]


def test_writes_never_follow_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    for name in ("results.md.tmp", ".results.md.tmp", f".results.md.tmp-{os.getpid()}"):
        (tmp_path / name).symlink_to(victim)
    files.write_text(tmp_path / "results.md", "new")
    assert victim.read_text() == "keep"
    assert (tmp_path / "results.md").read_text() == "new"


def test_permissions_follow_the_umask_not_mkstemp(tmp_path: Path) -> None:
    files.write_bytes(tmp_path / "a.bin", b"x")
    with files.atomic_dir(tmp_path / "ckpt") as folder:
        (folder / "weights").write_bytes(b"y")
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(tmp_path / "a.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "ckpt") == 0o777 & ~umask


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with files.atomic_dir(target) as folder:
        (folder / "old").write_text("1")
    with pytest.raises(OSError), files.atomic_dir(target) as folder:
        (folder / "new").write_text("2")
        raise OSError("disk full")
    assert sorted(p.name for p in target.iterdir()) == ["old"]
    with files.atomic_dir(target) as folder:
        (folder / "new").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
