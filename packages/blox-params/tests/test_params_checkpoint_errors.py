"""Checkpoint failures: template mismatches, damaged files, failing saves."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import pickle
import zipfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import blox.params._checkpoint_save as checkpoint_module
from blox.params import CheckpointError, CheckpointWarning, Param, Params, load, save

# jax.ShapeDtypeStruct lacks annotations; a typed alias keeps mypy strict happy.
_abstract: Callable[..., Any] = jax.ShapeDtypeStruct


def _params() -> Params:
  return Params({
      ("ck_err", "kernel"): Param(jnp.ones((2, 3)), metadata={"axes": (None, "model")}),
      ("ck_err", "bias"): Param(jnp.zeros(3)),
      ("ck_err", "scale"): Param(jnp.ones(3, jnp.bfloat16)),
      ("ck_err", "seed"): Param(jax.random.key(0), trainable=False),
  }).locked()


def _bits(value: jax.Array) -> np.ndarray:
  """The value as a plain array (a typed key as its key data)."""
  if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
    value = jax.random.key_data(value)
  return np.asarray(value)


@pytest.fixture
def saved(tmp_path: pathlib.Path) -> pathlib.Path:
  target = tmp_path / "ckpt.npz"
  save(target, _params())
  return target


# Template mismatches.


def test_every_mismatch_is_reported_in_one_error(saved: pathlib.Path) -> None:
  template = Params({
      ("ck_err", "kernel"): Param(_abstract((3, 2), jnp.float32)),
      ("ck_err", "scale"): Param(_abstract((3,), jnp.float32)),
      ("ck_err", "seed"): Param(_abstract((), jax.random.key(0, impl="rbg").dtype)),
      ("ck_err", "extra"): Param(_abstract((1,), jnp.float32)),
  })
  with pytest.raises(ValueError) as caught:
    load(saved, like=template)
  message = str(caught.value)
  assert str(saved) in message
  assert "missing from the checkpoint: ('ck_err', 'extra')" in message
  assert "unexpected in the checkpoint (not in like): ('ck_err', 'bias')" in message
  assert "shape mismatch at ('ck_err', 'kernel'): checkpoint (2, 3), like (3, 2)" in message
  assert "dtype mismatch at ('ck_err', 'scale'): checkpoint bfloat16, like float32" in message
  assert "dtype mismatch at ('ck_err', 'seed'): checkpoint key<threefry2x32>" in message
  assert "strict=False" in message


def test_non_strict_load_keeps_the_matching_params(saved: pathlib.Path) -> None:
  template = Params({
      # Flags and metadata differ from the file's: the template's win.
      ("ck_err", "bias"): Param(jnp.ones(3), trainable=False, metadata={"x": 1}),
      ("ck_err", "kernel"): Param(jnp.ones((3, 2))),
      ("ck_err", "seed"): Param(jax.random.key(1), metadata={"y": "z"}),
      ("ck_err", "other"): Param(jnp.ones(1)),
  })
  assert not template.is_locked
  with pytest.warns(CheckpointWarning) as record:
    loaded = load(saved, like=template, strict=False)
  message = str(record[0].message)
  for path in ("'kernel'", "'other'", "'scale'"):
    assert path in message
  # The intersection, in the template's order, with its flags and metadata
  # and its locked flag (the file was saved locked).
  assert list(loaded) == [("ck_err", "bias"), ("ck_err", "seed")]
  assert not loaded.is_locked
  assert loaded[("ck_err", "bias")].trainable is False
  assert dict(loaded[("ck_err", "bias")].metadata) == {"x": 1}
  assert loaded[("ck_err", "seed")].trainable is True
  assert dict(loaded[("ck_err", "seed")].metadata) == {"y": "z"}
  np.testing.assert_array_equal(loaded[("ck_err", "bias")].value, np.zeros(3))
  # The key is the file's, still a typed key.
  seed = loaded[("ck_err", "seed")].value
  assert jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(_bits(seed), _bits(jax.random.key(0)))


def test_typed_keys_and_plain_data_do_not_match(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "keys.npz"
  save(target, Params({
      ("ck_err", "key"): Param(jax.random.key(0)),
      ("ck_err", "plain"): Param(jnp.zeros((), jnp.uint32)),
  }))
  key_dtype = jax.random.key(0).dtype
  template = Params({
      ("ck_err", "key"): Param(_abstract((), jnp.uint32)),
      ("ck_err", "plain"): Param(_abstract((), key_dtype)),
  })
  with pytest.raises(ValueError) as caught:
    load(target, like=template)
  message = str(caught.value)
  assert "(2 problems)" in message
  assert "dtype mismatch at ('ck_err', 'key'): checkpoint key<threefry2x32>, like uint32" in message
  assert f"dtype mismatch at ('ck_err', 'plain'): checkpoint uint32, like {key_dtype}" in message
  with pytest.warns(CheckpointWarning):
    assert len(load(target, like=template, strict=False)) == 0


def test_matching_template_gives_no_warning(saved: pathlib.Path, recwarn: Any) -> None:
  loaded = load(saved, like=jax.eval_shape(_params), strict=False)
  assert len(loaded) == 4 and not [w for w in recwarn if w.category is CheckpointWarning]


def test_template_and_shardings_are_checked(saved: pathlib.Path) -> None:
  # A pytree template against a file of one Params: every leaf is named.
  with pytest.raises(ValueError, match=r"(?s)missing from the checkpoint: leaf \"\[\('ck_err', 'bias'\)\]\".*unexpected.*leaf ''.*like="):
    load(saved, like={("ck_err", "bias"): jnp.zeros(3)})
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with pytest.raises(ValueError, match=r"shardings has no entry for the params \[\('ck_err', 'bias'\)"):
    load(saved, shardings={p: device for p in _params() if p != ("ck_err", "bias")})
  with pytest.raises(TypeError, match=r"shardings\[\('ck_err', 'kernel'\)\] is str"):
    load(saved, shardings={p: "cpu" for p in _params()})


# Damaged and foreign files.


def _expect_unreadable(target: pathlib.Path, match: str | None = None) -> None:
  with pytest.raises(CheckpointError, match=match) as caught:
    load(target)
  assert str(target) in str(caught.value)


def test_truncated_files_raise_a_clear_error(saved: pathlib.Path, tmp_path: pathlib.Path) -> None:
  data = saved.read_bytes()
  for size in (10, 100, len(data) // 2, len(data) - 1):
    cut = tmp_path / f"cut{size}.npz"
    cut.write_bytes(data[:size])
    _expect_unreadable(cut)


def test_random_bytes_and_empty_files_raise_a_clear_error(tmp_path: pathlib.Path) -> None:
  noise = tmp_path / "noise.npz"
  noise.write_bytes(np.random.default_rng(0).bytes(4096))
  _expect_unreadable(noise, "not a readable blox checkpoint")
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  _expect_unreadable(empty, "not a readable blox checkpoint")


def test_foreign_archives_raise_a_clear_error(tmp_path: pathlib.Path) -> None:
  plain = tmp_path / "plain.npz"
  np.savez(plain, w=np.ones(3))
  _expect_unreadable(plain, "no blox_checkpoint.json")
  other = tmp_path / "other.npz"
  with zipfile.ZipFile(other, "w") as archive:
    archive.writestr("blox_checkpoint.json", json.dumps({"format": "something.else"}))
  _expect_unreadable(other, "does not name the format")
  not_json = tmp_path / "not_json.npz"
  with zipfile.ZipFile(not_json, "w") as archive:
    archive.writestr("blox_checkpoint.json", b"\xff\xfe{")
  _expect_unreadable(not_json, "not valid JSON")


def _data_end(target: pathlib.Path, name: str) -> int:
  """The file offset just past the stored data of member `name`."""
  raw = target.read_bytes()
  with zipfile.ZipFile(target) as archive:
    info = archive.getinfo(name)
  start = info.header_offset
  # The local header: 30 fixed bytes, then the name and extra field, whose
  # lengths it records at offsets 26 and 28.
  name_length = int.from_bytes(raw[start + 26:start + 28], "little")
  extra_length = int.from_bytes(raw[start + 28:start + 30], "little")
  return start + 30 + name_length + extra_length + info.compress_size


def test_flipped_bytes_in_array_data_are_detected(saved: pathlib.Path, tmp_path: pathlib.Path) -> None:
  data = bytearray(saved.read_bytes())
  # The last byte of v0.npy: one of the array's values, past its .npy header.
  data[_data_end(saved, "v0.npy") - 1] ^= 0xFF
  corrupt = tmp_path / "flipped.npz"
  corrupt.write_bytes(bytes(data))
  _expect_unreadable(corrupt, "v0.npy.*CRC")


def _rewrite(source: pathlib.Path, target: pathlib.Path, **replace: bytes) -> None:
  """Copies the archive at `source` to `target` with some members replaced."""
  with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
    for name in old.namelist():
      new.writestr(name, replace.get(name.replace(".", "_"), old.read(name)))


def _header(source: pathlib.Path) -> dict[str, Any]:
  with zipfile.ZipFile(source) as archive:
    header: dict[str, Any] = json.loads(archive.read("blox_checkpoint.json"))
  return header


def test_newer_format_versions_are_refused(saved: pathlib.Path, tmp_path: pathlib.Path) -> None:
  header = _header(saved)
  header["version"] = 99
  newer = tmp_path / "newer.npz"
  _rewrite(saved, newer, blox_checkpoint_json=json.dumps(header).encode())
  _expect_unreadable(newer, "format version 99.*Upgrade blox-params")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("dtype", "object", "unsupported dtype 'object'"),
        ("dtype", "float64x", "unknown dtype"),
        ("shape", [4, 4], r"holds float32\[2, 3\], but the header describes float32\[4, 4\]"),
        ("shape", [-1], "non-negative"),
        ("trainable", 1, "'trainable' must be a bool"),
        ("metadata", {"axes": ["a"]}, "tagged encoding"),
        ("path", [], "non-empty list of strings"),
    ],
)
def test_corrupt_headers_are_refused(
    saved: pathlib.Path, tmp_path: pathlib.Path, field: str, value: Any, match: str
) -> None:
  header = _header(saved)
  header["leaves"][0]["params"][0][field] = value
  corrupt = tmp_path / "corrupt.npz"
  _rewrite(saved, corrupt, blox_checkpoint_json=json.dumps(header).encode())
  _expect_unreadable(corrupt, match)


def test_a_missing_array_member_is_refused(saved: pathlib.Path, tmp_path: pathlib.Path) -> None:
  short = tmp_path / "short.npz"
  with zipfile.ZipFile(saved) as old, zipfile.ZipFile(short, "w") as new:
    for name in old.namelist():
      if name != "v1.npy":
        new.writestr(name, old.read(name))
  _expect_unreadable(short, "v1.npy")


_unpickled: list[str] = []


def _record_unpickling() -> str:
  _unpickled.append("ran")
  return "payload"


class _Payload:
  def __reduce__(self) -> tuple[Any, tuple[()]]:
    return _record_unpickling, ()


def test_loading_never_unpickles(saved: pathlib.Path, tmp_path: pathlib.Path) -> None:
  malicious = tmp_path / "malicious.npz"
  payload = np.empty(1, object)
  payload[0] = _Payload()
  assert pickle.loads(pickle.dumps(payload[0])) == "payload" and _unpickled == ["ran"]
  _unpickled.clear()
  buffer = tmp_path / "payload.npy"
  np.save(buffer, payload, allow_pickle=True)
  _rewrite(saved, malicious, v0_npy=buffer.read_bytes())
  _expect_unreadable(malicious, "v0.npy")
  assert _unpickled == []


def test_object_arrays_are_never_saved(tmp_path: pathlib.Path) -> None:
  params = Params({("ck_err", "objects"): Param(np.array([None, 1], dtype=object))})
  with pytest.raises(TypeError, match=r"\('ck_err', 'objects'\).*never pickled"):
    save(tmp_path / "ckpt.npz", params)
  assert os.listdir(tmp_path) == []


def test_abstract_and_non_array_values_are_refused(tmp_path: pathlib.Path) -> None:
  with pytest.raises(TypeError, match=r"\('ck_err', 'kernel'\).*ShapeDtypeStruct"):
    save(tmp_path / "ckpt.npz", jax.eval_shape(_params))
  with pytest.raises(TypeError, match=r"leaf \"\['w'\]\": its value is str, not an array"):
    save(tmp_path / "ckpt.npz", {"w": "text"})
  assert os.listdir(tmp_path) == []


def test_saving_inside_jit_is_refused(tmp_path: pathlib.Path) -> None:
  def save_traced(x: jax.Array) -> jax.Array:
    save(tmp_path / "ckpt.npz", Params({("ck_err", "traced"): Param(x)}))
    return x

  with pytest.raises(TypeError, match=r"\('ck_err', 'traced'\).*inside jax.jit"):
    jax.jit(save_traced)(jnp.ones(2))
  assert os.listdir(tmp_path) == []


def test_64_bit_values_need_x64_mode(tmp_path: pathlib.Path) -> None:
  save(tmp_path / "wide.npz", Params({("ck_err", "wide"): Param(np.ones(2, np.float64))}))
  with pytest.raises(ValueError, match=r"\('ck_err', 'wide'\) holds float64.*jax_enable_x64"):
    load(tmp_path / "wide.npz")


# Failing saves leave the previous checkpoint untouched.


def _assert_untouched(saved: pathlib.Path, before: bytes) -> None:
  assert saved.read_bytes() == before
  assert os.listdir(saved.parent) == [saved.name]


def test_unstorable_metadata_fails_before_writing(saved: pathlib.Path) -> None:
  before = saved.read_bytes()
  for bad in (frozenset({1}), np.float32(1.0), ("ok", b"bytes")):
    params = Params({("ck_err", "w"): Param(jnp.ones(2), metadata={"tag": bad})})
    with pytest.raises(TypeError, match=r"\('ck_err', 'w'\): metadata entry 'tag'"):
      save(saved, params)
    _assert_untouched(saved, before)


class _Boom(Exception):
  pass


def test_a_writer_failing_midway_leaves_the_old_checkpoint(
    saved: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  before = saved.read_bytes()
  calls = []
  real_write_array = np.lib.format.write_array

  def write_then_fail(*args: Any, **kwargs: Any) -> None:
    calls.append(1)
    if len(calls) == 2:
      raise _Boom("disk trouble")
    real_write_array(*args, **kwargs)

  monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
  with pytest.raises(_Boom):
    save(saved, _params())
  assert len(calls) == 2
  _assert_untouched(saved, before)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, _Boom])
def test_any_exception_during_writing_cleans_up(
    saved: pathlib.Path, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
  before = saved.read_bytes()

  def partial_write(file: Any, header: bytes, arrays: Any) -> None:
    file.write(b"PK partial")
    raise interrupt()

  monkeypatch.setattr(checkpoint_module, "_write_checkpoint", partial_write)
  with pytest.raises(interrupt):
    save(saved, Params({("ck_err", "w"): Param(jnp.ones(2))}))
  _assert_untouched(saved, before)


def test_a_full_disk_at_fsync_leaves_the_old_checkpoint(
    saved: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  before = saved.read_bytes()

  def full(fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(OSError, match="No space left"):
    save(saved, Params({("ck_err", "w"): Param(jnp.ones(2))}))
  _assert_untouched(saved, before)


def test_a_failing_rename_leaves_the_old_checkpoint(
    saved: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  before = saved.read_bytes()

  def refuse(source: str, target: str) -> None:
    raise PermissionError(errno.EACCES, "Permission denied", target)

  monkeypatch.setattr(os, "replace", refuse)
  with pytest.raises(PermissionError):
    save(saved, Params({("ck_err", "w"): Param(jnp.ones(2))}))
  _assert_untouched(saved, before)
  monkeypatch.undo()
  # The old checkpoint still loads, with its own values.
  reloaded = load(saved, like=_params())
  for path, param in _params().items():
    np.testing.assert_array_equal(_bits(reloaded[path].value), _bits(param.value))


def test_saving_into_a_missing_folder_names_the_folder(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "runs" / "7" / "params.npz"
  with pytest.raises(FileNotFoundError) as info:
    save(target, Params({("ck_err", "w"): Param(jnp.ones(2))}))
  message = str(info.value)
  assert message == (
      f"Cannot save checkpoint to {str(target)!r}: the folder"
      f" {str(target.parent)!r} does not exist; create it first (os.makedirs)."
  )
  assert ".tmp" not in message
  assert not (tmp_path / "runs").exists()


def test_a_non_strict_load_warns_at_the_callers_line(saved: pathlib.Path) -> None:
  like = Params({("ck_err", "other"): Param(jnp.ones(2))})
  with pytest.warns(CheckpointWarning) as record:
    load(saved, like=like, strict=False)
  assert record[0].filename == __file__
