"""`load`: a checkpoint file back into `Params` (or a whole state), exactly; never runs code from it.

Loading runs as named steps: open the archive and read its header, compare
the header with the template `like` (if any), read each value and place it
on its devices, and rebuild the container. With `like`, the file provides
only the values: the structure (order, ranks, flags, metadata, locked flag)
is the template's, so code wins over an old file. Without `like`, everything
is the file's, and the paths are listed in file order (ranks 0..n-1, see
`blox.params._structure`).

Example:
  >>> import os, tempfile
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params, save
  >>> params = Params({('w',): Param(jnp.arange(3.0))}).locked()
  >>> path = os.path.join(tempfile.mkdtemp(), 'params.npz')
  >>> save(path, params)
  >>> restored = load(path, like=jax.eval_shape(lambda: params))
  >>> restored[('w',)].value
  Array([0., 1., 2.], dtype=float32)
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar, overload

import jax
import jax.numpy as jnp
import numpy as np

from blox.params._checkpoint_format import (
    HEADER_MEMBER,
    CheckpointError,
    Entry,
    Header,
    Leaf,
    array_member,
    decode_leaves,
    storage_dtype,
)
from blox.params._container import Params
from blox.params._param import Param
from blox.params._paths import Path, path_text

__all__ = ["CheckpointWarning", "Shardings", "load"]

Shardings: TypeAlias = Params | Mapping[Path, Any] | jax.sharding.Sharding


class CheckpointWarning(UserWarning):
  """`load(..., strict=False)` skipped params that did not match `like`."""


_State = TypeVar("_State")


@overload
def load(
    path: str | os.PathLike[str],
    like: None = None,
    shardings: Shardings | None = None,
    strict: bool = True,
) -> Params: ...


@overload
def load(
    path: str | os.PathLike[str],
    like: _State,
    shardings: Shardings | None = None,
    strict: bool = True,
) -> _State: ...


def load(
    path: str | os.PathLike[str],
    like: Any = None,
    shardings: Shardings | None = None,
    strict: bool = True,
) -> Any:
  """Reads params (or a whole pytree state) saved by `save`. Never unpickles.

  A file holding a pytree (e.g. params and an optax state) needs a template,
  `like=`: the same pytree, concrete or abstract (`jax.eval_shape`); the
  file's leaves are checked against it by key path and the result has its
  structure (see `blox.params._checkpoint_tree`).

  Values come back as jax arrays with their saved dtypes, typed PRNG keys as
  typed keys of their saved implementation.

  Without `like`, everything comes from the file: the trainable flags,
  metadata and locked flag as saved, and the paths in the saved order (the
  order of the container that was saved).

  With `like`, the file provides only the values: the structure (path order,
  trainable flags, metadata, locked flag) is `like`'s, so the result has the
  same pytree structure as `like` and reuses functions compiled for it. Code
  wins over an old file: a pretrained checkpoint saved with every param
  trainable loads into a template with a frozen backbone as frozen, and
  sharding metadata changed since the save is kept.

  Args:
    path: the checkpoint file.
    like: optional template (concrete params, or abstract ones from
      `jax.eval_shape`; or a whole pytree state holding them, arrays and
      Python scalars) that gives the result its structure. Paths (and leaf
      key paths) missing from the file, unexpected ones, and shape and dtype
      mismatches (a typed PRNG key against plain data counts as a dtype
      mismatch) are reported together.
    shardings: where to place the values (with a pytree template: one
      sharding for all, or None): `Params` whose values are
      `jax.sharding.Sharding`s (e.g. from `blox.parallel.param_shardings`), a
      mapping from path to sharding (or None for the default device), or one
      sharding for all. Each value is put on its devices directly. Entries
      for paths that are not loaded are ignored.
    strict: with `like`, whether a mismatch is an error. With `strict=False`
      the result holds only the params that are in both and match (with
      `like`'s flags, metadata, order and locked flag), and a
      `CheckpointWarning` lists the rest.

  Raises:
    CheckpointError: the file is truncated, corrupt, not a blox checkpoint,
      or of a newer format version; or it holds a pytree state and no `like`
      is given. The message names the file.
    ValueError: `strict` and the file does not match `like` (one message
      listing every mismatch by path); `shardings` lacks a loaded path; or a
      64-bit value while JAX's 64-bit mode is off.
    OSError: the file cannot be opened (e.g. FileNotFoundError).

  Example:
    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params, save
    >>> path = os.path.join(tempfile.mkdtemp(), 'ckpt.npz')
    >>> save(path, Params({('b',): Param(jnp.zeros(1)), ('a',): Param(jnp.ones(1))}))
    >>> list(load(path))
    [('b',), ('a',)]
  """
  source = os.fspath(path)
  with open(source, "rb") as file, _open_archive(file, source) as archive:
    leaves = _read_leaves(archive, source)
    if like is not None and not isinstance(like, Params):
      # Imported here: the tree loader builds on this module's steps.
      from blox.params._checkpoint_tree import load_tree

      return load_tree(archive, leaves, like, shardings, strict, source)
    if len(leaves) != 1 or leaves[0].params is None or leaves[0].key:
      raise CheckpointError(
          f"{source!r} holds a pytree of {len(leaves)} leaves, not one Params; pass"
          " a template of the saved state, like=state (or"
          " like=jax.eval_shape(init_fn)), to load it."
      )
    header = leaves[0].params
    selected = _select(header, like, strict, source)
    values = _read_and_place(archive, header, selected, shardings, source)
  return _rebuild(header, selected, values, like)


def _open_archive(file: Any, source: str) -> zipfile.ZipFile:
  """The zip archive in `file`; anything else is a CheckpointError."""
  try:
    return zipfile.ZipFile(file)
  # Any exception: a damaged archive makes zipfile fail in many ways
  # (struct.error, NotImplementedError, UnicodeDecodeError, ...).
  except Exception as error:
    raise CheckpointError(
        f"{source!r} is not a readable blox checkpoint: it is not a zip archive"
        f" ({type(error).__name__}: {error}). The file may be empty, truncated"
        " (an interrupted copy?) or of another kind."
    ) from error


def _read_leaves(archive: zipfile.ZipFile, source: str) -> tuple[Leaf, ...]:
  """The decoded header member; a missing or corrupt one is a CheckpointError."""
  if HEADER_MEMBER not in archive.namelist():
    raise CheckpointError(
        f"{source!r} is not a blox checkpoint: the archive has no {HEADER_MEMBER}"
        " member (a plain .npz? open it with numpy.load instead)."
    )
  with _format_errors(source, f"reading {HEADER_MEMBER}"):
    data = archive.read(HEADER_MEMBER)
  return decode_leaves(data, source)


@contextlib.contextmanager
def _format_errors(source: str, what: str) -> Iterator[None]:
  """Turns the many ways a damaged zip or .npy fails into a CheckpointError."""
  try:
    yield
  except CheckpointError:
    raise
  # Any exception: zipfile and numpy fail on damaged bytes in many ways
  # (BadZipFile, struct.error, NotImplementedError, MemoryError, ...).
  except Exception as error:
    raise CheckpointError(
        f"{source!r} is not a readable blox checkpoint: {what} failed"
        f" ({type(error).__name__}: {error})."
    ) from error


def _select(header: Header, like: Params | None, strict: bool, source: str) -> list[Entry]:
  """The entries to load: all of them, or those matching `like`.

  A mismatch raises (strict) or warns and is skipped (not strict).
  """
  if like is None:
    return list(header.entries)
  selected, problems = _compare(header.entries, like, source)
  if problems:
    report = (
        f"Checkpoint {source!r} does not match `like` ({len(problems)}"
        " problems):\n" + "\n".join(problems)
    )
    if strict:
      raise ValueError(
          report + "\nFix the template, or pass strict=False to load only the"
          " params that match."
      )
    # stacklevel 3: the warning points at the caller of `load`.
    warnings.warn(
        CheckpointWarning(report + "\nOnly the matching params were loaded."),
        stacklevel=3,
    )
  return selected


def _compare(
    entries: Sequence[Entry], like: Params, source: str
) -> tuple[list[Entry], list[str]]:
  """Entries that match `like`, and one line per mismatch, by path."""
  templates = like.as_dict()
  in_file = {entry.path for entry in entries}
  problems = [
      f"  missing from the checkpoint: {path_text(path)}" for path in templates if path not in in_file
  ]
  matching = []
  for entry in entries:
    template = templates.get(entry.path)
    if template is None:
      problems.append(f"  unexpected in the checkpoint (not in like): {path_text(entry.path)}")
      continue
    value = template.value
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
      raise TypeError(
          f"like[{path_text(entry.path)}] holds {type(value).__name__}; a template holds"
          " arrays or jax.ShapeDtypeStruct values."
      )
    fits = True
    if tuple(value.shape) != entry.shape:
      problems.append(
          f"  shape mismatch at {path_text(entry.path)}: checkpoint {entry.shape}, like"
          f" {tuple(value.shape)}"
      )
      fits = False
    if value.dtype != _logical_dtype(entry, source):
      problems.append(
          f"  dtype mismatch at {path_text(entry.path)}: checkpoint {_describe_dtype(entry)},"
          f" like {value.dtype}"
      )
      fits = False
    if fits:
      matching.append(entry)
  return matching, problems


def _logical_dtype(entry: Entry, source: str) -> Any:
  """The dtype the loaded value will have (a key dtype for PRNG keys)."""
  if entry.key_impl is None:
    return entry.dtype
  impl = entry.key_impl
  try:
    return jax.eval_shape(lambda: jax.random.key(0, impl=impl)).dtype
  except (ValueError, TypeError, KeyError) as error:
    raise CheckpointError(
        f"{source!r}: param {path_text(entry.path)} is a PRNG key of the implementation"
        f" {impl!r}, which this JAX does not know ({error})."
    ) from None


def _describe_dtype(entry: Entry) -> str:
  return f"key<{entry.key_impl}>" if entry.key_impl is not None else entry.dtype.name


def _read_and_place(
    archive: zipfile.ZipFile,
    header: Header,
    selected: Sequence[Entry],
    shardings: Shardings | None,
    source: str,
) -> list[jax.Array]:
  """Each selected value read from the archive and put on its devices."""
  for entry in selected:
    _check_enabled_dtype(entry)
  placement = _sharding_table(shardings, [entry.path for entry in selected])
  index = {entry.path: i for i, entry in enumerate(header.entries)}
  return [
      _place(
          entry, _read_array(archive, index[entry.path], entry, source),
          placement[entry.path], source,
      )
      for entry in selected
  ]


def _check_enabled_dtype(entry: Entry) -> None:
  # Without jax_enable_x64, JAX would silently narrow 64-bit values; a
  # checkpoint promises exact values, so say what to do instead.
  if entry.key_impl is None and jax.dtypes.canonicalize_dtype(entry.dtype) != entry.dtype:
    raise ValueError(
        f"Param {path_text(entry.path)} holds {entry.dtype} values, which JAX cannot hold"
        " with 64-bit mode off; enable it (jax.config.update('jax_enable_x64',"
        " True)) before loading."
    )


def _sharding_table(
    shardings: Shardings | None, paths: Sequence[Path]
) -> dict[Path, jax.sharding.Sharding | None]:
  """The sharding of each path to load, from any accepted form of `shardings`."""
  if shardings is None:
    return {path: None for path in paths}
  if isinstance(shardings, jax.sharding.Sharding):
    return {path: shardings for path in paths}
  if isinstance(shardings, Params):
    given: Mapping[Path, Any] = {p: param.value for p, param in shardings.items()}
  elif isinstance(shardings, Mapping):
    given = shardings
  else:
    raise TypeError(
        "shardings must be Params of shardings (e.g. from"
        " blox.parallel.param_shardings), a mapping from path to sharding, or one"
        f" jax.sharding.Sharding; got {type(shardings).__name__}."
    )
  lacking = [path for path in paths if path not in given]
  if lacking:
    raise ValueError(
        f"shardings has no entry for the params {lacking}; give a sharding (or"
        " None for the default device) for every param that is loaded."
    )
  table: dict[Path, jax.sharding.Sharding | None] = {}
  for path in paths:
    sharding = given[path]
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
      raise TypeError(
          f"shardings[{path_text(path)}] is {type(sharding).__name__}, not a"
          " jax.sharding.Sharding or None."
      )
    table[path] = sharding
  return table


def _read_array(archive: zipfile.ZipFile, index: int, entry: Entry, source: str) -> np.ndarray:
  """The `index`-th value as stored, checked against its header entry."""
  name = array_member(index)
  with _format_errors(source, f"reading {name} (param {path_text(entry.path)})"):
    with archive.open(name) as member:
      array = np.lib.format.read_array(member, allow_pickle=False)
      # Reading to the end makes zipfile check the member's CRC, which
      # catches corrupted bytes inside the array data.
      if member.read():
        raise ValueError("unexpected bytes after the array data")
  if not array.dtype.isnative:
    array = array.astype(array.dtype.newbyteorder("="))
  stored = storage_dtype(entry.dtype)
  key_data_axes = array.shape[len(entry.shape):] if entry.key_impl is not None else ()
  if array.dtype != stored or array.shape != entry.shape + key_data_axes:
    raise CheckpointError(
        f"{source!r} is corrupt: {name} (param {path_text(entry.path)}) holds"
        f" {array.dtype}{list(array.shape)}, but the header describes"
        f" {entry.dtype}{list(entry.shape)}."
    )
  return array.view(entry.dtype)


def _place(entry: Entry, array: np.ndarray, sharding: jax.sharding.Sharding | None, source: str) -> jax.Array:
  """`array` on its devices, rebuilt as typed PRNG keys where it holds key data."""
  placed: jax.Array
  if entry.key_impl is not None:
    with _format_errors(source, f"rebuilding the PRNG key {path_text(entry.path)}"):
      placed = jax.random.wrap_key_data(jnp.asarray(array), impl=entry.key_impl)
    if sharding is not None:
      placed = jax.device_put(placed, sharding)
    return placed
  placed = jax.device_put(array, sharding)
  return placed


def _rebuild(
    header: Header, selected: Sequence[Entry], values: Sequence[jax.Array], like: Params | None
) -> Params:
  """The loaded container: in `like`'s structure, or the file's own."""
  if like is not None:
    by_path = {entry.path: value for entry, value in zip(selected, values)}
    if len(by_path) < len(like):
      # strict=False dropped some params: keep like's entries for the rest.
      like, _ = like.split(lambda path, _: path in by_path)
    return like.map(lambda path, _: by_path[path])
  return Params(
      {
          entry.path: Param(value, entry.trainable, entry.metadata)
          for entry, value in zip(selected, values)
      },
      locked=header.locked,
  )
