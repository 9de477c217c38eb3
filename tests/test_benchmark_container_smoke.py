"""The container benchmark runs end to end in its tiny `--smoke` mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def test_container_benchmark_smoke_run_prints_its_table() -> None:
  result = subprocess.run(
      [sys.executable, "benchmarks/container.py", "--smoke"],
      cwd=_ROOT,
      check=True,
      capture_output=True,
      text=True,
      timeout=300,
  )
  lines = result.stdout.splitlines()
  header = next(line for line in lines if line.startswith("op "))
  for column in ("params", "tuple", "dict", "params/tuple", "params/dict", "target"):
    assert column in header.split()
  for op in ("flatten", "unflatten", "jit call"):
    assert any(line.startswith(op) for line in lines if line is not header)
