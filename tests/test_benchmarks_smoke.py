"""`benchmarks/run.py --smoke` runs every benchmark at tiny sizes and prints the table."""

from __future__ import annotations

from tests.scripts import run_script


def test_benchmark_runner_prints_one_table() -> None:
  lines = run_script("benchmarks/run.py", "--smoke")
  assert any(line.startswith("machine: ") and "jax " in line for line in lines)
  table = [line for line in lines if line.startswith("|")]
  assert table[0].split("|")[1].strip() == "benchmark"
  names = [line.split("|")[1].strip() for line in table[2:]]
  for prefix in (
      "container jit call",
      "train step",
      "time to first step: compile",
      "lstm forward",
      "lstm train step",
      "compile train step, Repeat",
      "transformer train step, Repeat",
      "cached decoding per token",
      "train step temp memory",
      "init, jax.jit(init)()",
  ):
    assert any(name.startswith(prefix) for name in names), (prefix, names)
  # Every measured row carries a positive ratio.
  ratios = [line.split("|")[4].strip() for line in table[2:]]
  assert all(r.endswith("x") and float(r[:-1]) > 0 for r in ratios), ratios
