"""The safetensors file format and the file names of a Hugging Face checkpoint.

A safetensors file is 8 bytes giving the header's length `n` (an unsigned
little-endian integer), `n` bytes of UTF-8 JSON, then the tensors' bytes. The
JSON maps each tensor's name to `{"dtype": "F32", "shape": [2, 3],
"data_offsets": [begin, end]}`, byte offsets into the data that follows the
header, and may hold `"__metadata__"`, a map of strings to strings. Values are
little-endian and row-major.

A checkpoint folder holds `model.safetensors`, or shards
`model-00001-of-0000N.safetensors` ... and `model.safetensors.index.json`,
whose `weight_map` names each tensor's shard; `find_layout` tells which.

Example:
  >>> import io
  >>> entries = {'w': RawEntry('F32', (2,), 0, 8)}
  >>> raw = encode_header(entries, {'format': 'pt'}) + bytes(8)
  >>> header = read_header(io.BytesIO(raw), len(raw), "'m.safetensors'")
  >>> header.entries, header.metadata, header.data_start % 8
  ({'w': RawEntry(code='F32', shape=(2,), begin=0, end=8)}, {'format': 'pt'}, 0)
  >>> shard_file_name(2, 3), DTYPES['BF16'].name
  ('model-00002-of-00003.safetensors', 'bfloat16')
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import IO, Any, NamedTuple

import ml_dtypes
import numpy as np

__all__ = [
    "DTYPES",
    "INDEX_FILE",
    "METADATA_KEY",
    "PICKLE_SUFFIXES",
    "SHARD_PATTERN",
    "SINGLE_FILE",
    "Header",
    "RawEntry",
    "SafetensorsError",
    "dtype_code",
    "encode_header",
    "few",
    "find_layout",
    "read_header",
    "read_index",
    "shard_file_name",
    "supported_text",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
METADATA_KEY = "__metadata__"
# PyTorch's pickle formats: loading one can run arbitrary code, so blox never does.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

# The dtype codes of the format that blox reads and writes, as little-endian
# numpy dtypes; those numpy lacks come from ml_dtypes (which jax brings).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "I8": np.dtype("<i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}

# The safetensors library refuses longer headers; so does blox, before
# reading one into memory.
_MAX_HEADER = 100_000_000
_SHOWN = 3  # names shown in an error that lists some
# The data after the header starts at a multiple of this (as safetensors pads).
_ALIGNMENT = 8


class SafetensorsError(ValueError):
  """A safetensors checkpoint is corrupt, inconsistent, or holds what blox
  cannot read; the message names the folder, the file and the tensor."""


class RawEntry(NamedTuple):
  """One tensor as a header describes it.

  `code` is the format's dtype code (`'F32'`, also one blox does not read);
  `begin` and `end` are byte offsets into the data after the header.
  """

  code: str
  shape: tuple[int, ...]
  begin: int
  end: int


class Header(NamedTuple):
  """A file's parsed header: its tensors, its `__metadata__`, and the file
  offset where the data (which the entries' offsets count from) starts."""

  entries: dict[str, RawEntry]
  metadata: dict[str, str]
  data_start: int


def shard_file_name(number: int, count: int) -> str:
  """The name Hugging Face gives shard `number` (from 1) of `count`."""
  return f"model-{number:05d}-of-{count:05d}.safetensors"


def dtype_code(dtype: np.dtype[Any]) -> str | None:
  """The format's code for `dtype`, or None if blox does not write it."""
  return _CODES.get(dtype)


def supported_text() -> str:
  """The dtypes blox reads and writes, for error messages."""
  return ", ".join(f"{code} ({dtype.name})" for code, dtype in DTYPES.items())


def encode_header(entries: dict[str, RawEntry], metadata: dict[str, str]) -> bytes:
  """The 8-byte length and the JSON header of a file holding `entries`.

  The JSON is padded with spaces so that the data starts 8-byte aligned, as
  the safetensors library writes it.
  """
  header: dict[str, object] = {METADATA_KEY: metadata} if metadata else {}
  for name, entry in entries.items():
    header[name] = {
        "dtype": entry.code,
        "shape": list(entry.shape),
        "data_offsets": [entry.begin, entry.end],
    }
  text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
  text += b" " * (-(8 + len(text)) % _ALIGNMENT)
  return len(text).to_bytes(8, "little") + text


def read_header(file: IO[bytes], size: int, where: str) -> Header:
  """Parses and checks the header of the safetensors file open as `file`.

  Args:
    file: the file, positioned at its start.
    size: the file's size in bytes.
    where: the file and folder, as error messages name them.

  Raises:
    SafetensorsError: the file is truncated or its header is corrupt: too
      long for the file, not JSON, or with offsets outside the file's data.
  """
  head = file.read(8)
  if len(head) < 8:
    raise SafetensorsError(
        f"{where} is truncated: {size} bytes, fewer than the 8 that give the"
        " header's length. Download or save it again."
    )
  length = int.from_bytes(head, "little")
  if length > size - 8 or length > _MAX_HEADER:
    raise SafetensorsError(
        f"{where} is corrupt or truncated: its header length, {length} bytes,"
        f" runs past the end of the file ({size} bytes). Download or save it again."
    )
  try:
    parsed = json.loads(file.read(length).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise SafetensorsError(
        f"{where} has a corrupt header, not UTF-8 JSON ({error}). Download or"
        " save it again."
    ) from None
  if not isinstance(parsed, dict):
    raise SafetensorsError(
        f"{where} has a corrupt header: a JSON {type(parsed).__name__}, not an"
        " object. Download or save it again."
    )
  metadata = _metadata(parsed.pop(METADATA_KEY, {}), where)
  data_size = size - 8 - length
  entries = {name: _entry(name, spec, data_size, where) for name, spec in parsed.items()}
  return Header(entries, metadata, 8 + length)


def find_layout(folder: Path) -> dict[str, str] | None:
  """The index's weight map, or None when `model.safetensors` is there."""
  if not folder.is_dir():
    if folder.exists():
      raise NotADirectoryError(
          f"{str(folder)!r} is a file; pass the folder that holds the checkpoint."
      )
    raise FileNotFoundError(f"There is no folder {str(folder)!r} to read a checkpoint from.")
  if (folder / SINGLE_FILE).is_file():
    return None
  if (folder / INDEX_FILE).is_file():
    return read_index(folder)
  present = sorted(os.listdir(folder))
  message = f"No safetensors checkpoint in {str(folder)!r}: looked for {SINGLE_FILE} and {INDEX_FILE}."
  pickles = [name for name in present if name.endswith(PICKLE_SUFFIXES)]
  if pickles:
    message += (
        f" It holds PyTorch pickle files ({few(pickles)}), which blox never loads"
        " (unpickling can run arbitrary code): convert them to safetensors first,"
        " e.g. with transformers: AutoModel.from_pretrained(folder)"
        ".save_pretrained(folder, safe_serialization=True)."
    )
  others = [name for name in present if name.endswith(".safetensors")]
  if others:
    message += f" Other safetensors files there: {few(others)}."
  raise FileNotFoundError(message)


def read_index(folder: Path) -> dict[str, str]:
  """Parses and checks `model.safetensors.index.json`: its weight map."""
  where = f"{INDEX_FILE} in {str(folder)!r}"
  try:
    index = json.loads((folder / INDEX_FILE).read_bytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise SafetensorsError(f"{where} is corrupt, not UTF-8 JSON ({error}).") from None
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if (
      not isinstance(weight_map, dict)
      or not weight_map
      or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
  ):
    raise SafetensorsError(
        f"{where} is corrupt: it needs a non-empty \"weight_map\" from tensor names"
        " to shard file names."
    )
  for name, file in weight_map.items():
    if file.endswith(PICKLE_SUFFIXES):
      raise SafetensorsError(
          f"{where} names the PyTorch pickle file {file!r} for tensor {name!r};"
          " blox never loads pickles (unpickling can run arbitrary code): convert"
          " the checkpoint to safetensors first."
      )
    if os.path.basename(file) != file or file in ("", ".", "..") or "\\" in file:
      raise SafetensorsError(
          f"{where} names shard {file!r} for tensor {name!r}, which is not a file"
          " name inside the folder."
      )
  return weight_map


def few(names: list[str] | tuple[str, ...]) -> str:
  """A few of `names` and how many more, for error messages."""
  shown = ", ".join(map(repr, names[:_SHOWN]))
  return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _metadata(metadata: object, where: str) -> dict[str, str]:
  """Checks `__metadata__`: a map of strings to strings."""
  if not isinstance(metadata, dict) or not all(
      isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
  ):
    raise SafetensorsError(
        f"{where} has a corrupt header: {METADATA_KEY} must map strings to"
        f" strings; got {metadata!r:.200}."
    )
  return dict(metadata)


def _entry(name: str, spec: object, data_size: int, where: str) -> RawEntry:
  """Checks one tensor's entry: its fields' types, and that its offsets lie
  inside the data and span as many bytes as its shape and dtype need."""
  what = f"tensor {name!r} in {where}"
  fields = ("dtype", "shape", "data_offsets")
  if not isinstance(spec, dict) or not all(field in spec for field in fields):
    raise SafetensorsError(
        f"{what} has a corrupt header entry {spec!r:.200}: it needs {', '.join(fields)}."
    )
  code, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
  if (
      not isinstance(code, str)
      or not _non_negative_ints(shape)
      or not _non_negative_ints(offsets)
      or len(offsets) != 2
      or offsets[0] > offsets[1]
  ):
    raise SafetensorsError(
        f"{what} has a corrupt header entry {spec!r:.200}: dtype must be a string,"
        " shape a list of sizes, data_offsets [begin, end] with begin <= end."
    )
  begin, end = offsets
  if end > data_size:
    raise SafetensorsError(
        f"{what} is corrupt or truncated: its data_offsets [{begin}, {end}] lie"
        f" outside the file's {data_size} bytes of data. Download or save it again."
    )
  dtype = DTYPES.get(code)
  if dtype is not None and end - begin != math.prod(shape) * dtype.itemsize:
    raise SafetensorsError(
        f"{what} is corrupt: its data_offsets span {end - begin} bytes, but shape"
        f" {shape} of {code} needs {math.prod(shape) * dtype.itemsize}."
    )
  return RawEntry(code, tuple(shape), begin, end)


def _non_negative_ints(value: object) -> bool:
  return isinstance(value, list) and all(
      isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
  )
