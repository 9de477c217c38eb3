"""Writing a Hugging Face safetensors checkpoint folder, streamed and atomic.

`write_checkpoint(folder, tensors)` takes each tensor's name, shape and dtype
upfront and its values later (`PendingTensor.produce`), so it plans the
shards before producing anything, then produces each tensor just before its
bytes are written and lets it go after: one tensor at a time is in host
memory. Shards are filled in the order given, as Hugging Face fills them; a
tensor larger than `max_shard_size` gets a shard of its own. The layout is
the one `transformers` writes and reads: `model.safetensors`, or
`model-00001-of-0000N.safetensors` ... and `model.safetensors.index.json`.

Atomic: each file is written under a temporary name (`.NAME.XXXXXXXXXXXX.tmp`)
in the folder, flushed and fsynced; only when all are complete are they
renamed into place, the index last. Readers look for `model.safetensors`
first, then the index, so at every moment the folder holds the previous
checkpoint or the new one, and files the new one does not use (another shard
count's shards, a single file or an index) are removed only after it is
complete. One exception: a sharded save over shards of the same names first
removes the previous index, so that a process killed while renaming leaves
no checkpoint rather than an index over a mix of old and new shards. An
exception (from `produce`, a full disk) removes the temporaries and leaves
the previous checkpoint as it was; a killed process can leave temporaries,
which the next successful save removes. Two saves into one folder at once
are not supported.

Example:
  >>> import tempfile, numpy as np
  >>> folder = tempfile.mkdtemp()
  >>> tensors = [PendingTensor(f'layer{i}.w', (4,), np.float32, lambda: np.ones(4, np.float32))
  ...            for i in range(3)]
  >>> [path.name for path in write_checkpoint(folder, tensors, max_shard_size=32)]
  ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
"""

from __future__ import annotations

import contextlib
import decimal
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from blox.models._safetensors_format import (
    INDEX_FILE,
    METADATA_KEY,
    SHARD_PATTERN,
    SINGLE_FILE,
    RawEntry,
    dtype_code,
    encode_header,
    shard_file_name,
    supported_text,
)

__all__ = ["PendingTensor", "parse_size", "write_checkpoint"]

# Decimal units as Hugging Face parses max_shard_size, and binary ones.
_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
# The temporaries of this module's files, left behind by a killed save.
_TEMPORARY = re.compile(r"\.model.*\.safetensors(\.index\.json)?\.[0-9a-f]{12}\.tmp")
# The mode of a new file less the umask, which the system applies on creation.
_NEW_FILE_MODE = 0o666


class PendingTensor(NamedTuple):
  """A tensor to write: its name, shape and dtype now, its values when needed.

  `produce()` is called once, just before the tensor's bytes are written,
  and must return a numpy array of exactly `shape` and `dtype` (bfloat16 is
  `ml_dtypes.bfloat16`).

  Example:
    >>> import numpy as np
    >>> PendingTensor('bias', (2,), np.float32, lambda: np.zeros(2, np.float32)).produce()
    array([0., 0.], dtype=float32)
  """

  name: str
  shape: tuple[int, ...]
  dtype: npt.DTypeLike
  produce: Callable[[], npt.NDArray[Any]]


class _Planned(NamedTuple):
  """A checked `PendingTensor`, with its dtype code and byte count."""

  name: str
  shape: tuple[int, ...]
  dtype: np.dtype[Any]
  code: str
  nbytes: int
  produce: Callable[[], npt.NDArray[Any]]


def parse_size(size: int | str) -> int:
  """A size in bytes, from an int or a string like `'5GB'` or `'500MiB'`.

  Units: B, KB, MB, GB, TB (powers of 1000, as Hugging Face reads them) and
  KiB, MiB, GiB, TiB (powers of 1024), in any case; fractions are rounded
  down to whole bytes.

  Raises:
    TypeError: `size` is neither an int nor a string.
    ValueError: the string is not a number and a unit, or the size is not
      at least one byte.

  Example:
    >>> parse_size('5GB'), parse_size('1.5 KiB'), parse_size(300)
    (5000000000, 1536, 300)
  """
  if isinstance(size, bool) or not isinstance(size, (int, str)):
    raise TypeError(f"A size is an int (bytes) or a string like '5GB' or '500MiB'; got {size!r}.")
  if isinstance(size, int):
    count = size
  else:
    match = _SIZE.fullmatch(size)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
      raise ValueError(
          f"Cannot read the size {size!r}: write a number and a unit, like '5GB',"
          f" '500MB' or '2GiB' (units: {', '.join(_UNITS)}; any case), or pass"
          " an int of bytes."
      )
    # Decimal, so that '1.1GB' is exactly 1_100_000_000 bytes.
    count = int(decimal.Decimal(match.group(1)) * _UNITS[unit])
  if count < 1:
    raise ValueError(f"A size must be at least one byte; got {size!r}.")
  return count


def write_checkpoint(
    folder: str | os.PathLike[str],
    tensors: Sequence[PendingTensor],
    *,
    max_shard_size: int | str = "5GB",
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
  """Writes `tensors` as a Hugging Face safetensors checkpoint in `folder`.

  See the module docstring for the layout, memory and atomicity.

  Args:
    folder: where to write; created if missing. A previous checkpoint there
      is replaced.
    tensors: the tensors, in the order their shards are filled.
    max_shard_size: the most tensor bytes in one shard (see `parse_size`).
    metadata: more `__metadata__` for every file, besides `{'format': 'pt'}`.

  Returns:
    The files written: the shards, in order, then the index if sharded.

  Raises:
    TypeError, ValueError: a misuse the message names: a duplicate or empty
      name, a bad shape or dtype, metadata that is not strings, an array
      from `produce` whose shape or dtype differs from the declared one.
    NotADirectoryError: `folder` is a file.
    Whatever `produce` raises; the previous checkpoint is then left as it was.
  """
  limit = parse_size(max_shard_size)
  planned = _check_tensors(tensors)
  header_metadata = _header_metadata(metadata)
  shards = _plan_shards(planned, limit)
  if len(shards) == 1:
    names = [SINGLE_FILE]
  else:
    names = [shard_file_name(number, len(shards)) for number in range(1, len(shards) + 1)]
  target = Path(folder)
  if target.exists() and not target.is_dir():
    raise NotADirectoryError(f"Cannot write a checkpoint into {str(target)!r}: it is a file.")
  target.mkdir(parents=True, exist_ok=True)
  temporaries: list[str] = []
  try:
    for name, shard in zip(names, shards):
      temporaries.append(_write_shard(target, name, shard, header_metadata))
    _commit(target, names, temporaries, shards)
  except BaseException:
    for temporary in temporaries:  # those already renamed are gone: no matter
      with contextlib.suppress(OSError):
        os.unlink(temporary)
    raise
  written = [target / name for name in names]
  return written + [target / INDEX_FILE] if len(names) > 1 else written


def _check_tensors(tensors: Sequence[PendingTensor]) -> list[_Planned]:
  if not isinstance(tensors, Sequence) or isinstance(tensors, (str, bytes)):
    raise TypeError(f"tensors must be a sequence of PendingTensor; got {type(tensors).__name__}.")
  if not tensors:
    raise ValueError("There are no tensors to write: a checkpoint holds at least one.")
  planned: dict[str, _Planned] = {}
  for tensor in tensors:
    if not isinstance(tensor, PendingTensor):
      raise TypeError(f"tensors must hold PendingTensor(name, shape, dtype, produce); got {tensor!r:.200}.")
    name, shape, dtype, produce = tensor
    if not isinstance(name, str) or not name or name == METADATA_KEY:
      raise ValueError(f"A tensor name is a non-empty string other than {METADATA_KEY!r}; got {name!r}.")
    if name in planned:
      raise ValueError(f"Tensor {name!r} is given twice; a checkpoint holds each name once.")
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape
    ):
      raise ValueError(f"The shape of tensor {name!r} must be a tuple of sizes >= 0; got {shape!r}.")
    try:
      checked = np.dtype(dtype)
    except TypeError:
      checked = None
    code = None if checked is None else dtype_code(checked)
    if checked is None or code is None:
      raise ValueError(
          f"Tensor {name!r} has dtype {dtype!r}, which safetensors checkpoints do"
          f" not hold; use one of {supported_text()}."
      )
    if not callable(produce):
      raise TypeError(f"The produce of tensor {name!r} must be a function of no arguments; got {produce!r}.")
    shape = tuple(shape)
    planned[name] = _Planned(name, shape, checked, code, math.prod(shape) * checked.itemsize, produce)
  return list(planned.values())


def _header_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
  """`{'format': 'pt'}` and `metadata`: transformers refuses other formats."""
  extra = dict(metadata or {})
  if not all(isinstance(key, str) and isinstance(value, str) for key, value in extra.items()):
    raise TypeError(f"metadata must map strings to strings; got {extra!r:.200}.")
  if extra.get("format", "pt") != "pt":
    raise ValueError(
        f"metadata sets format {extra['format']!r}; it must be 'pt', which"
        " transformers requires of every checkpoint it loads."
    )
  return {"format": "pt", **extra}


def _plan_shards(tensors: list[_Planned], limit: int) -> list[list[_Planned]]:
  """Fills shards in order, a new one when the next tensor would pass `limit`."""
  shards: list[list[_Planned]] = []
  size = 0
  for tensor in tensors:
    if tensor.nbytes > limit:
      shards.append([tensor])  # a shard of its own
      size = limit  # and the next tensor starts another
    elif shards and size + tensor.nbytes <= limit:
      shards[-1].append(tensor)
      size += tensor.nbytes
    else:
      shards.append([tensor])
      size = tensor.nbytes
  return shards


def _write_shard(folder: Path, name: str, shard: list[_Planned], metadata: dict[str, str]) -> str:
  """Writes one file under a temporary name, fsynced; returns that name."""
  # Larger items first: every tensor then starts at a multiple of its itemsize.
  ordered = sorted(shard, key=lambda tensor: (-tensor.dtype.itemsize, tensor.name))
  entries: dict[str, RawEntry] = {}
  offset = 0
  for tensor in ordered:
    entries[tensor.name] = RawEntry(tensor.code, tensor.shape, offset, offset + tensor.nbytes)
    offset += tensor.nbytes
  fd, temporary = _create_temporary(folder, name)
  try:
    with os.fdopen(fd, "wb") as file:
      file.write(encode_header(entries, metadata))
      for tensor in ordered:
        _write_tensor(file, tensor, name)
      file.flush()
      os.fsync(file.fileno())
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise
  return temporary


def _write_tensor(file: IO[bytes], tensor: _Planned, shard: str) -> None:
  """Produces one tensor, checks it and writes its bytes; keeps no reference."""
  array = tensor.produce()
  if isinstance(array, np.generic):
    array = np.asarray(array)
  if not isinstance(array, np.ndarray):
    raise TypeError(
        f"The produce of tensor {tensor.name!r} returned a {type(array).__name__};"
        " it must return a numpy array (np.asarray(value))."
    )
  if array.shape != tensor.shape or array.dtype != tensor.dtype:
    raise ValueError(
        f"The produce of tensor {tensor.name!r} (for {shard}) returned"
        f" {array.dtype}{list(array.shape)}, but it was declared"
        f" {tensor.dtype}{list(tensor.shape)}: produce what was declared."
    )
  # Row-major bytes; a copy only if the array is not contiguous already.
  file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)


def _commit(
    folder: Path, names: list[str], temporaries: list[str], shards: list[list[_Planned]]
) -> None:
  """Renames the complete files into place, writes the index, then removes
  what the previous checkpoint left that this one does not use."""
  sharded = len(names) > 1
  index = folder / INDEX_FILE
  if sharded and index.exists() and any((folder / name).exists() for name in names):
    # An index over renamed shards of both saves would read as a checkpoint;
    # without one, a save killed midway leaves none.
    os.unlink(index)
    _fsync_folder(folder)
  for temporary, name in zip(temporaries, names):
    os.replace(temporary, folder / name)
  # The shards are durably in place before the index that names them.
  _fsync_folder(folder)
  if sharded:
    weight_map = {tensor.name: name for name, shard in zip(names, shards) for tensor in shard}
    index_text = json.dumps(
        {
            "metadata": {"total_size": sum(t.nbytes for shard in shards for t in shard)},
            "weight_map": weight_map,
        },
        indent=2, sort_keys=True,
    ) + "\n"
    fd, temporary = _create_temporary(folder, INDEX_FILE)
    temporaries.append(temporary)
    with os.fdopen(fd, "wb") as file:
      file.write(index_text.encode("utf-8"))
      file.flush()
      os.fsync(file.fileno())
    os.replace(temporary, index)
    _fsync_folder(folder)
  for entry in sorted(os.listdir(folder)):
    stale = (
        (SHARD_PATTERN.fullmatch(entry) is not None and entry not in names)
        or (entry == SINGLE_FILE and sharded)
        or (entry == INDEX_FILE and not sharded)
        or _TEMPORARY.fullmatch(entry) is not None
    )
    if stale:
      os.unlink(folder / entry)
  _fsync_folder(folder)


def _create_temporary(folder: Path, name: str) -> tuple[int, str]:
  """Creates `.NAME.XXXXXXXXXXXX.tmp` in `folder`, with a new file's mode."""
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
  while True:
    temporary = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
    with contextlib.suppress(FileExistsError):
      return os.open(temporary, flags, _NEW_FILE_MODE), temporary


def _fsync_folder(folder: Path) -> None:
  """Makes renames and removals durable; best effort, as some systems cannot
  sync a folder."""
  with contextlib.suppress(OSError):
    fd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
