"""Safetensors checkpoints across processes: saves SIGKILLed at every step, peak memory.

Crash consistency: a child process imports blox.models once, then for each
request forks a saver that counts its steps (each tensor produced, each file
renamed or removed) and SIGKILLs itself at the requested one. After each kill
the folder must read as the previous checkpoint or the new one, complete;
only a sharded save over shards of the same names may leave no checkpoint
(never a mix) while it renames.

Peak memory: a fresh process reads a 1 MB slice of a 64 MB tensor, then the
whole tensor, and reports how far its peak resident memory rose in each. It
reads the peak as Linux's VmHWM, reset before each read through
/proc/self/clear_refs, not as getrusage's ru_maxrss: a process started by
fork and exec inherits its parent's ru_maxrss, which hides any smaller rise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from blox.models._safetensors_format import INDEX_FILE, SINGLE_FILE
from blox.models._safetensors_read import CheckpointFiles
from blox.models._safetensors_write import PendingTensor, write_checkpoint

# Real processes, killed or measured: with the end-to-end tests (`pytest -m slow`).
pytestmark = pytest.mark.slow

_CHILD = r"""
import os, signal, sys
import numpy as np
from blox.models._safetensors_write import PendingTensor, write_checkpoint

folder = sys.argv[1]
real_replace, real_unlink = os.replace, os.unlink

def save(generation, limit, kill_at):
  steps = [0]
  def step():
    if steps[0] == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
    steps[0] += 1
  def replace(source, target):
    step()
    real_replace(source, target)
  def unlink(path):
    step()
    real_unlink(path)
  os.replace, os.unlink = replace, unlink
  def producer(i):
    def produce():
      step()
      return np.full(256, 100 * generation + i, np.float32)
    return produce
  tensors = [PendingTensor(f"w{i}", (256,), np.float32, producer(i)) for i in range(4)]
  write_checkpoint(folder, tensors, max_shard_size=limit)
  return steps[0]

for line in sys.stdin:
  generation, limit, kill_at = line.split()
  read_end, write_end = os.pipe()
  pid = os.fork()
  if pid == 0:
    os.close(read_end)
    os.write(write_end, str(save(int(generation), int(limit), int(kill_at))).encode())
    os._exit(0)
  os.close(write_end)
  _, status = os.waitpid(pid, 0)
  steps = os.read(read_end, 64).decode()
  os.close(read_end)
  killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
  print("killed" if killed else f"done {steps}", flush=True)
"""

_TENSOR = 256 * 4  # bytes of each of the four tensors
_LAYOUTS = {"four shards": _TENSOR, "two shards": 2 * _TENSOR, "one file": 10**6}


def _tensors(generation: int) -> list[PendingTensor]:
  """What the child saves as `generation`: tensor `wi` holds 100 * generation + i."""
  def pending(i: int) -> PendingTensor:
    return PendingTensor(
        f"w{i}", (256,), np.float32, lambda: np.full(256, 100 * generation + i, np.float32)
    )
  return [pending(i) for i in range(4)]


def _generation(folder: Path) -> int | None:
  """The one generation the folder holds, complete; None if no checkpoint."""
  try:
    files = CheckpointFiles(folder)
  except FileNotFoundError as error:
    assert "No safetensors checkpoint" in str(error)
    return None
  with files:
    assert files.names == ("w0", "w1", "w2", "w3")
    first = int(files.read("w0")[0]) // 100
    for i, name in enumerate(files.names):
      np.testing.assert_array_equal(files.read(name), np.full(256, 100 * first + i, np.float32))
  return first


@pytest.mark.skipif(sys.platform == "win32", reason="fork and SIGKILL")
@pytest.mark.parametrize(
    ("old", "new"),
    [("four shards", "two shards"), ("two shards", "two shards"), ("one file", "two shards"),
     ("two shards", "one file"), ("one file", "one file")],
)
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_checkpoint(
    tmp_path: Path, old: str, new: str
) -> None:
  child = subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(tmp_path)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
  )
  assert child.stdin is not None and child.stdout is not None

  def save_in_child(kill_at: int) -> str:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"2 {_LAYOUTS[new]} {kill_at}\n")
    return child.stdout.readline().strip()

  outcomes: list[int | None] = []
  try:
    write_checkpoint(tmp_path, _tensors(1), max_shard_size=_LAYOUTS[old])
    finished = save_in_child(-1)
    assert finished.startswith("done "), finished
    assert _generation(tmp_path) == 2
    steps = int(finished.split()[1])
    for kill_at in range(steps):
      # Each save of the old checkpoint also cleans up what the killed one left.
      old_files = write_checkpoint(tmp_path, _tensors(1), max_shard_size=_LAYOUTS[old])
      assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in old_files)
      assert save_in_child(kill_at) == "killed"
      outcomes.append(_generation(tmp_path))
  finally:
    child.stdin.close()
    child.wait(timeout=60)
  # Old, then (renaming over shards of the same names) none, then new: never back.
  rank = {1: 0, None: 1, 2: 2}
  assert outcomes[0] == 1 and [rank[o] for o in outcomes] == sorted(rank[o] for o in outcomes), outcomes
  assert (None in outcomes) == (old == new == "two shards"), outcomes
  # Killed while removing the old checkpoint's files, the folder reads as the
  # new one, except while the old model.safetensors (which readers look for
  # first) is still there.
  assert (2 in outcomes) == (old != new and old != "one file"), outcomes
  # The next successful save removes the temporaries of killed ones.
  written = write_checkpoint(tmp_path, _tensors(3), max_shard_size=_LAYOUTS[new])
  assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in written)
  assert _generation(tmp_path) == 3
  if new == "one file":
    assert [path.name for path in written] == [SINGLE_FILE]
  else:
    assert written[-1].name == INDEX_FILE


_MEASURE = r"""
import sys
import numpy as np
from blox.models._safetensors_read import CheckpointFiles

def status(key):
  with open("/proc/self/status") as file:
    return next(int(line.split()[1]) * 1024 for line in file if line.startswith(key + ":"))

def reset_peak():
  with open("/proc/self/clear_refs", "w") as file:
    file.write("5")  # VmHWM := VmRSS

try:
  reset_peak()
except OSError:
  print("unsupported")
  sys.exit()
rows = (slice(1000, 1000 + int(sys.argv[2])),)
columns = (slice(None), slice(1000, 1000 + int(sys.argv[3])))
growth = []
with CheckpointFiles(sys.argv[1]) as files:
  parts = []
  for index in (rows, columns, None):
    reset_peak()
    before = status("VmRSS")
    parts.append(files.read("big", index))
    growth.append(status("VmHWM") - before)
part, column, whole = parts
assert part.nbytes == column.nbytes == 1 << 20, (part.shape, column.shape)
assert np.array_equal(part.view(np.uint8), whole[rows].view(np.uint8))
assert np.array_equal(column.view(np.uint8), whole[columns].view(np.uint8))
print(*growth)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
@pytest.mark.parametrize("dtype", [np.float32, "bfloat16"])
def test_reading_a_slice_costs_the_slice_and_the_whole_tensor_costs_itself(
    tmp_path: Path, dtype: str | type
) -> None:
  checked = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
  columns = 4096
  rows = (64 << 20) // (columns * checked.itemsize)  # 64 MB in all
  # 1 MB slices: of rows (one read), and of columns (a read per row).
  slice_rows, slice_columns = (1 << 20) // (columns * checked.itemsize), (1 << 20) // (rows * checked.itemsize)
  values = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8)
  write_checkpoint(
      tmp_path,
      [PendingTensor("big", (rows, columns), checked, lambda: values.view(checked).reshape(rows, columns))],
  )
  del values
  result = subprocess.run(
      [sys.executable, "-c", _MEASURE, str(tmp_path), str(slice_rows), str(slice_columns)],
      capture_output=True, text=True, timeout=120, check=True,
  )
  if result.stdout.strip() == "unsupported":
    pytest.skip("/proc/self/clear_refs cannot reset the peak resident memory here")
  rows_growth, columns_growth, whole_growth = map(int, result.stdout.split())
  assert rows_growth < 3 << 20, rows_growth
  assert columns_growth < 3 << 20, columns_growth
  # The whole tensor costs its 64 MB once: its file pages are not mapped too.
  assert 60 << 20 < whole_growth < 70 << 20, whole_growth
