"""How `load_pretrained` reads: sharded on a mesh, a piece at a time, in little memory.

On 8 simulated devices (a (4, 2) ('data', 'model') mesh, Explicit and Auto
axes) every param is laid out as its logical axes and `SHARDING_RULES` say,
holds the same bits as on one device and computes the same logits; the
reads, recorded at `CheckpointFiles.read`, show that each distinct block of
a param is read once and that no read of a sharded param crosses its
device's block. On one device the reads are pieces of about `_PIECE_BYTES`
along each checkpoint tensor's leading (contiguous) axis, and a fresh
process's peak memory while loading rises no more than 1.1 times what
`safetensors.numpy.load_file` needs for the same files (the slow test).
"""

from __future__ import annotations

import os

# Before jax is imported: the 8 simulated devices (conftest.py asks for them too).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import math
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec
import models_memory_probe as probe
from models_fixtures import FAMILIES, fixture_folder, load_reference

import blox.models as bm
import blox.parallel as bp
import blox.models._load as load_module
from blox.models._layout import Take, TensorMap, tensor_maps
from blox.models._safetensors_read import CheckpointFiles

ROOT = ("model", "lm")
PROBE = Path(__file__).resolve().parent / "models_memory_probe.py"

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec

needs_8_devices = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


class Read(NamedTuple):
  """One `CheckpointFiles.read`: the tensor, the index asked for, the bytes returned."""

  name: str
  index: Any
  nbytes: int


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Read]]:
  """Every `CheckpointFiles.read` made while the test runs."""
  made: list[Read] = []
  real = CheckpointFiles.read

  def read(self: CheckpointFiles, name: str, index: Any = None, *, out: Any = None) -> np.ndarray:
    array = real(self, name, index, out=out)
    made.append(Read(name, index, array.nbytes))
    return array

  monkeypatch.setattr(CheckpointFiles, "read", read)
  yield made


def by_tensor(config: bm.ModelConfig) -> dict[str, TensorMap]:
  """The maps of `config`'s checkpoint, by tensor name (no family has fused
  tensors but GPT-2, whose first map of each stands for them)."""
  maps: dict[str, TensorMap] = {}
  for entry in tensor_maps(config, ROOT):
    maps.setdefault(entry.hf, entry)
  return maps


def tensor_sizes(folder: Path) -> dict[str, tuple[tuple[int, ...], int]]:
  """Each checkpoint tensor's shape and bytes."""
  with CheckpointFiles(folder) as files:
    return {name: (files.info(name).shape, math.prod(files.info(name).shape) * files.info(name).dtype.itemsize)
            for name in files.names}


def mesh_of(kind: AxisType) -> jax.sharding.Mesh:
  return bp.make_mesh((4, 2), ("data", "model"), axis_types=kind)


# ---- on a mesh -------------------------------------------------------------


@needs_8_devices
@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_params_on_a_mesh_are_laid_out_by_the_rules_with_the_same_bits(kind: AxisType) -> None:
  folder, rules = fixture_folder("llama"), bm.SHARDING_RULES
  model, single = bm.load_pretrained(folder)
  mesh = mesh_of(kind)
  _, sharded = bm.load_pretrained(folder, mesh=mesh, rules=rules)
  assert set(sharded) == set(single)
  split = 0
  for path, param in sharded.items():
    expected = NamedSharding(mesh, bp.partition_spec(path, param, mesh, rules=rules))
    assert param.value.sharding == expected, path
    assert param.metadata == single[path].metadata and param.trainable
    np.testing.assert_array_equal(np.asarray(param.value), np.asarray(single[path].value), err_msg=str(path))
    split += "model" in jax.tree.leaves(tuple(expected.spec))
  assert split >= 8  # embedding, head, query, key, value, out, MLP: tensor parallel

  reference = load_reference("llama")
  ids = np.tile(reference.input_ids, (4, 1))  # 8 rows: 2 per 'data' shard
  mask = np.tile(reference.attention_mask, (4, 1))
  expected_logits, _ = jax.jit(lambda p, i, m: model(p, i, mask=m))(single, ids, mask)
  with jax.set_mesh(mesh):
    rows = NamedSharding(mesh, P("data"))
    logits, _ = jax.jit(lambda p, i, m: model(p, i, mask=m))(
        sharded, jax.device_put(ids, rows), jax.device_put(mask, rows))
  assert len(logits.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected_logits), atol=1e-5)


@needs_8_devices
def test_each_distinct_block_is_read_once_and_no_read_crosses_a_block(reads: list[Read]) -> None:
  folder, rules = fixture_folder("llama"), bm.SHARDING_RULES
  mesh = mesh_of(AxisType.Explicit)
  model, params = bm.load_pretrained(folder, mesh=mesh, rules=rules)
  maps, sizes = by_tensor(model.architecture), tensor_sizes(folder)
  read_per_param: dict[tuple[str, ...], int] = {}
  for read in reads:
    path = maps[read.name].path
    value = params[path].value
    read_per_param[path] = read_per_param.get(path, 0) + read.nbytes
    # A device's block is this part of every layer's tensor.
    part = math.prod(value.sharding.shard_shape(value.shape)) / math.prod(value.shape)
    assert read.nbytes <= sizes[read.name][1] * part, (read, part)
    if "model" in jax.tree.leaves(tuple(value.sharding.spec)):
      assert read.nbytes < sizes[read.name][1], read
  # Once each: a block that several devices hold (replicated over 'model') is
  # copied between them, not read again; 8 devices would otherwise read it 8 times.
  assert read_per_param == {path: param.value.nbytes for path, param in params.items()}
  assert sum(read.nbytes for read in reads) == sum(size for _, size in sizes.values())


@needs_8_devices
def test_loading_under_a_mesh_in_context_places_the_same_params() -> None:
  folder, rules = fixture_folder("mistral"), bm.SHARDING_RULES
  mesh = mesh_of(AxisType.Explicit)
  _, outside = bm.load_pretrained(folder, mesh=mesh, rules=rules)
  with jax.set_mesh(mesh):
    _, sharded = bm.load_pretrained(folder, mesh=mesh, rules=rules)
    _, single = bm.load_pretrained(folder)
  for path, param in outside.items():
    assert sharded[path].value.sharding == param.value.sharding
    assert single[path].value.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
    np.testing.assert_array_equal(np.asarray(sharded[path].value), np.asarray(param.value))
    np.testing.assert_array_equal(np.asarray(single[path].value), np.asarray(param.value))


# ---- a piece at a time -----------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tensors_are_read_in_pieces_along_their_leading_axis(
    family: str, reads: list[Read], monkeypatch: pytest.MonkeyPatch
) -> None:
  folder = fixture_folder(family)
  model, whole = bm.load_pretrained(folder)
  maps, sizes = by_tensor(model.architecture), tensor_sizes(folder)
  # The fixtures' tensors are far below a piece: one whole read each (but
  # GPT-2's fused query-key-value, a third of it for each param).
  counts = Counter(read.name for read in reads)
  assert all(count == (3 if family == "gpt2" and "c_attn" in name else 1)
             for name, count in counts.items()), counts
  reads.clear()
  piece = 256  # bytes: a few rows of the fixtures' tensors
  monkeypatch.setattr(load_module, "PIECE_BYTES", piece)
  _, pieces = bm.load_pretrained(folder)
  for path, param in whole.items():
    assert pieces[path].value.dtype == param.value.dtype
    np.testing.assert_array_equal(np.asarray(pieces[path].value), np.asarray(param.value), err_msg=str(path))
  assert len(reads) > 2 * len(sizes)
  read_per_tensor: dict[str, int] = {}
  for read in reads:
    shape, size = sizes[read.name]
    row = size // shape[0]
    # At least one step along the leading axis of blox's layout: a head
    # (head_dim rows) where that axis is a checkpoint axis split into heads.
    assert read.nbytes <= max(piece, model.architecture.head_dim * row), read
    read_per_tensor[read.name] = read_per_tensor.get(read.name, 0) + read.nbytes
    if not any(isinstance(op, Take) for op in maps[read.name].ops):
      # Whole rows of the checkpoint tensor: one contiguous run on disk.
      assert all(s.indices(n) == (0, n, 1) for s, n in zip(read.index[1:], shape[1:])), read
  # Each tensor read once (GPT-2's fused query-key-value a third per param),
  # but those that are no weight or repeat one (GPT-2's masks, a tied head).
  assert read_per_tensor == {name: sizes[name][1] for name in maps}


def test_a_block_becomes_the_cpu_device_buffer_without_a_copy() -> None:
  # What keeps a CPU load at one copy of the weights: jax's CPU client takes a
  # 64-byte aligned host array as the device buffer itself.
  device = jax.devices()[0]
  if device.platform != "cpu":
    pytest.skip("a CPU behaviour")
  block = load_module.aligned_empty((5, 7, 3), np.float32)
  assert block.ctypes.data % 64 == 0 and block.shape == (5, 7, 3)
  block[...] = np.arange(105).reshape(5, 7, 3)
  placed = jax.device_put(block, device, may_alias=True)
  assert placed.unsafe_buffer_pointer() == block.ctypes.data
  np.testing.assert_array_equal(placed, np.arange(105).reshape(5, 7, 3))


# ---- peak memory -----------------------------------------------------------


def peak_growth(how: str, folder: Path) -> int:
  """The probe's peak memory growth while loading `folder` `how`, in a fresh process."""
  env = {**os.environ, "XLA_FLAGS": ""}  # one device, as a plain program has
  result = subprocess.run(
      [sys.executable, str(PROBE), how, str(folder)],
      capture_output=True, text=True, timeout=300, check=True, env=env)
  if result.stdout.strip() == "unsupported":
    pytest.skip("/proc/self/clear_refs cannot reset the peak resident memory here")
  return int(result.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_loading_peaks_at_no_more_memory_than_safetensors_load_file(tmp_path: Path) -> None:
  model, params = bm.create({
      "model_type": "llama", "vocab_size": 8192, "hidden_size": 512, "intermediate_size": 1536,
      "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
      "tie_word_embeddings": False})
  size = sum(param.value.nbytes for param in params.values())  # 84 MB in float32
  assert max(param.value.nbytes for param in params.values()) == 8192 * 512 * 4
  bm.save_pretrained(model, params, tmp_path, max_shard_size="40MB")
  del params
  assert len(list(tmp_path.glob("*.safetensors"))) == 3
  blox = peak_growth("blox", tmp_path)
  safetensors = peak_growth("safetensors", tmp_path)
  # Both hold the weights at the end: the measurement sees them.
  assert blox > 0.9 * size and safetensors > 0.9 * size, (blox, safetensors, size)
  ratio = blox / safetensors
  print(f"peak growth: blox {blox / 1e6:.1f} MB, safetensors {safetensors / 1e6:.1f} MB,"
        f" ratio {ratio:.3f} (weights {size / 1e6:.1f} MB)")
  assert ratio <= 1.1, (blox, safetensors, ratio)
  # On CPU each block is read into the buffer the device keeps: the weights
  # once, plus a piece and jax's own bookkeeping.
  assert blox <= 1.1 * size, (blox, size)


def test_the_probe_measures_what_a_load_keeps() -> None:
  if not probe.PEAK_SUPPORTED:
    pytest.skip("/proc/self/clear_refs is not there")
  # In a fresh process: a long-lived one reuses memory it freed before.
  code = (f"import sys; sys.path.insert(0, {str(PROBE.parent)!r}); import numpy as np;"
          " import models_memory_probe as probe;"
          " print(probe.measure_peak_growth(lambda: np.ones(16 << 20, np.uint8)),"
          " probe.measure_peak_growth(lambda: np.ones(1 << 20, np.uint8)))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
  big, small = map(int, result.stdout.split())
  assert 16 << 20 <= big < 18 << 20 and small < 2 << 20, (big, small)
