"""`save`: a training state (any pytree of arrays and `Params`) to one file, atomically.

A checkpoint keeps every value bit for bit, the trainable flags, the metadata,
the locked flag and typed PRNG keys (with their implementation), so training
resumed from it continues the same random streams. The file at `path` is
either the old checkpoint or the complete new one (`blox.params._atomic`).
The layout is described in the package README and in
`blox.params._checkpoint_format`; `blox.params._checkpoint_load` reads it.

Example:
  >>> import os, tempfile
  >>> import jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> path = os.path.join(tempfile.mkdtemp(), 'params.npz')
  >>> save(path, Params({('w',): Param(jnp.arange(3.0))}))
  >>> os.listdir(os.path.dirname(path))
  ['params.npz']
  >>> save(os.path.join(path + '.d', 'p.npz'), Params())  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  FileNotFoundError: Cannot save checkpoint to '...p.npz': the folder '...params.npz.d' does not exist; create it first (os.makedirs).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from typing import IO, Any

import jax
import numpy as np

from blox.params._array_kinds import is_prng_key
from blox.params._atomic import write_atomically
from blox.params._checkpoint_format import (
    HEADER_MEMBER,
    Entry,
    Header,
    Leaf,
    array_member,
    encode_leaves,
    encode_metadata,
    storage_dtype,
    supported_dtype,
)
from blox.params._container import Params
from blox.params._paths import Path, path_text

__all__ = ["save"]

# Members are written with a fixed timestamp so that saving the same params
# twice gives the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# The permissions recorded for each member inside the archive (not the file's).
_MEMBER_MODE = 0o644


def _host_ready(path: Path | str, value: Any) -> Any:
  """Checks that `value` can be saved; returns what to fetch to the host.

  `path` is a param path, or (a str) the key path of a pytree leaf.
  """
  what = f"leaf {path!r}" if isinstance(path, str) else f"param {path_text(path)}"
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"Cannot save {what}: it is a traced value, so save() was called"
        " inside jax.jit, grad or vmap. Save the concrete params outside the"
        " transformed function."
    )
  if isinstance(value, jax.Array):
    if value.is_deleted():
      raise ValueError(
          f"Cannot save {what}: its array was deleted (donated to a jitted"
          " call?). Save the params that call returned instead."
      )
    if not value.is_fully_addressable:
      # Gathering across processes would need every process to take part; a
      # checkpoint written by one process cannot do that, so refuse clearly.
      raise ValueError(
          f"Cannot save {what}: it lives on devices of other"
          " processes, and save() writes from one process. Save sharded,"
          " multi-host states with orbax-checkpoint (CheckpointManager with"
          " args.StandardSave; see docs/guides/checkpointing.md), or gather"
          " it first (jax.experimental.multihost_utils.process_allgather)."
      )
    if is_prng_key(value):
      return jax.random.key_data(value)
  elif not isinstance(value, np.ndarray):
    raise TypeError(
        f"Cannot save {what}: its value is {type(value).__name__}, not an"
        " array. Checkpoints hold concrete jax or numpy arrays (abstract params"
        " from jax.eval_shape have no values to save)."
    )
  if not supported_dtype(value.dtype):
    raise TypeError(
        f"Cannot save {what}: dtype {value.dtype} is not a number or bool"
        " dtype. Checkpoints store numeric arrays only, never pickled objects."
    )
  return value


def _python_scalar(key: str, value: bool | int | float) -> np.ndarray:
  """A Python bool, int or float as a 0-d numpy array that holds it exactly."""
  try:
    return np.asarray(value)
  except OverflowError:
    raise TypeError(
        f"Cannot save leaf {key!r}: the int {value} does not fit in 64 bits; store"
        " it as an array or a string elsewhere."
    ) from None


def _describe(state: Any) -> tuple[bytes, list[np.ndarray]]:
  """The header bytes and the host arrays to store, in file order.

  Everything that can fail on the state's side happens here, before the
  temporary file exists: metadata encoding, dtype checks, device transfers.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, Params))
  # (leaf key, param path or None, value, Param or None) per stored array.
  rows: list[tuple[str, Path | None, Any, Any]] = []
  python: set[str] = set()
  for key_path, leaf in flat:
    key = jax.tree_util.keystr(key_path)
    if isinstance(leaf, Params):
      # Metadata first: a bad entry should fail before a long device transfer.
      for path, param in leaf.items():
        encode_metadata(path, param.metadata)
        rows.append((key, path, param.value, param))
    elif type(leaf) in (bool, int, float):
      python.add(key)
      rows.append((key, None, _python_scalar(key, leaf), None))
    elif isinstance(leaf, np.generic):
      rows.append((key, None, np.asarray(leaf), None))
    else:
      rows.append((key, None, leaf, None))
  to_fetch = [_host_ready(key if path is None else path, value) for key, path, value, _ in rows]
  host = jax.device_get(to_fetch)
  leaves: list[Leaf] = []
  arrays: list[np.ndarray] = []
  for (key, param_path, value, param), fetched in zip(rows, host):
    array = np.asarray(fetched, order="C")
    key_impl = None
    shape = array.shape
    if is_prng_key(value):
      key_impl = str(jax.random.key_impl(value))
      shape = tuple(value.shape)
    arrays.append(array.view(storage_dtype(array.dtype)))
    if param is None:
      entry = Entry((key,), False, {}, array.dtype, shape, key_impl)
      leaves.append(Leaf(key, None, entry, key in python))
      continue
    entry = Entry(param_path or (), param.trainable, param.metadata, array.dtype, shape, key_impl)
    if not leaves or leaves[-1].key != key:
      leaves.append(Leaf(key, Header(_locked(flat, key), ()), None, False))
    last = leaves[-1]
    assert last.params is not None
    leaves[-1] = Leaf(key, Header(last.params.locked, last.params.entries + (entry,)), None, False)
  for key_path, leaf in flat:
    # An empty Params has no arrays, but is a leaf all the same.
    key = jax.tree_util.keystr(key_path)
    if isinstance(leaf, Params) and not len(leaf):
      leaves.append(Leaf(key, Header(leaf.is_locked, ()), None, False))
  return encode_leaves(leaves), arrays


def _locked(flat: Any, key: str) -> bool:
  for key_path, leaf in flat:
    if jax.tree_util.keystr(key_path) == key:
      return bool(leaf.is_locked)
  raise AssertionError(key)


def _member_info(name: str) -> zipfile.ZipInfo:
  info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
  info.compress_type = zipfile.ZIP_STORED
  info.external_attr = _MEMBER_MODE << 16
  return info


def _write_checkpoint(file: IO[bytes], header: bytes, arrays: Sequence[np.ndarray]) -> None:
  """Writes the archive: the header first, then one `.npy` member per array."""
  with zipfile.ZipFile(file, mode="w", allowZip64=True) as archive:
    archive.writestr(_member_info(HEADER_MEMBER), header)
    for index, array in enumerate(arrays):
      # force_zip64: the member size is unknown when its local header is
      # written, and an array may exceed the 4 GiB limit of plain zip.
      with archive.open(_member_info(array_member(index)), "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def save(path: str | os.PathLike[str], state: Any) -> None:
  """Writes `state` to one checkpoint file at `path`, atomically.

  `state` is `Params`, or any pytree (dicts, lists, tuples, NamedTuples such
  as optax states, `None`s) whose leaves are `Params`, jax or numpy arrays
  (typed PRNG keys included) and Python bools, ints and floats (stored
  exactly, as 0-d arrays). The header records the key path of every leaf
  (`jax.tree_util.keystr`), never a pickled tree; `load(path, like=...)`
  rebuilds the structure from a template.

  Values are fetched from their devices (sharded arrays are assembled on the
  host) and stored bit for bit with their dtypes, together with the trainable
  flags, metadata, the locked flag and, for typed PRNG keys, the key data and
  implementation name.

  The file is written under a temporary name in the same folder, flushed,
  synced and then renamed over `path`: a save that fails for any reason
  leaves an existing checkpoint at `path` as it was, and removes its
  temporary file. A checkpoint that replaces a file keeps that file's
  permissions; a new one gets those of any new file (0o666 less the umask).

  Args:
    path: the file to write; its folder must exist. The name is used as given
      (`.npz` suits: numpy can open the file).
    state: concrete params or a pytree holding them and arrays (not abstract
      values from `jax.eval_shape`).

  Raises:
    TypeError: a value is not a numeric or bool array, or a metadata value is
      not None, bool, int, float, str or a tuple of these.
    ValueError: a value was deleted, or is sharded over devices of other
      processes (multi-process runs must gather first).
    FileNotFoundError: the folder of `path` does not exist (the message names
      it: create it first).
    OSError: the file could not be written.

  Example:
    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params, load
    >>> path = os.path.join(tempfile.mkdtemp(), 'ckpt.npz')
    >>> save(path, Params({('w',): Param(jnp.ones(2))}).locked())
    >>> load(path).is_locked
    True
  """
  target = os.path.abspath(os.fspath(path))
  header, arrays = _describe(state)
  write_atomically(
      target,
      lambda file: _write_checkpoint(file, header, arrays),
      what="checkpoint",
  )
