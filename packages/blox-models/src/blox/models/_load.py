"""`load_pretrained`: a Hugging Face folder into a blox `CausalLM` and its `Params`.

Streamed: the model's param structure comes from `jax.eval_shape` (nothing
is initialised), then every param is built from the checkpoint, each block
that a device holds read once, a piece of about 1 MiB at a time (a layer of
the stacked layers, rows of a tensor), into its final layout and dtype, and
placed on its devices. On CPU the block is the device buffer itself, so
loading needs the params' memory and one piece more. With a `mesh`, each
param is laid out by its logical axes and `rules` and every process reads
only the slices its own devices hold.

Example:
  >>> import pathlib
  >>> folder = pathlib.Path(__file__).parents[4] / 'tests/fixtures/llama'
  >>> model, params = load_pretrained(folder)   # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import mmap
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding

from blox.graph import Graph
from blox.models._causal_lm import CausalLM
from blox.models._config import ModelConfig
from blox.models._layout import (
    Op, Split, TensorMap, Transpose, ignored, read_block, source_shape, tensor_maps,
)
from blox.models._safetensors_read import CheckpointFiles
from blox.params import Param, Params
from blox.parallel import partition_spec

__all__ = ["CheckpointMismatchError", "load_pretrained", "read_config"]

# A param is read a piece of about this many bytes at a time (at least a
# row): on CPU, the memory a load needs beyond the params it makes.
PIECE_BYTES = 4 << 20

# Per axis of a param, the (start, stop) of a block of it.
_Bounds = tuple[tuple[int, int], ...]

# jax's CPU client uses a host array of this alignment as the device buffer
# itself (`device_put(..., may_alias=True)`); a less aligned one it copies.
_ALIGNMENT = 64
# Blocks at least this large are populated memory maps (see aligned_empty).
_MAPPED_BYTES = 1 << 20


class CheckpointMismatchError(ValueError):
  """The checkpoint's tensors are not the ones its config describes."""


def read_config(folder: str | os.PathLike[str]) -> ModelConfig:
  """The `ModelConfig` of the Hugging Face folder's `config.json`."""
  path = pathlib.Path(folder) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{folder}: no config.json; a Hugging Face model folder has one.")
  try:
    config = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON ({error}); download or save the model again.") from None
  return ModelConfig.from_hf(config, source=str(path))


def load_pretrained(
    folder: str | os.PathLike[str],
    *,
    param_dtype: Any = None,
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, Any]] | None = None,
    name: str = "model",
) -> tuple[CausalLM, Params]:
  """The causal LM in `folder` (config.json + safetensors) and its locked params.

  Args:
    folder: a Hugging Face model folder: `config.json` and `model.safetensors`,
      or shards listed in `model.safetensors.index.json`.
    param_dtype: the dtype to cast every weight to. None keeps the
      checkpoint's dtype, and a tensor stored in another dtype than the
      config's is then an error.
    mesh: lay the params out on this mesh (Explicit or Auto axes) by their
      logical axes and `rules`; each process reads only its devices' slices.
    rules: logical-axis rules, as for `blox.parallel.param_shardings`.
    name: the root of the model's graph: params live under `(name, 'lm', ...)`.

  Raises:
    UnsupportedConfigError: the config's family or one of its fields is not
      supported.
    CheckpointMismatchError: a tensor is missing, extra, of another shape, or
      of another dtype than the config's (without `param_dtype`).
  """
  config = read_config(folder)
  dtype = jnp.dtype(param_dtype if param_dtype is not None else config.dtype)
  model = CausalLM(Graph(name).child("lm"), config, param_dtype=dtype)
  abstract = jax.eval_shape(lambda: model(Params(), jnp.zeros((1, 1), jnp.int32))[1])
  with CheckpointFiles(folder) as files:
    maps = tensor_maps(config, model.graph.path, _prefix(config, files.names))
    _check(files, maps, abstract, config, cast=param_dtype is not None, dtype=dtype)
    by_path: dict[tuple[str, ...], list[TensorMap]] = {}
    for entry in maps:
      by_path.setdefault(entry.path, []).append(entry)
    values = {}
    for path, param in abstract.items():
      sharding = _sharding(path, param, mesh, rules)
      values[path] = _build(files, by_path[path], param.value, sharding, dtype)
  params = Params({path: Param(values[path], param.trainable, param.metadata)
                   for path, param in abstract.items()})
  return model, params.locked()


def _prefix(config: ModelConfig, names: Sequence[str]) -> str:
  """The checkpoint's name prefix: the family's usual one, or none (old GPT-2 files)."""
  usual = "transformer." if config.family == "gpt2" else "model."
  if config.family == "gpt2" and not any(n.startswith(usual) for n in names):
    return ""
  return usual


def _check(
    files: CheckpointFiles, maps: list[TensorMap], abstract: Params, config: ModelConfig,
    *, cast: bool, dtype: Any,
) -> None:
  expected = {entry.hf: entry for entry in maps}
  folder = files.folder
  for name in files.names:
    if name not in expected and not ignored(name, config):
      raise CheckpointMismatchError(
          f"{folder}: tensor {name!r} (in {files.info(name).file}) is not part of a"
          f" {config.family} model with this config.json; blox loads no tensor it"
          " cannot place. Check that the config belongs to these weights.")
  present = set(files.names)
  for entry in maps:
    target = abstract[entry.path].value.shape
    layer_shape = target[1:] if entry.layer is not None else target
    want = source_shape(layer_shape, entry.ops)
    if entry.hf not in present:
      raise CheckpointMismatchError(
          f"{folder}: tensor {entry.hf!r} of shape {list(want)} is missing; the"
          f" config.json describes a {config.family} model that needs it (for the"
          f" param {'/'.join(entry.path)}). Download the whole checkpoint, and check that"
          " the config belongs to these weights.")
    info = files.info(entry.hf)
    if tuple(info.shape) != want:
      raise CheckpointMismatchError(
          f"{folder}: tensor {entry.hf!r} in {info.file} has shape {list(info.shape)},"
          f" but the config.json needs {list(want)} (for the param {'/'.join(entry.path)})."
          " Check that the config belongs to these weights.")
    if not cast and np.dtype(info.dtype) != dtype:
      raise CheckpointMismatchError(
          f"{folder}: tensor {entry.hf!r} in {info.file} is {np.dtype(info.dtype).name}, but"
          f" the config says {dtype.name}; pass param_dtype= to cast every weight to one"
          " dtype.")


def _sharding(path: tuple[str, ...], param: Param, mesh: Mesh | None, rules: Any) -> jax.sharding.Sharding:
  if mesh is None:
    return SingleDeviceSharding(jax.devices()[0])
  return NamedSharding(mesh, partition_spec(path, param, mesh, rules=rules))


def _build(
    files: CheckpointFiles, entries: list[TensorMap], like: jax.ShapeDtypeStruct,
    sharding: jax.sharding.Sharding, dtype: Any,
) -> jax.Array:
  """One param, read straight into its layout, dtype and devices.

  Each distinct block (the part one device holds) is read once and copied
  device to device to the other devices that hold the same block:
  `jax.make_array_from_callback` would read a replicated block once per
  device and hold every device's block in host memory at once.
  """
  shape = tuple(like.shape)
  placed: dict[_Bounds, jax.Array] = {}
  arrays = []
  for device, index in sharding.addressable_devices_indices_map(shape).items():
    bounds = _bounds(index, shape)
    first = placed.get(bounds)
    if first is None:
      placed[bounds] = array = _block(files, entries, bounds, dtype, device)
    else:
      array = jax.device_put(first, device)
    arrays.append(array)
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _block(
    files: CheckpointFiles, entries: list[TensorMap], bounds: _Bounds, dtype: Any,
    device: jax.Device,
) -> jax.Array:
  """The block `bounds` of a param on `device`, read a piece at a time into place.

  The pieces are a layer of a stacked param at a time, and within one
  tensor rows of the checkpoint's leading axis (contiguous on disk), about
  `PIECE_BYTES` each, copied into the block's host buffer as they come.
  The buffer is aligned so that jax's CPU client takes it as the device
  buffer without a copy: on CPU the block then exists once, plus one piece.
  An accelerator copies it to its memory, and the host buffer goes.
  """
  stacked = entries[0].layer is not None
  by_layer = {entry.layer: entry for entry in entries}
  rest = bounds[1:] if stacked else bounds
  block = aligned_empty(tuple(stop - start for start, stop in bounds), dtype)
  layers: list[int | None] = list(range(*bounds[0])) if stacked else [None]
  scratch = _Scratch()
  for layer in layers:
    entry = by_layer[layer]
    target = block if layer is None else block[layer - bounds[0][0]]
    for part in _parts(rest, _leading_axis(entry.ops, len(rest)), dtype):
      where = tuple(slice(start - first, stop - first) for (start, stop), (first, _) in zip(part, rest))
      destination = target[where]
      if _reads_in_place(entry, destination, files, dtype):
        # Same layout and dtype, contiguous: straight from the file into place.
        files.read(entry.hf, tuple(slice(start, stop) for start, stop in part),
                   out=destination.reshape(tuple(stop - start for start, stop in part)))
      else:
        _copy_tiled(destination, _read(files, entry, part, scratch))
  placed: jax.Array = jax.device_put(block, device, may_alias=True)
  return placed


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
  """An uninitialised array whose data starts at a multiple of `_ALIGNMENT` bytes.

  Large ones are anonymous memory maps, populated by the kernel in one go
  (`MAP_POPULATE`, Linux): a fresh process otherwise takes a page fault per
  4 KiB page as the copies touch them, which cost more than the copies
  (0.7 s against 0.13 s for 400 MB, measured). Maps are page-aligned.
  """
  dtype = np.dtype(dtype)
  size = math.prod(shape) * dtype.itemsize
  populate = getattr(mmap, "MAP_POPULATE", 0)
  if populate and size >= _MAPPED_BYTES:
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    mapped: np.ndarray = np.frombuffer(memory, dtype).reshape(shape)
    return mapped
  raw = np.empty(size + _ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % _ALIGNMENT
  block: np.ndarray = raw[start:start + size].view(dtype).reshape(shape)
  return block


# The side of the square tiles a transposing copy goes through: a tile of
# source rows and destination rows stays in cache while it is copied, where a
# plain strided copy misses on every element (2x faster, measured).
_TILE = 256
_THREADS = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="blox-load")


def _copy_tiled(destination: np.ndarray, source: np.ndarray) -> None:
  """`destination[...] = source` (a transposed view), tile by tile over the first two axes."""
  if destination.ndim < 2 or source.strides[-1] == source.itemsize:
    destination[...] = source
    return
  rows, columns = destination.shape[:2]

  def copy_rows(first: int) -> None:
    for row in range(first, rows, 2 * _TILE):
      for column in range(0, columns, _TILE):
        tile = (slice(row, row + _TILE), slice(column, column + _TILE))
        destination[tile] = source[tile]

  # numpy lets go of the GIL while it copies: two threads, every other band.
  list(_THREADS.map(copy_rows, (0, _TILE)))


class _Scratch:
  """One reusable host buffer for the pieces of a param: fresh pages for
  every piece would cost as much as the copy itself."""

  def __init__(self) -> None:
    self._buffer = np.empty(0, np.uint8)

  def get(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if self._buffer.size < size:
      self._buffer = np.empty(size, np.uint8)
    view: np.ndarray = self._buffer[:size].view(dtype).reshape(shape)
    return view


def _reads_in_place(entry: TensorMap, destination: np.ndarray, files: CheckpointFiles, dtype: Any) -> bool:
  return (not entry.ops and destination.flags.c_contiguous
          and np.dtype(files.info(entry.hf).dtype) == np.dtype(dtype))


def _read(files: CheckpointFiles, entry: TensorMap, part: _Bounds, scratch: _Scratch) -> np.ndarray:
  """The block `part` of one checkpoint tensor in blox's layout (a view of `scratch`)."""
  dtype = files.info(entry.hf).dtype

  def read(source: tuple[slice, ...]) -> np.ndarray:
    shape = tuple(int(s.stop) - int(s.start) for s in source)
    return files.read(entry.hf, source, out=scratch.get(shape, dtype))

  index = tuple(slice(start, stop) for start, stop in part)
  # A view (transposed, split into heads): the caller's copy into the block
  # does the layout change and the cast in one pass over the piece.
  return read_block(read, index, entry.ops, contiguous=False)


def _parts(bounds: _Bounds, axis: int, dtype: Any) -> list[_Bounds]:
  """`bounds` cut along `axis` into parts of about `PIECE_BYTES` (at least one row)."""
  if not bounds:
    return [bounds]
  sizes = [stop - start for start, stop in bounds]
  row = math.prod(sizes[:axis] + sizes[axis + 1:]) * np.dtype(dtype).itemsize
  step = max(1, PIECE_BYTES // max(row, 1))
  first, last = bounds[axis]
  return [(*bounds[:axis], (start, min(start + step, last)), *bounds[axis + 1:])
          for start in range(first, max(last, first + 1), step)]


def _leading_axis(ops: Sequence[Op], ndim: int) -> int:
  """The axis of blox's layout (of `ndim` axes) that the checkpoint tensor's first axis became."""
  source = list(range(ndim - sum(isinstance(op, Split) for op in ops)))
  for op in ops:
    if isinstance(op, Transpose):
      source = [source[axis] for axis in op.perm]
    elif isinstance(op, Split):
      source[op.axis:op.axis + 1] = [source[op.axis]] * 2
  return source.index(0) if 0 in source else 0


def _bounds(index: tuple[slice, ...] | None, shape: tuple[int, ...]) -> _Bounds:
  """`index` (None: all of it) as `(start, stop)` per axis."""
  index = tuple(index or ()) + (slice(None),) * (len(shape) - len(index or ()))
  return tuple(s.indices(size)[:2] for s, size in zip(index, shape))
