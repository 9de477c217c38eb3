"""Sharded train states saved by two processes with orbax, restored anywhere.

Real subprocesses (tests/orbax_worker.py), each with 4 simulated CPU devices,
joined by `jax.distributed.initialize` into one 8-device system, started and
stopped by scripts/processes.py as the multi-process examples are.
Two processes save params and AdamW state, laid out over a 4x2 `('data',
'model')` mesh by logical rules, asynchronously into one shared folder; a
fresh pair restores them on the same mesh; one process with 8 devices
restores them on 8x1 and 2x4 meshes. Every local shard must equal the saved
global value bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.processes import Run, finish

WORKER = Path(__file__).with_name("orbax_worker.py")
TIMEOUT_S = 120.0

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
# Several processes each: one xdist worker runs them one after another, so
# that they do not starve each other's collectives of CPU.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]


def run_workers(directory: Path, name: str, role: str, meshes: list[str], processes: int) -> list[str]:
  """Runs `processes` workers in `role` (retrying if the port was taken); their output lines."""
  mesh_args = [arg for mesh in meshes for arg in ("--mesh", mesh)]
  run = Run(name, WORKER, directory, [role, "--dir", str(directory), *mesh_args],
            processes=processes, devices=8 // processes, timeout_s=TIMEOUT_S)
  ok = finish([run])  # prints why, if a process failed or the run timed out
  lines = [f"[{i}] {line}" for i in range(processes) for line in run.text(i).splitlines()]
  assert ok, f"{name}: the workers failed\n" + "\n".join(lines[-60:])
  return lines


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
