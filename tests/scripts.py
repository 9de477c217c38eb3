"""Running the repository's scripts (examples, benchmarks) as a user would.

A script runs in a fresh Python process from the repository root, without
the XLA_FLAGS that the test session's conftest sets: each script must ask for
the devices it needs itself, exactly as under `uv run examples/NAME.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def user_environment() -> dict[str, str]:
  """This process's environment without the test session's XLA_FLAGS."""
  return {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}


def start_script(path: str, *args: str) -> subprocess.Popen[str]:
  """Starts `python <path> <args>` in the background, capturing its output."""
  return subprocess.Popen(
      [sys.executable, path, *args], cwd=ROOT, env=user_environment(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )


def run_script(path: str, *args: str, timeout: float = 600) -> list[str]:
  """Runs `python <path> <args>` and returns its stdout lines.

  Fails the test, showing stdout and stderr, when the script exits non-zero.
  """
  result = subprocess.run(
      [sys.executable, path, *args], cwd=ROOT, env=user_environment(),
      capture_output=True, text=True, timeout=timeout,
  )
  assert result.returncode == 0, (
      f"{path} exited with {result.returncode}\n"
      f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  )
  return result.stdout.splitlines()
