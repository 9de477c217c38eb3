"""The transformer language model example, run as a user runs it.

The example trains a tiny model for a few steps (`--fast`), saves and reloads
its params, checks cached decoding against the full forward pass and
samples. Its benchmark's rows are checked by tests/test_benchmarks_smoke.py.
"""

from __future__ import annotations

import pytest
import ast
import re

from tests.scripts import run_script

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
pytestmark = pytest.mark.slow


def test_transformer_lm_trains_reloads_decodes_and_samples() -> None:
  lines = run_script("examples/transformer_lm.py", "--fast")
  (model,) = [line for line in lines if line.startswith("model: ")]
  assert "initialised in" in model
  steps = [line for line in lines if line.strip().startswith("step ")]
  assert len(steps) >= 3, lines
  (summary,) = [line for line in lines if line.startswith("loss ")]
  first, last = (float(v) for v in re.findall(r"\d+\.\d+", summary)[:2])
  assert last < first, summary
  (checkpoint,) = [line for line in lines if line.startswith("checkpoint: ")]
  assert checkpoint.endswith("identical: True"), checkpoint
  (check,) = [line for line in lines if line.startswith("cached decoding vs full forward pass")]
  difference, tolerance = (float(v) for v in re.findall(r"\d+\.\d+", check)[:2])
  assert difference <= tolerance, check
  (sample,) = [line for line in lines if line.startswith("sample: ")]
  text = ast.literal_eval(sample.split(": ", 1)[1])
  prompt = "    def __init__(self"
  assert isinstance(text, str) and text.startswith(prompt) and len(text) == len(prompt) + 120
  assert not any(line.startswith("ERROR") for line in lines), lines
