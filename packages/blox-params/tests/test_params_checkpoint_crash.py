"""Crash consistency: `save` SIGKILLed at many moments never loses the checkpoint.

A child process imports blox.params once and then, on each request, forks a
saver that saves generation g, g+1, ... of a training state over the same
path in a loop. The parent kills the saver with SIGKILL after a delay drawn
from a seeded RNG, and checks that the path holds one complete generation
(every array and the step counter agree) that loads. The saver marks the
phase it is in (write, fsync, rename, after the rename) in a one-byte file,
and sleeps briefly before each array member, fsync and rename so that kills land there
too; the test counts the distinct kill points it hit.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from blox.params import Param, Params, load, save

_SIZE = 1 << 16  # floats per array: 4 arrays of 256 KiB each.
_KILLS = 60

_CHILD = r"""
import os, signal, sys, time
import numpy as np
import blox.params as bp
import blox.params._atomic as _atomic

size, target, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3]
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked savers reap themselves
real_fsync, real_replace, real_create = os.fsync, os.replace, _atomic._create_temporary
real_write_array = np.lib.format.write_array

def write_array(*args, **kwargs):
  time.sleep(0.002)  # a pause before each member: kills land between arrays too
  return real_write_array(*args, **kwargs)

def mark(phase):
  os.pwrite(marker_fd, phase, 0)

def fsync(fd):
  if fd == saving_fd[0]:
    mark(b"f"); time.sleep(0.002)
  return real_fsync(fd)

def replace(src, dst):
  mark(b"r"); time.sleep(0.004)
  real_replace(src, dst)
  mark(b"a")

def create(*args):
  mark(b"w")
  fd, name = real_create(*args)
  saving_fd[0] = fd
  return fd, name

saving_fd = [None]

def state(g):
  params = bp.Params({("net", f"w{i}"): bp.Param(np.full(size, g, np.float32)) for i in range(4)})
  return {"params": params, "step": np.int32(g), "lr": 0.5}

for line in sys.stdin:
  generation = int(line)
  pid = os.fork()
  if pid == 0:
    marker_fd = os.open(marker, os.O_WRONLY)
    os.fsync, os.replace, _atomic._create_temporary = fsync, replace, create
    np.lib.format.write_array = write_array
    while True:
      mark(b"i")
      bp.save(target, state(generation))
      generation += 1
  print(pid, flush=True)
"""

_PHASES = {"i": "between saves", "w": "write", "f": "fsync", "r": "rename", "a": "after rename"}


def _state(generation: int) -> dict[str, object]:
  params = Params({("net", f"w{i}"): Param(np.full(_SIZE, generation, np.float32)) for i in range(4)})
  return {"params": params, "step": np.int32(generation), "lr": 0.5}


def _generation(target: pathlib.Path) -> int:
  """The one generation the checkpoint holds; fails unless it is complete."""
  loaded = load(target, like=jax.eval_shape(lambda: _state(0)))
  generation = int(loaded["step"])
  for param in loaded["params"].values():
    np.testing.assert_array_equal(np.asarray(param.value), generation)
  assert loaded["lr"] == 0.5
  return generation


def _wait_gone(pid: int) -> None:
  for _ in range(1000):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.001)
  raise AssertionError(f"saver {pid} survived SIGKILL")


def test_a_killed_save_leaves_the_old_or_the_new_checkpoint(tmp_path: pathlib.Path) -> None:
  target = tmp_path / "ckpt.npz"
  marker = tmp_path / "phase"
  marker.write_bytes(b"i")
  save(target, _state(0))
  child = subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(_SIZE), str(target), str(marker)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
  )
  assert child.stdin is not None and child.stdout is not None
  rng = random.Random(1234)
  points: set[tuple[str, int]] = set()
  phases: dict[str, int] = {}
  generation = 0
  stale_bound = 0  # how many temporaries killed saves may have left by now
  start = time.perf_counter()
  try:
    for _ in range(_KILLS):
      child.stdin.write(f"{generation + 1}\n")
      pid = int(child.stdout.readline())
      time.sleep(rng.uniform(0.0, 0.04))
      os.kill(pid, signal.SIGKILL)
      _wait_gone(pid)
      phase = _PHASES[marker.read_bytes().decode()]
      temporaries = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
      size = os.path.getsize(tmp_path / temporaries[-1]) if temporaries and phase == "write" else -1
      phases[phase] = phases.get(phase, 0) + 1
      points.add((phase, size >> 12 if size >= 0 else -1))
      # The path is never missing or broken, and never goes back in time.
      now = _generation(target)
      assert now >= generation
      # Each killed save leaves at most its own temporary, and a save that
      # finished (renamed, then cleaned up) removed the older ones.
      finished = now > generation and phase not in ("rename", "after rename")
      stale_bound = 1 if finished else stale_bound + 1
      assert len(temporaries) <= stale_bound, (temporaries, stale_bound, phase, now, generation)
      generation = now
  finally:
    child.stdin.close()
    child.wait(timeout=30)
  elapsed = time.perf_counter() - start
  print(f"\n{_KILLS} kills in {elapsed:.1f}s: {len(points)} distinct kill points, phases {phases},"
        f" last generation {generation}")
  assert {"write", "fsync", "rename"} <= set(phases), phases
  assert len(points) >= 6, points
  # The next successful save cleans up whatever a killed save left.
  save(target, _state(generation + 1))
  assert sorted(os.listdir(tmp_path)) == ["ckpt.npz", "phase"]
  assert _generation(target) == generation + 1
