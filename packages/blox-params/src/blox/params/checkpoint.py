"""`save` and `load`: one `Params` to one checkpoint file and back, exactly.

A checkpoint keeps every value bit for bit, the trainable flags, the metadata,
the locked flag and typed PRNG keys (with their implementation), so training
resumed from it continues the same random streams. Saving is atomic: the file
at `path` is either the old checkpoint or the complete new one. Loading never
runs code from the file (no pickle). Loading with a template `like` takes
only the values from the file and everything else (order, flags, metadata,
locked flag) from the template, so code wins over an old file. The layout is
described in the package README and in `blox.params.checkpoint_format`.

Example:
  >>> import os, tempfile
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params
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
import secrets
import stat
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from blox.params.checkpoint_format import (
    HEADER_MEMBER,
    CheckpointError,
    Entry,
    Header,
    array_member,
    decode_header,
    encode_header,
    encode_metadata,
    storage_dtype,
    supported_dtype,
)
from blox.params.ordering import Path, rank
from blox.params.param import Param
from blox.params.params import Params

__all__ = ["CheckpointError", "CheckpointWarning", "load", "save"]

Shardings: TypeAlias = Params | Mapping[Path, Any] | jax.sharding.Sharding

# Members are written with a fixed timestamp so that saving the same params
# twice gives the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# The permissions recorded for each member inside the archive (not the file's).
_MEMBER_MODE = 0o644
# A new checkpoint is created like any new file: this mode less the umask,
# which the operating system applies when the file is created.
_NEW_FILE_MODE = 0o666


class CheckpointWarning(UserWarning):
  """`load(..., strict=False)` skipped params that did not match `like`."""


# Saving.


def _is_key(value: Any) -> bool:
  return bool(jnp.issubdtype(value.dtype, jax.dtypes.prng_key))


def _host_ready(path: Path, value: Any) -> Any:
  """Checks that `value` can be saved; returns what to fetch to the host."""
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"Cannot save param {path!r}: it is a traced value, so save() was called"
        " inside jax.jit, grad or vmap. Save the concrete params outside the"
        " transformed function."
    )
  if isinstance(value, jax.Array):
    if value.is_deleted():
      raise ValueError(
          f"Cannot save param {path!r}: its array was deleted (donated to a jitted"
          " call?). Save the params that call returned instead."
      )
    if not value.is_fully_addressable:
      # Gathering across processes would need every process to take part; a
      # checkpoint written by one process cannot do that, so refuse clearly.
      raise ValueError(
          f"Cannot save param {path!r}: it is sharded over devices of other"
          " processes, and save() writes from one process. Gather it first"
          " (jax.experimental.multihost_utils.process_allgather) or use a"
          " multi-process checkpointer."
      )
    if _is_key(value):
      return jax.random.key_data(value)
  elif not isinstance(value, np.ndarray):
    raise TypeError(
        f"Cannot save param {path!r}: its value is {type(value).__name__}, not an"
        " array. Checkpoints hold concrete jax or numpy arrays (abstract params"
        " from jax.eval_shape have no values to save)."
    )
  if not supported_dtype(value.dtype):
    raise TypeError(
        f"Cannot save param {path!r}: dtype {value.dtype} is not a number or bool"
        " dtype. Checkpoints store numeric arrays only, never pickled objects."
    )
  return value


def _describe(params: Params) -> tuple[bytes, list[np.ndarray]]:
  """The header bytes and the host arrays to store, in container order.

  Everything that can fail on the params' side happens here, before the
  temporary file exists: metadata encoding, dtype checks, device transfers.
  """
  items = list(params.items())
  # Metadata first: a bad entry should fail before a long device transfer.
  for path, param in items:
    encode_metadata(path, param.metadata)
  to_fetch = [_host_ready(path, param.value) for path, param in items]
  host = jax.device_get(to_fetch)
  entries, arrays = [], []
  for (path, param), fetched in zip(items, host):
    array = np.asarray(fetched, order="C")
    key_impl = None
    shape = array.shape
    if _is_key(param.value):
      key_impl = str(jax.random.key_impl(param.value))
      shape = tuple(param.value.shape)
    entries.append(
        Entry(path, param.trainable, param.metadata, array.dtype, shape, key_impl)
    )
    arrays.append(array.view(storage_dtype(array.dtype)))
  return encode_header(params.is_locked, entries), arrays


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


def _fsync_directory(directory: str) -> None:
  """Makes the rename durable. Best effort: some systems cannot open or sync
  a directory, and the new checkpoint is already in place by then."""
  with contextlib.suppress(OSError):
    fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
  """Opens a new, uniquely named file next to `name` for writing.

  Unlike `tempfile.mkstemp` (always 0o600), the file gets the mode a new file
  gets from the process's umask: the kernel applies the umask at creation,
  so it never has to be read (reading it means changing it, which races with
  other threads).
  """
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
  for _ in range(100):
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
      return os.open(temporary, flags, _NEW_FILE_MODE), temporary
    except FileExistsError:
      continue
  raise FileExistsError(f"Could not create a temporary file for {name!r} in {directory!r}.")


def save(path: str | os.PathLike[str], params: Params) -> None:
  """Writes `params` to one checkpoint file at `path`, atomically.

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
    params: concrete params (not abstract ones from `jax.eval_shape`).

  Raises:
    TypeError: a value is not a numeric or bool array, or a metadata value is
      not None, bool, int, float, str or a tuple of these.
    ValueError: a value was deleted, or is sharded over devices of other
      processes (multi-process runs must gather first).
    OSError: the file could not be written.
  """
  if not isinstance(params, Params):
    raise TypeError(f"save() takes Params, got {type(params).__name__}.")
  target = os.path.abspath(os.fspath(path))
  header, arrays = _describe(params)
  directory, name = os.path.split(target)
  # Replacing a checkpoint keeps its permissions; a new one gets the umask's.
  mode: int | None
  try:
    mode = stat.S_IMODE(os.stat(target).st_mode)
  except OSError:
    mode = None
  fd, temporary = _create_temporary(directory, name)
  try:
    with os.fdopen(fd, "wb") as file:
      _write_checkpoint(file, header, arrays)
      file.flush()
      os.fsync(file.fileno())
    if mode is not None:
      os.chmod(temporary, mode)
    os.replace(temporary, target)
  except BaseException:
    # The temporary file is ours alone; remove it whatever went wrong (also
    # on KeyboardInterrupt), and leave `path` untouched.
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise
  _fsync_directory(directory)


# Loading.


@contextlib.contextmanager
def _format_errors(source: str, what: str) -> Iterator[None]:
  """Turns the many ways a damaged zip or .npy fails into a CheckpointError."""
  try:
    yield
  except CheckpointError:
    raise
  except (
      zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, KeyError,
      NotImplementedError, RuntimeError, OverflowError, OSError,
  ) as error:
    raise CheckpointError(
        f"{source!r} is not a readable blox checkpoint: {what} failed"
        f" ({type(error).__name__}: {error})."
    ) from error


def _read_header(archive: zipfile.ZipFile, source: str) -> Header:
  if HEADER_MEMBER not in archive.namelist():
    raise CheckpointError(
        f"{source!r} is not a blox checkpoint: the archive has no {HEADER_MEMBER}"
        " member (a plain .npz? open it with numpy.load instead)."
    )
  with _format_errors(source, f"reading {HEADER_MEMBER}"):
    data = archive.read(HEADER_MEMBER)
  return decode_header(data, source)


def _read_array(archive: zipfile.ZipFile, index: int, entry: Entry, source: str) -> np.ndarray:
  """The `index`-th value as stored, checked against its header entry."""
  name = array_member(index)
  with _format_errors(source, f"reading {name} (param {entry.path!r})"):
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
        f"{source!r} is corrupt: {name} (param {entry.path!r}) holds"
        f" {array.dtype}{list(array.shape)}, but the header describes"
        f" {entry.dtype}{list(entry.shape)}."
    )
  return array.view(entry.dtype)


def _logical_dtype(entry: Entry, source: str) -> Any:
  """The dtype the loaded value will have (a key dtype for PRNG keys)."""
  if entry.key_impl is None:
    return entry.dtype
  impl = entry.key_impl
  try:
    return jax.eval_shape(lambda: jax.random.key(0, impl=impl)).dtype
  except (ValueError, TypeError, KeyError) as error:
    raise CheckpointError(
        f"{source!r}: param {entry.path!r} is a PRNG key of the implementation"
        f" {impl!r}, which this JAX does not know ({error})."
    ) from None


def _describe_dtype(entry: Entry) -> str:
  return f"key<{entry.key_impl}>" if entry.key_impl is not None else entry.dtype.name


def _compare(
    entries: Sequence[Entry], like: Params, source: str
) -> tuple[list[Entry], list[str]]:
  """Entries that match `like`, and one line per mismatch, by path."""
  templates = like.as_dict()
  in_file = {entry.path for entry in entries}
  problems = [
      f"  missing from the checkpoint: {path!r}" for path in templates if path not in in_file
  ]
  matching = []
  for entry in entries:
    template = templates.get(entry.path)
    if template is None:
      problems.append(f"  unexpected in the checkpoint (not in like): {entry.path!r}")
      continue
    value = template.value
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
      raise TypeError(
          f"like[{entry.path!r}] holds {type(value).__name__}; a template holds"
          " arrays or jax.ShapeDtypeStruct values."
      )
    fits = True
    if tuple(value.shape) != entry.shape:
      problems.append(
          f"  shape mismatch at {entry.path!r}: checkpoint {entry.shape}, like"
          f" {tuple(value.shape)}"
      )
      fits = False
    if value.dtype != _logical_dtype(entry, source):
      problems.append(
          f"  dtype mismatch at {entry.path!r}: checkpoint {_describe_dtype(entry)},"
          f" like {value.dtype}"
      )
      fits = False
    if fits:
      matching.append(entry)
  return matching, problems


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
          f"shardings[{path!r}] is {type(sharding).__name__}, not a"
          " jax.sharding.Sharding or None."
      )
    table[path] = sharding
  return table


def _check_enabled_dtype(entry: Entry) -> None:
  # Without jax_enable_x64, JAX would silently narrow 64-bit values; a
  # checkpoint promises exact values, so say what to do instead.
  if entry.key_impl is None and jax.dtypes.canonicalize_dtype(entry.dtype) != entry.dtype:
    raise ValueError(
        f"Param {entry.path!r} holds {entry.dtype} values, which JAX cannot hold"
        " with 64-bit mode off; enable it (jax.config.update('jax_enable_x64',"
        " True)) before loading."
    )


def _place(entry: Entry, array: np.ndarray, sharding: jax.sharding.Sharding | None, source: str) -> jax.Array:
  placed: jax.Array
  if entry.key_impl is not None:
    with _format_errors(source, f"rebuilding the PRNG key {entry.path!r}"):
      placed = jax.random.wrap_key_data(jnp.asarray(array), impl=entry.key_impl)
    if sharding is not None:
      placed = jax.device_put(placed, sharding)
    return placed
  placed = jax.device_put(array, sharding)
  return placed


def _shaped_like(like: Params, values: Mapping[Path, jax.Array]) -> Params:
  """`values` in the structure of `like`, or of its params that were loaded.

  The structure is `like`'s own (order, flags, metadata, locked flag), so a
  full match is the same pytree structure and hits the same jit cache.
  """
  if len(values) < len(like):
    # strict=False dropped some params: keep like's entries for the rest.
    like, _ = like.split(lambda path, _: path in values)
  # Each value is one leaf, whatever a template value is registered as.
  structure = jax.tree.structure(like, is_leaf=lambda node: node is not like)
  loaded: Params = jax.tree.unflatten(structure, [values[path] for path in like])
  return loaded


def load(
    path: str | os.PathLike[str],
    like: Params | None = None,
    shardings: Shardings | None = None,
    strict: bool = True,
) -> Params:
  """Reads params saved by `save`. Never unpickles or runs code from the file.

  Values come back as jax arrays with their saved dtypes, typed PRNG keys as
  typed keys of their saved implementation.

  Without `like`, everything comes from the file: the trainable flags,
  metadata and locked flag as saved. Paths are listed in creation order;
  paths new to this process are first seen in the file's order, so they keep
  the saved container's order.

  With `like`, the file provides only the values: the structure (path order,
  trainable flags, metadata, locked flag) is `like`'s, so the result has the
  same pytree structure as `like` and reuses functions compiled for it. Code
  wins over an old file: a pretrained checkpoint saved with every param
  trainable loads into a template with a frozen backbone as frozen, and
  sharding metadata changed since the save is kept.

  Args:
    path: the checkpoint file.
    like: optional template (concrete params, or abstract ones from
      `jax.eval_shape`) that gives the result its structure. Paths missing
      from the file, unexpected paths, and shape and dtype mismatches (a
      typed PRNG key against plain data counts as a dtype mismatch) are
      reported together.
    shardings: where to place the values: `Params` whose values are
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
      or of a newer format version. The message names the file.
    ValueError: `strict` and the file does not match `like` (one message
      listing every mismatch by path); `shardings` lacks a loaded path; or a
      64-bit value while JAX's 64-bit mode is off.
    OSError: the file cannot be opened (e.g. FileNotFoundError).
  """
  source = os.fspath(path)
  if like is not None and not isinstance(like, Params):
    raise TypeError(f"like must be Params (or None), got {type(like).__name__}.")
  with open(source, "rb") as file:
    try:
      archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as error:
      raise CheckpointError(
          f"{source!r} is not a readable blox checkpoint: it is not a zip archive"
          f" ({type(error).__name__}: {error}). The file may be empty, truncated"
          " (an interrupted copy?) or of another kind."
      ) from error
    with archive:
      header = _read_header(archive, source)
      index = {entry.path: i for i, entry in enumerate(header.entries)}
      selected = list(header.entries)
      if like is not None:
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
          warnings.warn(
              CheckpointWarning(report + "\nOnly the matching params were loaded."),
              stacklevel=2,
          )
      for entry in selected:
        _check_enabled_dtype(entry)
      placement = _sharding_table(shardings, [entry.path for entry in selected])
      values = [
          _place(
              entry, _read_array(archive, index[entry.path], entry, source),
              placement[entry.path], source,
          )
          for entry in selected
      ]
  if like is not None:
    return _shaped_like(like, {entry.path: value for entry, value in zip(selected, values)})
  # Register paths this process has not seen yet in file order, so that the
  # container below lists them as they were saved.
  for entry in header.entries:
    rank(entry.path)
  return Params(
      {
          entry.path: Param(value, entry.trainable, entry.metadata)
          for entry, value in zip(selected, values)
      },
      locked=header.locked,
  )
