"""`benchmarks/peers.py --smoke` runs every peer's models at tiny sizes and prints the table.

The peers come from the optional `peers` dependency group; without it the
test is skipped and says how to install them.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.scripts import run_script

PEERS = ("flax", "equinox", "haiku")
MISSING = [name for name in PEERS if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"the peers dependency group is not installed ({', '.join(MISSING)} missing):"
    " uv sync --group peers",
)


def test_peers_benchmark_prints_one_row_per_benchmark_and_a_column_per_library() -> None:
  lines = run_script("benchmarks/peers.py", "--smoke")
  assert any(line.startswith("machine: ") and "jax " in line for line in lines)
  (version_line,) = [line for line in lines if line.startswith("versions: ")]
  for name in ("flax ", "equinox ", "dm-haiku ", "blox "):
    assert name in version_line, version_line
  # The checks ran: same parameter counts, scalar losses.
  assert any(line.startswith("checks: every model has the hand-written one's parameters")
             for line in lines)
  table = [line for line in lines if line.startswith("|")]
  header = [cell.strip() for cell in table[0].split("|")[1:-1]]
  assert header == ["benchmark", "plain JAX", "blox", "Flax NNX", "Equinox", "Haiku"]
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
          for line in table[2:]}
  for prefix in (
      "MLP train step (",
      "MLP train step, Flax under nnx.jit",
      "noise floor",
      "transformer train step",
      "compile transformer train step",
      "init, eager",
      "init, jitted",
      "cached decoding per token",
  ):
    assert any(name.startswith(prefix) for name in rows), (prefix, list(rows))
  # Rows that every library runs carry a time and a positive ratio in every column.
  for name, cells in rows.items():
    if name.startswith(("MLP train step (", "transformer train step", "compile", "init")):
      for cell in cells:
        ratio = cell.split("(")[-1].split("x")[0]
        assert float(ratio) > 0, (name, cells)
  decoding = next(cells for name, cells in rows.items() if name.startswith("cached decoding"))
  assert decoding[-2:] == ["no cache"] * 2, decoding
  assert all(float(cell.split("(")[-1].split("x")[0]) > 0 for cell in decoding[:3]), decoding
