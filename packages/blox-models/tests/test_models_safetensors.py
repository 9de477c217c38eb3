"""Safetensors checkpoint folders in and out: round trips, sharding, slices, errors.

The safetensors library itself is the reference: it reads what blox writes,
and blox reads what it writes. Crash consistency and peak memory, which need
subprocesses, are in test_models_safetensors_processes.py.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

import blox.models._safetensors_read as reader
from blox.models._safetensors_format import DTYPES, INDEX_FILE, SINGLE_FILE, SafetensorsError
from blox.models._safetensors_read import CheckpointFiles, TensorInfo
from blox.models._safetensors_slices import Selection, select
from blox.models._safetensors_write import PendingTensor, parse_size, write_checkpoint

Array = npt.NDArray[Any]
# Dtypes safetensors' numpy API cannot give (it looks them up in numpy).
_NOT_IN_SAFETENSORS_NUMPY = {"F8_E4M3", "F8_E5M2"}


def _random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
  """Any bit pattern of `dtype` (NaNs, infinities, subnormals), or 0/1 for bool."""
  if dtype == np.bool_:
    return rng.integers(0, 2, shape).astype(np.bool_)
  raw = rng.integers(0, 256, math.prod(shape) * dtype.itemsize, dtype=np.uint8)
  return raw.view(dtype).reshape(shape)


def _returning(array: Array) -> Callable[[], Array]:
  return lambda: array


def _pending(arrays: dict[str, Array]) -> list[PendingTensor]:
  return [PendingTensor(name, a.shape, a.dtype, _returning(a)) for name, a in arrays.items()]


def _same_bits(got: Array, want: Array) -> bool:
  return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


_CODES = sorted(DTYPES)


@settings(max_examples=40, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(_CODES), st.lists(st.integers(0, 4), max_size=3)),
        min_size=1, max_size=6,
    ),
    limit=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_dtype_round_trips_bit_for_bit_and_shards_fill_greedily(
    specs: list[tuple[str, list[int]]], limit: int, seed: int
) -> None:
  rng = np.random.default_rng(seed)
  arrays = {
      f"layer{i}.{code}": _random_array(rng, tuple(shape), DTYPES[code])
      for i, (code, shape) in enumerate(specs)
  }
  calls: dict[str, int] = {}

  def counted(name: str, array: Array) -> Callable[[], Array]:
    def produce() -> Array:
      calls[name] = calls.get(name, 0) + 1
      return array
    return produce

  with tempfile.TemporaryDirectory() as folder:
    tensors = [PendingTensor(name, a.shape, a.dtype, counted(name, a)) for name, a in arrays.items()]
    written = write_checkpoint(folder, tensors, max_shard_size=limit)
    assert calls == dict.fromkeys(arrays, 1)
    assert sorted(os.listdir(folder)) == sorted(path.name for path in written)
    with CheckpointFiles(folder) as files:
      assert files.names == tuple(sorted(arrays))
      assert files.metadata == {"format": "pt"}
      for name, array in arrays.items():
        assert _same_bits(files.read(name), array), name
      shard_of = {name: files.info(name).file for name in arrays}
    shards = sorted(set(shard_of.values()))
    assert (len(shards) == 1) == (written[0].name == SINGLE_FILE)
    # Shards are filled in the order given, a new one only when the next
    # tensor would pass the limit, and only a lone tensor passes it.
    order = [shards.index(shard_of[name]) for name in arrays]
    assert order == sorted(order)
    contents = [[name for name in arrays if shard_of[name] == shard] for shard in shards]
    sizes = [sum(arrays[name].nbytes for name in names) for names in contents]
    for names, size in zip(contents, sizes):
      assert size <= limit or sum(arrays[name].nbytes > 0 for name in names) == 1
    for i in range(len(shards) - 1):
      oversized = sizes[i] > limit
      assert oversized or sizes[i] + arrays[contents[i + 1][0]].nbytes > limit
    # The safetensors library reads the same bits from the files.
    for path in written[: len(shards)]:
      with safe_open(path, framework="numpy") as file:
        for name in file.keys():
          if name.rsplit(".", 1)[1] not in _NOT_IN_SAFETENSORS_NUMPY:
            assert _same_bits(file.get_tensor(name), arrays[name]), name


def test_sharded_layout_is_the_one_transformers_reads(tmp_path: Path) -> None:
  arrays = {f"w{i}": np.full((250,), i, np.float32) for i in (3, 1, 2, 0)}  # 1000 bytes each
  arrays["big"] = np.zeros(1000, np.float64)  # 8000 bytes, past the limit: a shard of its own
  arrays["tail"] = np.ones(250, np.int32)  # after a shard past the limit: a new one
  written = write_checkpoint(tmp_path, _pending(arrays), max_shard_size="2KB", metadata={"note": "x"})
  names = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
  assert [path.name for path in written] == [*names, INDEX_FILE]
  index_text = (tmp_path / INDEX_FILE).read_text()
  assert index_text.endswith("}\n")
  index = json.loads(index_text)
  assert list(index["weight_map"]) == sorted(index["weight_map"])
  assert index["metadata"] == {"total_size": 13000}
  assert index["weight_map"] == {
      "w3": names[0], "w1": names[0], "w2": names[1], "w0": names[1], "big": names[2],
      "tail": names[3],
  }
  for name in names:
    with safe_open(tmp_path / name, framework="numpy") as file:
      assert file.metadata() == {"format": "pt", "note": "x"}


def test_blox_reads_what_the_safetensors_library_writes(tmp_path: Path) -> None:
  rng = np.random.default_rng(0)
  arrays = {
      code: _random_array(rng, (3, 2), dtype)
      for code, dtype in DTYPES.items() if code not in _NOT_IN_SAFETENSORS_NUMPY
  }
  save_file(arrays, tmp_path / SINGLE_FILE)  # no __metadata__ at all
  with CheckpointFiles(tmp_path) as files:
    assert files.metadata == {}
    assert files.info("BF16") == TensorInfo((3, 2), np.dtype(ml_dtypes.bfloat16), SINGLE_FILE)
    for code, array in arrays.items():
      assert _same_bits(files.read(code), array), code
      assert _same_bits(files.read(code, (slice(1, None), -1)), array[1:, -1]), code


_ROWS, _COLUMNS, _DEPTH = 5, 4, 3


def _indices() -> st.SearchStrategy[tuple[slice | int, ...]]:
  """Any int or slice (negative starts and steps, bounds past the end) per leading axis."""
  bound = st.none() | st.integers(-8, 8)
  step = st.none() | st.integers(-3, 3).filter(lambda s: s != 0)
  def item(size: int) -> st.SearchStrategy[slice | int]:
    return st.integers(-size, size - 1) | st.builds(slice, bound, bound, step)
  return st.integers(0, 3).flatmap(
      lambda count: st.tuples(*[item(size) for size in (_ROWS, _COLUMNS, _DEPTH)][:count])
  )


@pytest.fixture(scope="module")
def sliced_folder() -> Any:
  with tempfile.TemporaryDirectory() as folder:
    rng = np.random.default_rng(1)
    arrays = {
        code: _random_array(rng, (_ROWS, _COLUMNS, _DEPTH), DTYPES[code])
        for code in ("F32", "BF16", "BOOL")
    }
    arrays["empty"] = np.zeros((_ROWS, 0, _DEPTH), np.int16)
    write_checkpoint(folder, _pending(arrays))
    with CheckpointFiles(folder) as files:
      yield files, arrays


@settings(max_examples=80, deadline=None)
@given(index=_indices(), code=st.sampled_from(["F32", "BF16", "BOOL", "empty"]), mapped=st.booleans())
def test_a_slice_read_from_disk_equals_numpy_slicing_and_is_the_callers(
    sliced_folder: tuple[CheckpointFiles, dict[str, Array]],
    index: tuple[slice | int, ...], code: str, mapped: bool,
) -> None:
  files, arrays = sliced_folder
  if code == "empty":
    index = tuple(slice(None) if isinstance(i, int) else i for i in index)  # axis 1 has size 0
  limit = reader.PREAD_MAX_RUNS
  # -1 runs: every selection is copied out of a mapping instead of read.
  reader.PREAD_MAX_RUNS = -1 if mapped else limit
  try:
    got = files.read(code, index)
  finally:
    reader.PREAD_MAX_RUNS = limit
  assert _same_bits(got, np.array(arrays[code][index], order="C"))
  assert got.flags.owndata and got.flags.writeable and got.flags.c_contiguous


@settings(max_examples=80, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), max_size=4).map(tuple),
    data=st.data(),
)
def test_the_runs_of_a_selection_are_the_elements_numpy_selects(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
  bound = st.none() | st.integers(-7, 7)
  step = st.none() | st.integers(-3, 3).filter(lambda s: s != 0)
  items = [st.integers(-size, size - 1) | st.builds(slice, bound, bound, step) for size in shape]
  count = data.draw(st.integers(0, len(shape)))
  key: tuple[slice | int, ...] = data.draw(st.tuples(*items[:count]))
  selection = select(key, shape)
  want = np.arange(math.prod(shape)).reshape(shape)[key]
  assert selection.shape == want.shape
  if want.size:
    runs = selection.starts()[:, None] + np.arange(selection.run)
    assert runs.reshape(-1).tolist() == want.reshape(-1).tolist()
    assert selection.runs == len(selection.starts())


def test_rows_are_one_read_and_columns_one_read_per_row() -> None:
  assert select((), (64, 32)).runs == 1
  assert select((slice(8, 16),), (64, 32)) == Selection((8, 32), 8 * 32, (), 8 * 32)
  assert select((3, slice(2, 9)), (64, 32)).runs == 1
  columns = select((slice(None), slice(4, 12)), (64, 32))
  assert (columns.runs, columns.run) == (64, 8)


def test_reads_see_the_files_as_opened_even_after_a_new_save(tmp_path: Path) -> None:
  write_checkpoint(tmp_path, _pending({"w": np.zeros(4, np.int32)}))
  with CheckpointFiles(tmp_path) as files:
    write_checkpoint(tmp_path, _pending({"w": np.ones(4, np.int32)}))
    assert _same_bits(files.read("w"), np.zeros(4, np.int32))
  with CheckpointFiles(tmp_path) as files:
    assert _same_bits(files.read("w"), np.ones(4, np.int32))


def test_a_closed_checkpoint_still_answers_names_but_refuses_reads(tmp_path: Path) -> None:
  write_checkpoint(tmp_path, _pending({"w": np.zeros(2, np.float16)}))
  with CheckpointFiles(tmp_path) as files:
    pass
  assert files.names == ("w",) and files.info("w").shape == (2,)
  assert "closed" in repr(files)
  with pytest.raises(ValueError, match=r"closed; read inside the `with"):
    files.read("w")


def test_produce_is_called_once_per_tensor_and_one_array_is_alive_at_a_time(tmp_path: Path) -> None:
  previous: list[weakref.ref[Array]] = []
  log: list[str] = []

  def produce(name: str) -> Callable[[], Array]:
    def make() -> Array:
      # The last array produced is written and let go before this one.
      assert all(ref() is None for ref in previous), name
      log.append(name)
      array = np.full(64, len(log), np.float64)
      previous.append(weakref.ref(array))
      return array
    return make

  names = [f"t{i}" for i in range(6)]
  write_checkpoint(
      tmp_path, [PendingTensor(name, (64,), np.float64, produce(name)) for name in names],
      max_shard_size=1024,
  )
  assert sorted(log) == names
  assert (tmp_path / "model-00003-of-00003.safetensors").is_file()


def test_sizes_parse_in_hugging_face_units() -> None:
  assert parse_size("5GB") == 5 * 10**9
  assert parse_size("500MB") == 500 * 10**6
  assert parse_size("10KB") == 10_000
  assert parse_size(" 2 gib ") == 2 * 2**30
  assert parse_size("1.1GB") == 1_100_000_000
  assert parse_size("3MiB") == 3 * 2**20
  assert parse_size("7B") == 7
  assert parse_size(12345) == 12345


@pytest.mark.parametrize(
    ("size", "error", "message"),
    [
        ("5", ValueError, "write a number and a unit"),
        ("5XB", ValueError, "units: B, KB"),
        ("", ValueError, "write a number and a unit"),
        ("GB", ValueError, "write a number and a unit"),
        ("0.1B", ValueError, "at least one byte"),
        (0, ValueError, "at least one byte"),
        (-3, ValueError, "at least one byte"),
        (True, TypeError, "an int"),
        (1.5, TypeError, "an int"),
    ],
)
def test_bad_sizes_are_refused_with_what_to_write(size: Any, error: type[Exception], message: str) -> None:
  with pytest.raises(error, match=message):
    parse_size(size)


@given(count=st.integers(1, 10**6), unit=st.sampled_from(["KB", "MB", "GB", "KiB", "MiB", "GiB"]))
def test_a_parsed_size_is_the_count_times_the_unit(count: int, unit: str) -> None:
  base = 1024 if unit.endswith("iB") else 1000
  power = {"K": 1, "M": 2, "G": 3}[unit[0]]
  assert parse_size(f"{count}{unit}") == count * base**power
  assert parse_size(f"{count}{unit.lower()}") == count * base**power


# Errors reading: each names the folder, the file and the tensor.


def _raw_header(header: object, data: bytes = b"") -> bytes:
  text = json.dumps(header).encode()
  return len(text).to_bytes(8, "little") + text + data


_F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\x00", "is truncated: 2 bytes, fewer than the 8"),
        ((1000).to_bytes(8, "little") + b"{}", "header length, 1000 bytes, runs past the end of the file (10 bytes)"),
        ((2).to_bytes(8, "little") + b"{x", "corrupt header, not UTF-8 JSON"),
        ((2).to_bytes(8, "little") + b"\xff{", "corrupt header, not UTF-8 JSON"),
        (_raw_header([1, 2]), "a JSON list, not an object"),
        (_raw_header({"w": _F32_2}, bytes(4)), "'w' in 'model.safetensors' in folder"),
        (_raw_header({"w": _F32_2}, bytes(4)), "data_offsets [0, 8] lie outside the file's 4 bytes"),
        (_raw_header({"w": _F32_2 | {"shape": [3]}}, bytes(8)), "span 8 bytes, but shape [3] of F32 needs 12"),
        (_raw_header({"w": _F32_2 | {"shape": [-2]}}, bytes(8)), "tensor 'w' in 'model.safetensors' in folder"),
        (_raw_header({"w": _F32_2 | {"data_offsets": [8, 0]}}, bytes(8)), "begin <= end"),
        (_raw_header({"w": {"dtype": "F32"}}), "it needs dtype, shape, data_offsets"),
        (_raw_header({"__metadata__": {"a": 1}}), "__metadata__ must map strings to strings"),
    ],
)
def test_corrupt_files_are_refused_naming_the_folder_and_file(tmp_path: Path, raw: bytes, message: str) -> None:
  (tmp_path / SINGLE_FILE).write_bytes(raw)
  with pytest.raises(SafetensorsError) as raised:
    CheckpointFiles(tmp_path)
  assert message in str(raised.value)
  assert f"'{SINGLE_FILE}' in folder '{tmp_path}'" in str(raised.value)


def test_a_truncated_download_is_refused_before_any_read(tmp_path: Path) -> None:
  write_checkpoint(tmp_path, _pending({"a": np.zeros(8, np.float32), "b": np.zeros(8, np.int64)}))
  path = tmp_path / SINGLE_FILE
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(SafetensorsError, match=r"tensor '\w' in 'model.safetensors' .* lie outside"):
    CheckpointFiles(tmp_path)


def test_a_file_truncated_after_opening_is_refused_on_reading(tmp_path: Path) -> None:
  write_checkpoint(tmp_path, _pending({"a": np.zeros(8, np.float32)}))
  with CheckpointFiles(tmp_path) as files:
    os.truncate(tmp_path / SINGLE_FILE, 20)
    with pytest.raises(SafetensorsError, match=r"tensor 'a' in 'model.safetensors'.*changed on disk"):
      files.read("a")


def test_an_unsupported_dtype_is_refused_for_that_tensor_only(tmp_path: Path) -> None:
  header = {"c": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}, "w": _F32_2 | {"data_offsets": [8, 16]}}
  (tmp_path / SINGLE_FILE).write_bytes(_raw_header(header, np.arange(4, dtype=np.float32).tobytes()))
  with CheckpointFiles(tmp_path) as files:
    assert files.names == ("c", "w")
    assert _same_bits(files.read("w"), np.array([2, 3], np.float32))
    for call in (files.info, files.read):
      with pytest.raises(SafetensorsError) as raised:
        call("c")
      text = str(raised.value)
      assert "Tensor 'c' in 'model.safetensors' in folder" in text and str(tmp_path) in text
      assert "dtype 'C64', which blox does not read" in text and "BF16 (bfloat16)" in text


class _Explodes:
  """Unpickling this touches a file: proof that a pickle was loaded."""

  def __init__(self, marker: Path) -> None:
    self.marker = marker

  def __reduce__(self) -> tuple[Any, ...]:
    return (Path.touch, (self.marker,))


def test_pytorch_pickles_are_refused_unread_with_how_to_convert(tmp_path: Path) -> None:
  marker = tmp_path.parent / f"{tmp_path.name}-unpickled"
  (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Explodes(marker)))
  (tmp_path / "adapter_model.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError) as raised:
    CheckpointFiles(tmp_path)
  text = str(raised.value)
  assert f"No safetensors checkpoint in '{tmp_path}': looked for {SINGLE_FILE} and {INDEX_FILE}" in text
  assert "'pytorch_model.bin'" in text and "never loads" in text and "safe_serialization=True" in text
  assert "Other safetensors files there: 'adapter_model.safetensors'" in text
  assert not marker.exists()


def test_a_missing_folder_or_a_file_for_a_folder_is_refused(tmp_path: Path) -> None:
  with pytest.raises(FileNotFoundError, match="There is no folder"):
    CheckpointFiles(tmp_path / "nowhere")
  write_checkpoint(tmp_path, _pending({"a": np.zeros(1, np.uint8)}))
  with pytest.raises(NotADirectoryError, match="pass the folder that holds the checkpoint"):
    CheckpointFiles(tmp_path / SINGLE_FILE)


def _two_shards(folder: Path, first: dict[str, Array], second: dict[str, Array], weight_map: dict[str, str]) -> None:
  save_file(first, folder / "model-00001-of-00002.safetensors")
  save_file(second, folder / "model-00002-of-00002.safetensors")
  (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


_ONE, _TWO = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.mark.parametrize(
    ("shards", "weight_map", "error", "message"),
    [
        ((["a"], ["b"]), {"a": _ONE, "b": "model-00009-of-00009.safetensors"}, FileNotFoundError,
         f"{INDEX_FILE} in '{{folder}}' names shard 'model-00009-of-00009.safetensors' (for 'b'), which does not exist"),
        ((["a", "c"], ["b"]), {"a": _ONE, "b": _ONE, "c": _TWO}, SafetensorsError,
         f"Tensor 'b' is listed in {INDEX_FILE} in '{{folder}}' under shard '{_ONE}' but absent from that shard (it is in '{_TWO}')"),
        ((["a", "b"], ["b", "c"]), {"a": _ONE, "b": _ONE, "c": _TWO}, SafetensorsError,
         f"Tensor 'b' is present in two shards in '{{folder}}': '{_ONE}' and '{_TWO}'"),
        ((["a"], ["b", "c"]), {"a": _ONE, "b": _TWO}, SafetensorsError,
         f"1 tensors in the shards in '{{folder}}' are not listed in its {INDEX_FILE}: 'c' (in '{_TWO}')"),
        ((["a"], ["b"]), {"a": _ONE, "b": "pytorch_model-00001.bin"}, SafetensorsError,
         "names the PyTorch pickle file 'pytorch_model-00001.bin' for tensor 'b'; blox never loads pickles"),
        ((["a"], ["b"]), {"a": _ONE, "b": "../model.safetensors"}, SafetensorsError,
         "names shard '../model.safetensors' for tensor 'b', which is not a file name inside the folder"),
        ((["a"], ["b"]), {}, SafetensorsError, "needs a non-empty \"weight_map\""),
    ],
)
def test_an_index_that_disagrees_with_its_shards_is_refused(
    tmp_path: Path, shards: tuple[list[str], list[str]], weight_map: dict[str, str],
    error: type[Exception], message: str,
) -> None:
  first, second = ({name: np.zeros(2, np.float32) for name in names} for names in shards)
  _two_shards(tmp_path, first, second, weight_map)
  with pytest.raises(error) as raised:
    CheckpointFiles(tmp_path)
  assert message.format(folder=tmp_path) in str(raised.value)


def test_a_corrupt_index_is_refused(tmp_path: Path) -> None:
  (tmp_path / INDEX_FILE).write_text('{"weight_map": ')
  with pytest.raises(SafetensorsError, match=f"{INDEX_FILE} in '{tmp_path}' is corrupt, not UTF-8 JSON"):
    CheckpointFiles(tmp_path)


def test_an_unknown_name_lists_close_names(tmp_path: Path) -> None:
  names = ["model.layers.0.mlp.weight", "model.layers.1.mlp.weight", "model.norm.weight", "lm_head.weight"]
  write_checkpoint(tmp_path, _pending({name: np.zeros(1, np.int8) for name in names}), max_shard_size=2)
  with CheckpointFiles(tmp_path) as files:
    with pytest.raises(KeyError) as raised:
      files.info("model.layers.0.mlp.wieght")
    assert str(raised.value) == (
        f"No tensor 'model.layers.0.mlp.wieght' in {INDEX_FILE} in '{tmp_path}'. Closest names:"
        " 'model.layers.0.mlp.weight', 'model.layers.1.mlp.weight', 'model.norm.weight'."
    )
    with pytest.raises(KeyError, match=r"It holds 4 tensors, such as 'lm_head.weight', .* and 1 more"):
      files.read("zzz")
    with pytest.raises(TypeError, match="A tensor name is a string"):
      files.read(("lm_head.weight",))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("index", "error", "message"),
    [
        ([0], TypeError, r"must be a tuple of ints and slices, one per leading axis"),
        ((0, 0, 0, 0), IndexError, r"has 4 entries, but tensor 'w' in 'model.safetensors' .* has shape \(5, 4, 3\)"),
        ((5,), IndexError, r"Index 5 is out of range for axis 0 of tensor 'w'.*, of size 5"),
        ((0, -5), IndexError, r"Index -5 is out of range for axis 1"),
        ((slice(None, None, 0),), ValueError, r"has step 0"),
        ((Ellipsis,), TypeError, r"holds Ellipsis at axis 0; only ints and slices"),
        ((0, None), TypeError, r"holds None at axis 1"),
        ((True,), TypeError, r"holds True at axis 0"),
        ((slice("a"),), TypeError, r"must hold ints or None"),
    ],
)
def test_bad_indices_are_refused_naming_the_tensor(
    tmp_path: Path, index: Any, error: type[Exception], message: str
) -> None:
  write_checkpoint(tmp_path, _pending({"w": np.zeros((5, 4, 3), np.float32)}))
  with CheckpointFiles(tmp_path) as files, pytest.raises(error, match=message):
    files.read("w", index)


# Writing: misuse, failure midway, and what a save leaves in the folder.


def _zeros(name: str = "w", shape: Any = (2,), dtype: Any = np.float32) -> PendingTensor:
  return PendingTensor(name, shape, dtype, lambda: np.zeros(shape, dtype))


@pytest.mark.parametrize(
    ("tensors", "options", "error", "message"),
    [
        ([], {}, ValueError, "There are no tensors to write"),
        ({"w": _zeros()}, {}, TypeError, "tensors must be a sequence of PendingTensor; got dict"),
        ([("w", (2,), np.float32, list)], {}, TypeError, r"must hold PendingTensor\(name, shape, dtype, produce\)"),
        ([_zeros(), _zeros()], {}, ValueError, "Tensor 'w' is given twice"),
        ([_zeros("")], {}, ValueError, "A tensor name is a non-empty string"),
        ([_zeros("__metadata__")], {}, ValueError, "other than '__metadata__'"),
        ([_zeros(shape=(2, -1))], {}, ValueError, r"The shape of tensor 'w' must be a tuple of sizes >= 0; got \(2, -1\)"),
        ([_zeros(shape=(2.0,))], {}, ValueError, "The shape of tensor 'w'"),
        ([_zeros(dtype=np.complex64)], {}, ValueError, "Tensor 'w' has dtype <class 'numpy.complex64'>.*BF16 \\(bfloat16\\)"),
        ([_zeros(dtype=">f4")], {}, ValueError, "Tensor 'w' has dtype '>f4', which safetensors checkpoints do not hold"),
        ([_zeros(dtype="floaty")], {}, ValueError, "Tensor 'w' has dtype 'floaty'"),
        ([PendingTensor("w", (1,), np.int8, 3)], {}, TypeError, "The produce of tensor 'w' must be a function"),  # type: ignore[arg-type]
        ([_zeros()], {"metadata": {"format": "np"}}, ValueError, "metadata sets format 'np'; it must be 'pt'"),
        ([_zeros()], {"metadata": {"step": 3}}, TypeError, "metadata must map strings to strings"),
        ([_zeros()], {"max_shard_size": "big"}, ValueError, "Cannot read the size 'big'"),
    ],
)
def test_misuse_is_refused_before_anything_is_written(
    tmp_path: Path, tensors: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
  with pytest.raises(error, match=message):
    write_checkpoint(tmp_path / "out", tensors, **options)
  assert not (tmp_path / "out").exists()


def test_a_file_for_a_folder_is_refused(tmp_path: Path) -> None:
  (tmp_path / "file").write_text("")
  with pytest.raises(NotADirectoryError, match="it is a file"):
    write_checkpoint(tmp_path / "file", [_zeros()])


def _wrong_shape() -> Array:
  return np.zeros(3, np.float32)


def _wrong_dtype() -> Array:
  return np.zeros(256, np.float64)


def _not_an_array() -> Array:
  return [0.0] * 256  # type: ignore[return-value]


def _raises() -> Array:
  raise RuntimeError("device lost")


def _interrupted() -> Array:
  raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("produce", "error", "message"),
    [
        (_wrong_shape, ValueError, r"tensor 'w3' \(for model-00002-of-00002.safetensors\) returned float32\[3\], but it was declared float32\[256\]"),
        (_wrong_dtype, ValueError, r"tensor 'w3' .* returned float64\[256\], but it was declared float32\[256\]"),
        (_not_an_array, TypeError, "tensor 'w3' returned a list; it must return a numpy array"),
        (_raises, RuntimeError, "device lost"),
        (_interrupted, KeyboardInterrupt, None),
    ],
)
def test_a_save_failing_midway_leaves_the_previous_checkpoint_and_no_temporaries(
    tmp_path: Path, produce: Callable[[], Array], error: type[BaseException], message: str | None
) -> None:
  old = {f"w{i}": np.full(256, i, np.float32) for i in range(4)}
  write_checkpoint(tmp_path, _pending(old), max_shard_size="1KB")  # four shards
  before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
  tensors = [PendingTensor(f"w{i}", (256,), np.float32, lambda: np.ones(256, np.float32)) for i in range(4)]
  tensors[3] = tensors[3]._replace(produce=produce)
  with pytest.raises(error, match=message):
    write_checkpoint(tmp_path, tensors, max_shard_size="3KB")  # two shards
  assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_while_a_save_runs_the_folder_reads_as_the_previous_checkpoint(tmp_path: Path) -> None:
  write_checkpoint(tmp_path, _pending({f"w{i}": np.zeros(8, np.int32) for i in range(3)}), max_shard_size=40)
  seen: list[Array] = []

  def produce() -> Array:
    with CheckpointFiles(tmp_path) as files:
      seen.extend(files.read(name) for name in files.names)
    return np.ones(8, np.int32)

  write_checkpoint(tmp_path, [PendingTensor(f"w{i}", (8,), np.int32, produce) for i in range(3)])
  assert len(seen) == 9 and all(_same_bits(array, np.zeros(8, np.int32)) for array in seen)
  with CheckpointFiles(tmp_path) as files:
    assert all(_same_bits(files.read(name), np.ones(8, np.int32)) for name in files.names)


def test_each_save_leaves_exactly_its_own_files_and_keeps_the_rest(tmp_path: Path) -> None:
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / ".other.0123456789ab.tmp").write_text("")
  killed = ".model-00001-of-00007.safetensors.0123456789ab.tmp"  # a killed save's
  (tmp_path / killed).write_text("")
  kept = {"config.json", ".other.0123456789ab.tmp"}
  arrays = {f"w{i}": np.full(250, i, np.float32) for i in range(6)}  # 1000 bytes each
  for limit, files in [
      ("2KB", [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + [INDEX_FILE]),
      ("3KB", [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)] + [INDEX_FILE]),
      ("3KB", [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)] + [INDEX_FILE]),
      ("1MB", [SINGLE_FILE]),
      ("1MB", [SINGLE_FILE]),
      ("1KB", [f"model-0000{i}-of-00006.safetensors" for i in range(1, 7)] + [INDEX_FILE]),
  ]:
    written = write_checkpoint(tmp_path, _pending(arrays), max_shard_size=limit)
    assert [path.name for path in written] == files
    assert set(os.listdir(tmp_path)) == set(files) | kept
    with CheckpointFiles(tmp_path) as checkpoint:
      assert all(_same_bits(checkpoint.read(name), array) for name, array in arrays.items())
