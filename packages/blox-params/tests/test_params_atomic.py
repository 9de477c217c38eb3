"""Tests of the atomic file writer (`blox.params._atomic`), apart from checkpoints."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest

from blox.params._atomic import write_atomically


def _mode(path: pathlib.Path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_bytes_or_through_a_callback(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "f.bin"
  write_atomically(target, b"abc")
  assert target.read_bytes() == b"abc"
  write_atomically(target, lambda file: file.write(b"defg"))
  assert target.read_bytes() == b"defg"
  assert os.listdir(tmp_path) == ["f.bin"]


def test_keeps_the_mode_of_a_replaced_file_and_gives_a_new_one_the_umask_default(
    tmp_path: pathlib.Path,
) -> None:
  old_umask = os.umask(0o022)
  try:
    fresh = tmp_path / "new.bin"
    write_atomically(fresh, b"x")
    assert _mode(fresh) == 0o644
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"old")
    os.chmod(kept, 0o600)
    write_atomically(kept, b"new")
    assert _mode(kept) == 0o600 and kept.read_bytes() == b"new"
  finally:
    os.umask(old_umask)


def test_a_failing_callback_leaves_the_old_file_and_no_temporary(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "f.bin"
  target.write_bytes(b"old")

  def fail(file: object) -> None:
    file.write(b"half")  # type: ignore[attr-defined]  # an open binary file
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    write_atomically(target, fail)
  assert target.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["f.bin"]


def test_a_missing_folder_is_named(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "missing" / "f.bin"
  with pytest.raises(FileNotFoundError) as info:
    write_atomically(target, b"x", what="a report")
  assert str(info.value) == (
      f"Cannot save a report to {str(target)!r}: the folder"
      f" {str(tmp_path / 'missing')!r} does not exist; create it first (os.makedirs)."
  )
  assert ".tmp" not in str(info.value)


def test_the_next_write_removes_temporaries_left_by_killed_writes(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "ckpt.npz"
  for stale in (".ckpt.npz.0123456789ab.tmp", ".ckpt.npz.ba9876543210.tmp"):
    (tmp_path / stale).write_bytes(b"half")
  (tmp_path / ".other.npz.0123456789ab.tmp").write_bytes(b"not ours")
  write_atomically(target, b"new")
  assert sorted(os.listdir(tmp_path)) == [".other.npz.0123456789ab.tmp", "ckpt.npz"]
