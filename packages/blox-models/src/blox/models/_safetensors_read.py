"""Reading a Hugging Face safetensors checkpoint folder, a tensor or a slice at a time.

`CheckpointFiles(folder)` finds the folder's layout (`model.safetensors`, or
shards and `model.safetensors.index.json`; the single file first, as
`transformers` looks) and reads every file's header when it is made, so a
missing, corrupt or inconsistent checkpoint fails at once. It keeps the files
open, so later reads see the files as they were then, even if a save
replaces them. `read(name, index)` reads only the bytes `index` selects,
with `pread` straight into the result (see `_safetensors_slices`): reading a
slice costs the slice's memory, not the tensor's or the file's, and the whole
tensor costs its own size once (a mapping would count its pages too).

It reads the bytes at the header's offsets itself rather than through
`safetensors.safe_open`, whose slices refuse negative starts and steps,
bounds past an axis and zero-size axes, and whose older versions cannot give
numpy bfloat16. It never unpickles: PyTorch `.bin` files are refused.

Example:
  >>> import os, tempfile, numpy as np
  >>> from safetensors.numpy import save_file
  >>> folder = tempfile.mkdtemp()
  >>> weights = {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}
  >>> save_file(weights, os.path.join(folder, 'model.safetensors'), {'format': 'pt'})
  >>> with CheckpointFiles(folder) as files:
  ...   files.names, files.info('w'), files.read('w', (slice(None), 1))
  (('w',), TensorInfo(shape=(2, 3), dtype=dtype('float32'), file='model.safetensors'), array([1., 4.], dtype=float32))
"""

from __future__ import annotations

import difflib
import math
import mmap
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from blox.models._safetensors_format import (
    DTYPES,
    INDEX_FILE,
    SINGLE_FILE,
    Header,
    RawEntry,
    SafetensorsError,
    few,
    find_layout,
    read_header,
    supported_text,
)
from blox.models._safetensors_slices import Index, Selection, check_index, select

__all__ = ["PREAD_MAX_RUNS", "CheckpointFiles", "TensorInfo", "UnknownTensorError"]

# Selections of more runs than this, each shorter than _LONG_RUN bytes, are
# copied out of a mapping: a read per run would cost more than the pages.
PREAD_MAX_RUNS = 1 << 16
_LONG_RUN = 1 << 12
_SHOWN = 3  # names shown in an error that lists some


class TensorInfo(NamedTuple):
  """A tensor of a checkpoint: its shape, its dtype (bfloat16 is
  `ml_dtypes.bfloat16`), and the name of the file in the folder that holds it."""

  shape: tuple[int, ...]
  dtype: np.dtype[Any]
  file: str


class UnknownTensorError(KeyError):
  """A tensor name the checkpoint does not hold; the message lists close names."""

  def __str__(self) -> str:
    # KeyError would show the message quoted, as a key.
    return str(self.args[0])


class CheckpointFiles:
  """The tensors of a Hugging Face safetensors checkpoint folder (see the module
  docstring); use it as a context manager, which closes the files.

  Args:
    folder: the folder holding `model.safetensors`, or
      `model.safetensors.index.json` and the shards it names.

  Raises:
    FileNotFoundError: no checkpoint in `folder` (the message says which
      files were looked for, and refuses PyTorch pickle files), or the index
      names a shard that does not exist.
    SafetensorsError: a file is truncated or corrupt, or the index and the
      shards disagree: a tensor absent from the shard the index names, in
      two shards, or in a shard but not in the index.

  Example:
    >>> import os, tempfile, numpy as np
    >>> from safetensors.numpy import save_file
    >>> folder = tempfile.mkdtemp()
    >>> save_file({'bias': np.zeros(2, np.int8)}, os.path.join(folder, 'model.safetensors'))
    >>> with CheckpointFiles(folder) as files:
    ...   try:
    ...     files.read('bais')
    ...   except KeyError as error:
    ...     print(error)  # doctest: +ELLIPSIS
    No tensor 'bais' in model.safetensors in '...'. Closest names: 'bias'.
  """

  def __init__(self, folder: str | os.PathLike[str]) -> None:
    self._folder = Path(folder)
    self._handles: dict[str, IO[bytes]] = {}
    self._headers: dict[str, Header] = {}
    self._tensors: dict[str, tuple[str, RawEntry]] = {}
    self._closed = False
    try:
      weight_map = self._open()
    except BaseException:
      self.close()
      raise
    self._source = SINGLE_FILE if weight_map is None else INDEX_FILE
    self._names = tuple(sorted(self._tensors))

  def __enter__(self) -> CheckpointFiles:
    return self

  def __exit__(
      self,
      kind: type[BaseException] | None,
      error: BaseException | None,
      traceback: TracebackType | None,
  ) -> None:
    self.close()

  def __repr__(self) -> str:
    state = ", closed" if self._closed else ""
    return (
        f"CheckpointFiles({str(self._folder)!r}: {len(self._names)} tensors in"
        f" {len(self._headers)} files{state})"
    )

  def close(self) -> None:
    """Closes the files; `names`, `info` and `metadata` still answer."""
    self._closed = True
    handles, self._handles = self._handles, {}
    for handle in handles.values():
      handle.close()

  @property
  def folder(self) -> Path:
    """The checkpoint's folder."""
    return self._folder

  @property
  def names(self) -> tuple[str, ...]:
    """The names of all tensors, sorted."""
    return self._names

  @property
  def metadata(self) -> dict[str, str]:
    """The `__metadata__` of the first file (in name order); empty if none."""
    return dict(self._headers[min(self._headers)].metadata)

  def info(self, name: str) -> TensorInfo:
    """The shape, dtype and file of tensor `name`, from the headers alone.

    Raises:
      UnknownTensorError: the checkpoint holds no tensor `name`.
      SafetensorsError: its dtype is one blox does not read.
    """
    file, entry = self._locate(name)
    return TensorInfo(entry.shape, self._dtype(name, file, entry), file)

  def read(
      self, name: str, index: Index | None = None, *, out: npt.NDArray[Any] | None = None
  ) -> npt.NDArray[Any]:
    """Tensor `name`, or the part of it that `index` selects, read from disk.

    Only the selected bytes are read (with `pread`, straight into the
    result), or, for selections of very many short runs, only the pages
    holding them (through a mapping of the tensor's bytes). The array is a
    fresh one: the caller owns it.

    Args:
      name: the tensor's name (see `names`).
      index: one int (negative counts from the end) or slice per leading
        axis, as numpy reads it; None reads the whole tensor.
      out: a C-contiguous array of the result's shape and dtype to read
        into (and return) instead of a fresh one: a reused buffer costs no
        new pages, and a block of the caller's own array no copy.

    Raises:
      UnknownTensorError: the checkpoint holds no tensor `name`.
      SafetensorsError: its dtype is one blox does not read, or the file
        changed on disk since it was opened.
      TypeError, IndexError, ValueError: `index` is not a tuple of ints and
        slices, has more entries than the tensor has axes, or an int past
        its axis, or a zero step.
    """
    file, entry = self._locate(name)
    dtype = self._dtype(name, file, entry)
    what = f"tensor {name!r} in {self._where(file)}"
    key = check_index(index, entry.shape, what)
    handle = self._handles.get(file)
    if handle is None:
      raise ValueError(
          f"Cannot read {what}: these CheckpointFiles are closed; read inside"
          " the `with CheckpointFiles(folder) as files:` block."
      )
    selection = select(key, entry.shape)
    if out is not None and (
        tuple(out.shape) != tuple(selection.shape) or out.dtype != dtype
        or not out.flags.c_contiguous or not out.flags.writeable
    ):
      raise ValueError(
          f"Cannot read {what} into out: it is {out.dtype}{list(out.shape)}"
          f" (C-contiguous: {out.flags.c_contiguous}), but the selection is"
          f" {dtype}{list(selection.shape)}; pass a writable C-contiguous array of that.")
    if math.prod(selection.shape) == 0:
      return np.zeros(selection.shape, dtype) if out is None else out
    start = self._headers[file].data_start + entry.begin
    if hasattr(os, "preadv") and (
        selection.runs <= PREAD_MAX_RUNS or selection.run * dtype.itemsize >= _LONG_RUN
    ):
      return _read_runs(handle.fileno(), start, selection, dtype, what, out)
    mapped = _read_mapped(handle.fileno(), start, entry, key, dtype, what)
    if out is None:
      return mapped
    out[...] = mapped
    return out

  def _open(self) -> dict[str, str] | None:
    """Reads the layout and the headers; returns the index's weight map, or
    None for a single file."""
    weight_map = find_layout(self._folder)
    files = [SINGLE_FILE] if weight_map is None else sorted(set(weight_map.values()))
    for file in files:
      path = self._folder / file
      if not path.is_file():
        assert weight_map is not None  # the single file was found above
        some = sorted(name for name, shard in weight_map.items() if shard == file)
        raise FileNotFoundError(
            f"{INDEX_FILE} in {str(self._folder)!r} names shard {file!r} (for"
            f" {few(some)}), which does not exist. Download the whole checkpoint,"
            " or save it again."
        )
      # Kept open until close(): later reads see the file read here.
      self._handles[file] = handle = open(path, "rb")
      size = os.fstat(handle.fileno()).st_size
      self._headers[file] = read_header(handle, size, self._where(file))
    if weight_map is None:
      entries = self._headers[SINGLE_FILE].entries
      self._tensors = {name: (SINGLE_FILE, entry) for name, entry in entries.items()}
    else:
      self._tensors = self._match_index(weight_map)
    return weight_map

  def _match_index(self, weight_map: dict[str, str]) -> dict[str, tuple[str, RawEntry]]:
    """Checks that the index and the shards' headers agree on every tensor."""
    found: dict[str, list[str]] = {}
    for file, header in self._headers.items():
      for name in header.entries:
        found.setdefault(name, []).append(file)
    folder = str(self._folder)
    for name, files in found.items():
      if len(files) > 1:
        raise SafetensorsError(
            f"Tensor {name!r} is present in two shards in {folder!r}: {files[0]!r} and"
            f" {files[1]!r} ({INDEX_FILE} names {weight_map.get(name)!r}). A"
            " checkpoint holds each tensor once: download or save it again."
        )
    for name, file in weight_map.items():
      if name not in self._headers[file].entries:
        elsewhere = f" (it is in {found[name][0]!r})" if name in found else ""
        raise SafetensorsError(
            f"Tensor {name!r} is listed in {INDEX_FILE} in {folder!r} under shard"
            f" {file!r} but absent from that shard{elsewhere}. The index does not"
            " match its shards: download or save the checkpoint again."
        )
    unlisted = sorted(set(found) - set(weight_map))
    if unlisted:
      raise SafetensorsError(
          f"{len(unlisted)} tensors in the shards in {folder!r} are not listed in"
          f" its {INDEX_FILE}: {few(unlisted)} (in {found[unlisted[0]][0]!r})."
          " The index does not match its shards: download or save the checkpoint again."
      )
    return {name: (file, self._headers[file].entries[name]) for name, file in weight_map.items()}

  def _locate(self, name: str) -> tuple[str, RawEntry]:
    if not isinstance(name, str):
      raise TypeError(f"A tensor name is a string, like 'lm_head.weight'; got {name!r}.")
    located = self._tensors.get(name)
    if located is None:
      close = difflib.get_close_matches(name, self._names, n=_SHOWN, cutoff=0.6)
      hint = (
          f" Closest names: {', '.join(map(repr, close))}." if close
          else f" It holds {len(self._names)} tensors, such as {few(self._names)}."
      )
      raise UnknownTensorError(
          f"No tensor {name!r} in {self._source} in {str(self._folder)!r}.{hint}"
      )
    return located

  def _dtype(self, name: str, file: str, entry: RawEntry) -> np.dtype[Any]:
    dtype = DTYPES.get(entry.code)
    if dtype is None:
      raise SafetensorsError(
          f"Tensor {name!r} in {self._where(file)} has dtype {entry.code!r}, which"
          f" blox does not read; it reads {supported_text()}."
      )
    return dtype

  def _where(self, file: str) -> str:
    return f"{file!r} in folder {str(self._folder)!r}"


def _read_runs(
    fd: int, start: int, selection: Selection, dtype: np.dtype[Any], what: str,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
  """Reads each run of `selection` with `pread`, straight into the result
  (`out`, checked by the caller, or a fresh array)."""
  result = np.empty(selection.shape, dtype) if out is None else out
  flat = result.reshape(-1).view(np.uint8).data  # writes land in `result`
  size = selection.run * dtype.itemsize
  for number, first in enumerate(selection.starts().tolist()):
    buffer, position, done = flat[number * size:(number + 1) * size], start + first * dtype.itemsize, 0
    while done < size:  # a read may return fewer bytes than asked
      count = os.preadv(fd, [buffer[done:]], position + done)
      if count == 0:
        raise _changed(what)
      done += count
  return result


def _read_mapped(
    fd: int, start: int, entry: RawEntry, key: Index, dtype: np.dtype[Any], what: str
) -> npt.NDArray[Any]:
  """Maps the tensor's bytes and copies out what `key` selects: for selections
  of many short runs, where a read per run would cost more than the pages."""
  # A mapping starts at a multiple of the allocation granularity.
  first = start - start % mmap.ALLOCATIONGRANULARITY
  try:
    mapping = mmap.mmap(fd, start + entry.end - entry.begin - first, access=mmap.ACCESS_READ, offset=first)
  except ValueError:
    raise _changed(what) from None  # mmap checks that the file still holds the range
  with mapping:
    view = np.ndarray(entry.shape, dtype, buffer=mapping, offset=start - first)
    try:
      return np.array(view[key], order="C")
    finally:
      # No view of the mapping may outlive it: closing it would fail.
      del view


def _changed(what: str) -> SafetensorsError:
  return SafetensorsError(
      f"Cannot read {what}: the file is shorter than when it was opened; it"
      " changed on disk. Open the checkpoint again."
  )
