"""The container benchmark runs end to end in its tiny `--smoke` mode."""

from __future__ import annotations

from tests.scripts import run_script


def test_container_benchmark_smoke_run_prints_its_table() -> None:
  lines = run_script("benchmarks/container.py", "--smoke", timeout=300)
  header = next(line for line in lines if line.startswith("op "))
  for column in ("params", "tuple", "dict", "params/tuple", "params/dict", "target"):
    assert column in header.split()
  for op in ("flatten", "unflatten", "jit call"):
    assert any(line.startswith(op) for line in lines if line is not header)
