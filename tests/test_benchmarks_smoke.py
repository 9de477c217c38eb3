"""`benchmarks/run.py --smoke` runs every benchmark at tiny sizes and prints the table.

One run covers every row, the transformer's included (the transformer
benchmark alone used to have a smoke test of its own, which ran the same
rows a second time).
"""

from __future__ import annotations

import pytest

from tests.scripts import run_script

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
pytestmark = pytest.mark.slow


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
      "compile train step, Repeat, 2 layers (vs 1)",
      "compile train step, unrolled, 2 layers (vs 1)",
      "compile train step, 2 layers, Repeat vs unrolled",
      "transformer train step, Repeat",
      "transformer train step, unrolled",
      "cached decoding per token",
      "train step temp memory, remat_policy='full' vs None",
      "init, jax.jit(init)() vs eager init()",
      "generate per token",
      "generate time to first token",
      "generate tokens/s vs transformers",
  ):
    assert any(name.startswith(prefix) for name in names), (prefix, names)
  # Every measured row carries a positive ratio; a row whose baseline is not
  # installed (transformers, outside the interop group) says so instead.
  cells = [[cell.strip() for cell in line.split("|")] for line in table[2:]]
  ratios = [row[4] for row in cells if not (row[4] == "-" and "not installed" in row[6])]
  assert all(r.endswith("x") and float(r[:-1]) > 0 for r in ratios), ratios
