"""The parallel examples run end to end in their fast mode.

Both examples start together (they spend most of their time compiling and
waiting on each other's processes), and each test waits for its own.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.scripts import start_script

EXAMPLES = ("data_parallel.py", "multihost_data_parallel.py")
TIMEOUT_S = 300

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
# Several processes each: one xdist worker runs them one after another, so
# that they do not starve each other's collectives of CPU.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]


@pytest.fixture(scope="module")
def running() -> Iterator[dict[str, subprocess.Popen[str]]]:
  procs = {
      name: start_script(f"examples/{name}", "--fast") for name in EXAMPLES
  }
  try:
    yield procs
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
      proc.communicate()


def output_of(procs: dict[str, subprocess.Popen[str]], name: str) -> str:
  try:
    stdout, stderr = procs[name].communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    procs[name].kill()
    raise
  assert procs[name].returncode == 0, f"{name} failed:\n{stdout}\n{stderr}"
  return stdout


def test_data_parallel_example(running: dict[str, subprocess.Popen[str]]) -> None:
  out = output_of(running, "data_parallel.py")
  assert "mesh: {'data': 4, 'model': 2} over 8 cpu devices" in out
  assert "net/mlp/hidden/kernel: (16, 64) split as P(None, 'model'), (16, 32) per device" in out
  assert "held-out accuracy:" in out
  assert "loss fell:" in out


def test_multihost_data_parallel_example(running: dict[str, subprocess.Popen[str]]) -> None:
  out = output_of(running, "multihost_data_parallel.py")
  assert "[worker1] step   9" in out
  assert "net/mlp/hidden/kernel: workers identical" in out
  assert "PASSED: both processes hold identical params, equal to the single-process run" in out
  assert "FAILED" not in out
