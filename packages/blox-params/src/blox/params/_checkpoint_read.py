"""The steps of loading a checkpoint that `load` and the pytree loader share.

`blox.params._checkpoint_load` (one `Params`) and
`blox.params._checkpoint_tree` (a whole pytree state) both compare the
file's entries with a template, read each array, place it on its devices and
rebuild a `Params`; those steps live here, below both, so that imports run one
way: `_checkpoint_format` <- `_checkpoint_read` <- `_checkpoint_tree` <-
`_checkpoint_load`.

Example:
  >>> import numpy as np, jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> from blox.params._checkpoint_format import Entry
  >>> entry = Entry(('w',), True, {}, np.dtype('float32'), (2,), None)
  >>> like = Params({('w',): Param(jnp.zeros(3))})
  >>> matching, problems = compare_entries([entry], like, 'ckpt.npz')
  >>> matching, problems[0].strip()
  ([], "shape mismatch at ('w',): checkpoint (2,), like (3,)")
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.params._checkpoint_format import CheckpointError, Entry, Header, array_member, storage_dtype
from blox.params._container import Params
from blox.params._param import Param
from blox.params._paths import path_text

__all__ = [
    "CheckpointWarning",
    "check_enabled_dtype",
    "compare_entries",
    "describe_dtype",
    "format_errors",
    "logical_dtype",
    "place",
    "read_array",
    "rebuild",
]


class CheckpointWarning(UserWarning):
  """`load(..., strict=False)` skipped params that did not match `like`.

  Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...   warnings.simplefilter('always')
    ...   warnings.warn(CheckpointWarning('skipped 1 param'))
    >>> caught[0].category.__name__
    'CheckpointWarning'
  """


@contextlib.contextmanager
def format_errors(source: str, what: str) -> Iterator[None]:
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


def compare_entries(
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
    if value.dtype != logical_dtype(entry, source):
      problems.append(
          f"  dtype mismatch at {path_text(entry.path)}: checkpoint {describe_dtype(entry)},"
          f" like {value.dtype}"
      )
      fits = False
    if fits:
      matching.append(entry)
  return matching, problems


def logical_dtype(entry: Entry, source: str) -> Any:
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


def describe_dtype(entry: Entry) -> str:
  return f"key<{entry.key_impl}>" if entry.key_impl is not None else entry.dtype.name


def check_enabled_dtype(entry: Entry) -> None:
  # Without jax_enable_x64, JAX would silently narrow 64-bit values; a
  # checkpoint promises exact values, so say what to do instead.
  if entry.key_impl is None and jax.dtypes.canonicalize_dtype(entry.dtype) != entry.dtype:
    raise ValueError(
        f"Param {path_text(entry.path)} holds {entry.dtype} values, which JAX cannot hold"
        " with 64-bit mode off; enable it (jax.config.update('jax_enable_x64',"
        " True)) before loading."
    )


def read_array(archive: zipfile.ZipFile, index: int, entry: Entry, source: str) -> np.ndarray:
  """The `index`-th value as stored, checked against its header entry."""
  name = array_member(index)
  with format_errors(source, f"reading {name} (param {path_text(entry.path)})"):
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


def place(entry: Entry, array: np.ndarray, sharding: jax.sharding.Sharding | None, source: str) -> jax.Array:
  """`array` on its devices, rebuilt as typed PRNG keys where it holds key data."""
  placed: jax.Array
  if entry.key_impl is not None:
    with format_errors(source, f"rebuilding the PRNG key {path_text(entry.path)}"):
      placed = jax.random.wrap_key_data(jnp.asarray(array), impl=entry.key_impl)
    if sharding is not None:
      placed = jax.device_put(placed, sharding)
    return placed
  placed = jax.device_put(array, sharding)
  return placed


def rebuild(
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
