"""The user's path: every example runs (in its --fast mode) and says what it should.

Examples run as a user runs them, as scripts from the repository root, each
in its own process. The spec notebook's code cells are executed in order and
their printed output compared with the output recorded in the notebook.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.scripts import ROOT, run_script


def run_example(name: str, *args: str) -> list[str]:
  """Runs `examples/<name>.py --fast`; returns its stdout lines, failing on a non-zero exit."""
  return run_script(f"examples/{name}.py", "--fast", *args)


@pytest.mark.slow  # runs the example script: `pytest -m slow`
def test_digits_mlp_trains_and_round_trips_a_checkpoint() -> None:
  lines = run_example("digits_mlp")
  epochs = [line for line in lines if line.startswith("epoch")]
  assert len(epochs) == 2
  accuracy_lines = [line for line in lines if re.fullmatch(r"test accuracy: \d{1,3}\.\d%", line)]
  assert len(accuracy_lines) == 1
  assert lines[-1] == accuracy_lines[0], "the accuracy line must come last"
  accuracy = accuracy_lines[0].split(": ")[1]
  # Two epochs already beat chance (10%) by far.
  assert float(accuracy.rstrip("%")) > 50.0
  assert "checkpoint: 8 params" in "\n".join(lines)
  assert f"reloaded checkpoint: test accuracy {accuracy} (unchanged)" in lines


@pytest.mark.slow  # runs the example script: `pytest -m slow`
def test_sequence_lstm_loss_falls_for_both_cells() -> None:
  lines = run_example("sequence_lstm")
  for cell in ("lstm", "gru"):
    (summary,) = [line for line in lines if line.startswith(f"{cell}: loss ")]
    first, last = (float(v) for v in re.findall(r"\d+\.\d+", summary))
    assert last < first
    (sample,) = [line for line in lines if line.startswith(f"{cell} sample: 'Beautiful is' -> ")]
    generated = ast.literal_eval(sample.split(" -> ", 1)[1])
    assert isinstance(generated, str) and len(generated) == 60


@pytest.mark.slow  # runs the example script: `pytest -m slow`
def test_params_from_another_framework_round_trips_and_resumes() -> None:
  lines = run_example("params_from_another_framework")
  text = "\n".join(lines)
  assert "locked params refuse a new (misspelt) path" in text
  assert "same structure (flags, metadata, locked) True, identical values True" in text
  assert "resumed from the checkpoint: identical losses True" in lines
  assert "frozen projection unchanged by training: True" in lines


def test_params_from_another_framework_imports_only_blox_params() -> None:
  source = (ROOT / "examples" / "params_from_another_framework.py").read_text()
  imported: set[str] = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      imported.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      imported.add(node.module)
  third_party = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
  assert third_party == {"blox.params", "jax", "jax.numpy", "numpy", "optax"}


@pytest.mark.slow  # runs the example script: `pytest -m slow`
def test_sharp_bits_script_prints_the_spec_numbers() -> None:
  lines = run_example("sharp_bits")
  text = "\n".join(lines)
  assert "seeded:        locked=False, 2 params" in lines
  assert "after a call:  locked=False, 4 params" in lines
  assert "after unlocking, the new layer adds its params: 6 params" in lines
  assert "kernel sum in the original params: 0.5145" in lines
  assert "kernel sum in the returned params: 1.0290" in lines
  masks = [line.split(": ", 1)[1] for line in lines if re.match(r"  lane \d: ", line)]
  naive = ["[1, 1, 0, 0, 0, 0, 0, 0]"] * 4
  folded = [
      "[0, 1, 0, 1, 1, 1, 0, 0]",
      "[0, 1, 1, 0, 0, 0, 1, 1]",
      "[0, 1, 0, 0, 1, 1, 1, 0]",
      "[0, 0, 0, 1, 0, 1, 0, 0]",
  ]
  runtime = [
      "[0, 0, 0, 0, 1, 0, 1, 1]",
      "[0, 1, 0, 1, 0, 0, 1, 0]",
      "[0, 0, 0, 1, 0, 0, 1, 0]",
      "[1, 1, 0, 0, 0, 0, 1, 1]",
  ]
  assert masks == naive + folded + folded + runtime
  assert "blox.parallel.per_lane_rng gives the same masks: True" in lines
  assert "value set to 100: [11.0, 12.0, 13.0]  <- stale: still adds 10" in lines
  assert "adder(100): [101.0, 102.0, 103.0]" in lines
  assert "same params, same outputs: True" in lines
  assert "kernel (4, 8) laid out as P(None, 'model') over 8 device(s)" in text
  assert "ERROR" not in text


def spec_notebook() -> Path | None:
  """The spec notebook: $BLOX_SPEC_NOTEBOOK, or shared/ beside the repository."""
  configured = os.environ.get("BLOX_SPEC_NOTEBOOK")
  candidates = [Path(configured)] if configured else []
  candidates.append(ROOT.parent / "shared" / "seed" / "sharp_bits.ipynb")
  return next((path for path in candidates if path.is_file()), None)


def recorded_stdout(cell: dict[str, Any]) -> str | None:
  """The stdout a code cell printed when the notebook was saved, or None."""
  streams = [
      output for output in cell.get("outputs", [])
      if output.get("output_type") == "stream" and output.get("name") == "stdout"
  ]
  if not streams:
    return None
  return "".join("".join(output["text"]) for output in streams)


def test_spec_notebook_cells_reproduce_their_recorded_output() -> None:
  path = spec_notebook()
  if path is None:
    pytest.skip(
        "the spec notebook is absent (expected at ../shared/seed/sharp_bits.ipynb"
        " beside the repository, or at $BLOX_SPEC_NOTEBOOK)"
    )
  notebook = json.loads(path.read_text())
  namespace: dict[str, Any] = {"__name__": "__spec_notebook__"}
  mismatches: list[str] = []
  compared = 0
  for number, cell in enumerate(notebook["cells"]):
    if cell["cell_type"] != "code":
      continue
    source = "".join(cell["source"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      exec(compile(source, f"{path.name}[cell {number}]", "exec"), namespace)
    expected = recorded_stdout(cell)
    if expected is None:
      continue  # no recorded output: the cell only has to run
    compared += 1
    if printed.getvalue() != expected:
      mismatches.append(
          f"cell {number}:\n--- recorded\n{expected}--- printed\n{printed.getvalue()}"
      )
  assert compared > 0
  assert not mismatches, "\n".join(mismatches)
