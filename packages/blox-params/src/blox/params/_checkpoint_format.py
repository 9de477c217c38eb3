"""The on-disk layout of a blox checkpoint: header encoding, dtypes, names.

A checkpoint is an uncompressed zip archive, the same container as numpy's
`.npz`. It holds one JSON member, `blox_checkpoint.json` (the header), and one
`.npy` member per array, `v0.npy`, `v1.npy`, ... in header order. Format 2
saves any pytree: the header lists its leaves by key path (`Leaf`), each an
array or a whole `Params`; format 1 held one `Params` and still decodes. The module
knows nothing of files or devices: it turns param descriptions into header
bytes and back, and raises `CheckpointError` for anything it cannot trust.
See the "Checkpoint format" section of the package README for the layout.

Example:
  >>> entry = Entry(('net', 'w'), True, {'axes': ('data', None)},
  ...               np.dtype('float32'), (2, 3), None)
  >>> data = encode_header(False, [entry])
  >>> decode_header(data, 'ckpt.npz').entries[0].metadata['axes']
  ('data', None)
  >>> leaves = decode_leaves(encode_leaves([Leaf('', Header(False, (entry,)), None, False)]), 'c')
  >>> leaves[0].params.entries[0].path
  ('net', 'w')
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from blox.params._paths import Path, path_text

__all__ = [
    "CheckpointError",
    "Entry",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEADER_MEMBER",
    "Header",
    "Leaf",
    "array_member",
    "decode_header",
    "decode_leaves",
    "encode_header",
    "encode_leaves",
    "encode_metadata",
    "storage_dtype",
    "supported_dtype",
]

FORMAT_NAME = "blox.params.checkpoint"
# Bump on any change a version-1 reader could misread. Readers keep decoding
# every older version, so old checkpoints stay loadable.
FORMAT_VERSION = 2
HEADER_MEMBER = "blox_checkpoint.json"

_FLOAT_TAG = "float"
_TUPLE_TAG = "tuple"


class CheckpointError(ValueError):
  """A file is not a blox checkpoint this version can read.

  Raised for truncated, corrupt and foreign files and for checkpoints written
  in a newer format; the message names the file.
  """


@dataclasses.dataclass(frozen=True)
class Entry:
  """One param as the header describes it.

  `dtype` and `shape` are the value's own (for a typed PRNG key array: the
  dtype of its key data and the key array's shape, without the trailing key
  data axes). `key_impl` names the PRNG implementation of a typed key array,
  and is None for every other value.
  """

  path: Path
  trainable: bool
  metadata: Mapping[str, Hashable]
  dtype: np.dtype[Any]
  shape: tuple[int, ...]
  key_impl: str | None


@dataclasses.dataclass(frozen=True)
class Header:
  """A decoded header: the locked flag and the entries in file order."""

  locked: bool
  entries: tuple[Entry, ...]


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One leaf of the saved pytree, named by its key path (`jax.tree_util.keystr`).

  Exactly one of `params` (a whole `Params`: its locked flag and entries) and
  `array` (one array; its entry's path is `(key,)`) is set. `from_python`
  marks an array saved from a Python bool, int or float.
  """

  key: str
  params: Header | None
  array: Entry | None
  from_python: bool

  def entries(self) -> tuple[Entry, ...]:
    """The entries of this leaf's arrays, in file order."""
    if self.params is not None:
      return self.params.entries
    assert self.array is not None
    return (self.array,)


def array_member(index: int) -> str:
  """The zip member name of the `index`-th param's array."""
  return f"v{index}.npy"


def supported_dtype(dtype: Any) -> bool:
  """Whether values of `dtype` can be stored: booleans and numbers only.

  Numbers include the extended float and int types JAX uses (bfloat16,
  float8 variants, int4). Object, string and structured dtypes are refused:
  they would need pickle, or are not param values.
  """
  try:
    dtype = np.dtype(dtype)
  except TypeError:
    return False
  return dtype.kind == "b" or bool(jnp.issubdtype(dtype, jnp.number))


def storage_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
  """The dtype of the `.npy` member that holds values of `dtype`.

  numpy's own dtypes are stored as they are. Extended types such as bfloat16
  have no `.npy` description that numpy alone could read back, so their raw
  bits are stored as unsigned integers of the same width; the header's dtype
  says how to view them.
  """
  if dtype.kind in "biufc":
    return dtype
  return np.dtype(f"u{dtype.itemsize}")


def _dtype_from_name(name: str) -> np.dtype[Any]:
  try:
    dtype = np.dtype(name)
  except TypeError:
    raise ValueError(f"unknown dtype {name!r}") from None
  if dtype.name != name or not supported_dtype(dtype):
    raise ValueError(f"unsupported dtype {name!r}")
  return dtype


# Metadata values: None, bool, int, float, str, and tuples of these. JSON has
# no tuples and no NaN or infinity, so tuples and floats are tagged objects;
# the exact type comes back, and `('a',)` never turns into `['a']`.


def _encode_value(value: object) -> Any:
  if value is None or type(value) in (bool, int, str):
    return value
  if type(value) is float:
    return {_FLOAT_TAG: repr(value)}
  if type(value) is tuple:
    return {_TUPLE_TAG: [_encode_value(item) for item in value]}
  raise TypeError(type(value).__name__)


def encode_metadata(path: Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
  """The JSON form of one param's metadata.

  Raises:
    TypeError: a value (or a nested tuple item) is not None, bool, int,
      float, str or tuple; the message names the path and key.
  """
  encoded: dict[str, Any] = {}
  for key, value in metadata.items():
    try:
      encoded[key] = _encode_value(value)
    except TypeError as error:
      raise TypeError(
          f"Cannot save param {path_text(path)}: metadata entry {key!r} holds a value of"
          f" type {error}, {value!r}. Checkpoints store None, bool, int, float,"
          " str and (nested) tuples of these; convert the value or drop the entry"
          " before saving."
      ) from None
  return encoded


def _decode_value(value: Any) -> Hashable:
  if value is None or type(value) in (bool, int, str):
    result: Hashable = value
    return result
  if isinstance(value, dict) and len(value) == 1:
    if type(value.get(_FLOAT_TAG)) is str:
      return float(value[_FLOAT_TAG])
    if type(value.get(_TUPLE_TAG)) is list:
      return tuple(_decode_value(item) for item in value[_TUPLE_TAG])
  raise ValueError(f"metadata value {value!r} is not in the tagged encoding")


def encode_header(locked: bool, entries: Sequence[Entry]) -> bytes:
  """The header member's bytes (UTF-8 JSON) for `entries` in file order."""
  header = {
      "format": FORMAT_NAME,
      "version": 1,
      "locked": locked,
      "params": [_encode_entry(entry) for entry in entries],
  }
  return json.dumps(header, allow_nan=False, ensure_ascii=True).encode("utf-8")


def _encode_entry(entry: Entry) -> dict[str, Any]:
  described: dict[str, Any] = {
      "path": list(entry.path),
      "trainable": entry.trainable,
      "metadata": encode_metadata(entry.path, entry.metadata),
      "dtype": entry.dtype.name,
      "shape": list(entry.shape),
  }
  if entry.key_impl is not None:
    described["key_impl"] = entry.key_impl
  return described


def encode_leaves(leaves: Sequence[Leaf]) -> bytes:
  """The format-2 header's bytes for the pytree `leaves` in file order."""
  described = []
  for leaf in leaves:
    if leaf.params is not None:
      described.append({
          "key": leaf.key, "kind": "params", "locked": leaf.params.locked,
          "params": [_encode_entry(entry) for entry in leaf.params.entries],
      })
    else:
      assert leaf.array is not None
      record = _encode_entry(leaf.array)
      del record["path"], record["trainable"], record["metadata"]
      described.append({"key": leaf.key, "kind": "array", "python": leaf.from_python, **record})
  header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "leaves": described}
  return json.dumps(header, allow_nan=False, ensure_ascii=True).encode("utf-8")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  result = dict(pairs)
  if len(result) != len(pairs):
    raise ValueError("the header repeats a key in one JSON object")
  return result


def _field(record: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
  value = record.get(name)
  # bool is an int subclass; a flag must not pass as a number or vice versa.
  if type(value) is not kind:
    raise ValueError(f"{where}: field {name!r} must be a {kind.__name__}, got {value!r}")
  return value


def _decode_entry(index: int, record: Any) -> Entry:
  where = f"param {index}"
  if not isinstance(record, dict):
    raise ValueError(f"{where} is not a JSON object")
  raw_path = _field(record, "path", list, where)
  if not raw_path or not all(type(part) is str for part in raw_path):
    raise ValueError(f"{where}: the path must be a non-empty list of strings")
  path: Path = tuple(raw_path)
  where = f"param {path_text(path)}"
  metadata = _field(record, "metadata", dict, where)
  raw_shape = _field(record, "shape", list, where)
  if not all(type(d) is int and d >= 0 for d in raw_shape):
    raise ValueError(f"{where}: the shape must list non-negative ints, got {raw_shape!r}")
  key_impl = record.get("key_impl")
  if key_impl is not None and type(key_impl) is not str:
    raise ValueError(f"{where}: key_impl must be a string, got {key_impl!r}")
  return Entry(
      path=path,
      trainable=_field(record, "trainable", bool, where),
      metadata={key: _decode_value(value) for key, value in metadata.items()},
      dtype=_dtype_from_name(_field(record, "dtype", str, where)),
      shape=tuple(raw_shape),
      key_impl=key_impl,
  )


def decode_header(data: bytes, source: str) -> Header:
  """Parses and checks format-1 header bytes read from the file named `source`.

  Raises:
    CheckpointError: the bytes are not a blox checkpoint header of format 1.
  """
  leaves = decode_leaves(data, source)
  if len(leaves) != 1 or leaves[0].params is None or leaves[0].key:
    raise CheckpointError(f"{source!r} holds a pytree, not one Params.")
  return leaves[0].params


def decode_leaves(data: bytes, source: str) -> tuple[Leaf, ...]:
  """Parses and checks header bytes (any format version) read from `source`.

  A format-1 file holds one `Params`: one leaf with the empty key path.

  Raises:
    CheckpointError: the bytes are not a blox checkpoint header, or one of a
      format version newer than this reader knows.
  """
  try:
    header = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
  except ValueError as error:  # JSONDecodeError and UnicodeDecodeError alike
    raise CheckpointError(
        f"{source!r} is not a blox checkpoint: its header is not valid JSON ({error})."
    ) from None
  if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
    raise CheckpointError(
        f"{source!r} is not a blox checkpoint: its {HEADER_MEMBER} does not name"
        f" the format {FORMAT_NAME!r}."
    )
  version = header.get("version")
  if type(version) is not int or version < 1:
    raise CheckpointError(f"{source!r} has an invalid checkpoint format version {version!r}.")
  if version > FORMAT_VERSION:
    raise CheckpointError(
        f"{source!r} was written in checkpoint format version {version}, but this"
        f" blox.params reads versions up to {FORMAT_VERSION}. Upgrade blox-params"
        " to load it."
    )
  try:
    if version == 1:
      leaves: tuple[Leaf, ...] = (Leaf("", _decode_params(header, source), None, False),)
    else:
      records = _field(header, "leaves", list, "the header")
      leaves = tuple(_decode_leaf(i, record, source) for i, record in enumerate(records))
  except ValueError as error:
    raise CheckpointError(f"{source!r} has a corrupt checkpoint header: {error}.") from None
  keys = [leaf.key for leaf in leaves]
  if len(set(keys)) != len(keys):
    raise CheckpointError(f"{source!r} has a corrupt checkpoint header: a leaf key path appears twice.")
  return leaves


def _decode_leaf(index: int, record: Any, source: str) -> Leaf:
  if not isinstance(record, dict):
    raise ValueError(f"leaf {index} is not a JSON object")
  key = _field(record, "key", str, f"leaf {index}")
  kind = record.get("kind")
  if kind == "params":
    return Leaf(key, _decode_params(record, source), None, False)
  if kind != "array":
    raise ValueError(f"leaf {key!r} has an unknown kind {kind!r}")
  from_python = _field(record, "python", bool, f"leaf {key!r}")
  entry = _decode_entry(index, {**record, "path": [key], "trainable": False, "metadata": {}})
  return Leaf(key, None, entry, from_python)


def _decode_params(record: Mapping[str, Any], source: str) -> Header:
  locked = _field(record, "locked", bool, "the header")
  records = _field(record, "params", list, "the header")
  entries = tuple(_decode_entry(i, item) for i, item in enumerate(records))
  seen: set[Path] = set()
  for entry in entries:
    if entry.path in seen:
      raise ValueError(f"{path_text(entry.path)} appears twice")
    seen.add(entry.path)
  return Header(locked, entries)
