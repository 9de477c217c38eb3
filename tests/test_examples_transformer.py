"""The transformer language model example and its benchmark, run as a user runs them.

The example trains a tiny model for a few steps (`--fast`), saves and reloads
its params, checks cached decoding against the full forward pass and
samples; the benchmark runs every row once at tiny sizes (`--smoke`).
"""

from __future__ import annotations

import ast
import re

from tests.scripts import run_script


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


def test_transformer_benchmark_smoke_prints_every_row() -> None:
  lines = run_script("benchmarks/transformer.py", "--smoke")
  assert any(line.startswith("machine: ") and "jax " in line for line in lines)
  table = [line for line in lines if line.startswith("|")]
  assert table[0].split("|")[1].strip() == "benchmark"
  names = [line.split("|")[1].strip() for line in table[2:]]
  for prefix in (
      "compile train step, Repeat, 2 layers (vs 1)",
      "compile train step, unrolled, 2 layers (vs 1)",
      "compile train step, 2 layers, Repeat vs unrolled",
      "transformer train step, Repeat",
      "transformer train step, unrolled",
      "cached decoding per token",
      "train step temp memory, remat_policy='full' vs None",
      "init, jax.jit(init)() vs eager init()",
  ):
    assert any(name.startswith(prefix) for name in names), (prefix, names)
  ratios = [line.split("|")[4].strip() for line in table[2:]]
  assert all(r.endswith("x") and float(r[:-1]) > 0 for r in ratios), ratios
