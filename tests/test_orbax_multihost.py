"""Sharded train states saved by two processes with orbax, restored anywhere.

Real subprocesses (tests/orbax_worker.py), each with 4 simulated CPU devices,
joined by `jax.distributed.initialize` into one 8-device system, as in
`examples/multihost_data_parallel.py` (whose process helpers,
`examples/_processes.py`, this reuses).
Two processes save params and AdamW state, laid out over a 4x2 `('data',
'model')` mesh by logical rules, asynchronously into one shared folder; a
fresh pair restores them on the same mesh; one process with 8 devices
restores them on 8x1 and 2x4 meshes. Every local shard must equal the saved
global value bit for bit.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import IO

import pytest

from examples._processes import free_port, port_was_taken, spawn, stop

WORKER = str(Path(__file__).with_name("orbax_worker.py"))
TIMEOUT_S = 120.0
ATTEMPTS = 3  # the coordinator's port may be taken between free_port() and its bind


def run_workers(directory: Path, name: str, role: str, meshes: list[str], processes: int) -> list[str]:
  """Runs `processes` workers in `role` (retrying if the port was taken); their output lines."""
  for attempt in range(1, ATTEMPTS + 1):
    status, lines = run_once(directory, f"{name}-{attempt}", role, meshes, processes, free_port())
    port_taken = processes > 1 and any(port_was_taken(line) for line in lines)
    if status == "ok" or not port_taken:
      break
  assert status == "ok", f"{name}: {status}\n" + "\n".join(lines[-60:])
  return lines


def run_once(
    directory: Path, name: str, role: str, meshes: list[str], processes: int, port: int
) -> tuple[str, list[str]]:
  """One try: `(status, output lines)`; `status` is "ok" or what went wrong."""
  mesh_args = [arg for mesh in meshes for arg in ("--mesh", mesh)]
  procs: list[subprocess.Popen[str]] = []
  logs: list[IO[str]] = []
  status = "ok"
  try:
    for i in range(processes):
      logs.append(open(directory / f"{name}-{i}.log", "w"))
      args = [role, "--dir", str(directory), *mesh_args, "--processes", str(processes),
              "--process-id", str(i), "--port", str(port)]
      procs.append(spawn(WORKER, args, 8 // processes, logs[-1]))
    # A process that dies leaves its peer waiting at a barrier: stop at the first failure.
    deadline = time.monotonic() + TIMEOUT_S
    while any(proc.poll() is None for proc in procs):
      failed = [i for i, proc in enumerate(procs) if proc.poll() not in (None, 0)]
      if failed:
        status = f"process {failed[0]} exited with status {procs[failed[0]].returncode}"
        break
      if time.monotonic() > deadline:
        status = f"not finished within {TIMEOUT_S:.0f}s"
        break
      time.sleep(0.1)
    else:
      bad = [proc.returncode for proc in procs if proc.returncode != 0]
      status = f"a process exited with status {bad[0]}" if bad else "ok"
  finally:
    for proc in procs:
      stop(proc)
    for log in logs:
      log.close()
  lines = []
  for i in range(len(procs)):
    lines += [f"[{i}] {line}" for line in (directory / f"{name}-{i}.log").read_text().splitlines()]
  return status, lines


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
  directory = tmp_path_factory.mktemp("orbax_multihost")
  lines = run_workers(directory, "save", "save", ["4x2"], processes=2)
  assert sum("saved step 2" in line for line in lines) == 2, "\n".join(lines)
  assert (directory / "expected.npz").exists()
  return directory


def test_fresh_processes_restore_the_same_mesh(saved: Path) -> None:
  lines = run_workers(saved, "restore2", "restore", ["4x2"], processes=2)
  assert sum("mesh 4x2" in line and "shards equal" in line for line in lines) == 2, "\n".join(lines)


def test_one_process_restores_onto_other_meshes(saved: Path) -> None:
  lines = run_workers(saved, "restore1", "restore", ["8x1", "2x4"], processes=1)
  for mesh in ("8x1", "2x4"):
    assert any(f"mesh {mesh}" in line and "shards equal" in line for line in lines), "\n".join(lines)
