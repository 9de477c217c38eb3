"""The pretrained fine-tuning example, run as a user runs it.

`--fast` makes a tiny Llama checkpoint, loads it, fine-tunes it for a few
steps, saves it as a Hugging Face folder and reloads it; with the interop
group installed it also compares `transformers`' logits for that folder.
It then reports int8 and int4 copies of the fine-tuned model and samples
from it. `--lora` and `--qlora` train adapters instead (over int4 kernels
for `--qlora`), save them in PEFT's layout and merge them.
`--model` and `--out` fine-tune a folder of another family made here.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import blox.models as bm
from tests.scripts import ROOT, run_script, user_environment

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
pytestmark = pytest.mark.slow

SCRIPT = "examples/finetune_pretrained.py"


def only(lines: list[str], prefix: str) -> str:
  """The one line that starts with `prefix`."""
  found = [line for line in lines if line.startswith(prefix)]
  assert len(found) == 1, (prefix, lines)
  return found[0]


def numbers(line: str) -> list[float]:
  return [float(value) for value in re.findall(r"\d+\.\d+(?:e[-+]\d+)?", line)]


def check_sample_line(lines: list[str]) -> None:
  """`generate` continued the byte prompt 'def ' (printed as a Python string)."""
  assert re.fullmatch(r"sample: (['\"])def .*\1", only(lines, "sample: ")), lines


def check_transformers_line(lines: list[str]) -> None:
  """The comparison ran within its tolerance, or was skipped naming the install command."""
  line = only(lines, "transformers: ")
  if "not installed" in line:
    assert "uv sync --group interop" in line, line
  else:
    difference, tolerance = numbers(line)[:2]
    assert difference <= tolerance, line


def test_fast_run_fine_tunes_saves_and_reloads_bit_for_bit() -> None:
  lines = run_script(SCRIPT, "--fast")
  assert only(lines, "checkpoint: ").endswith("model.safetensors, config.json")
  assert only(lines, "loaded: ").startswith("loaded: llama, 2 layers of width 32")
  steps = [line for line in lines if line.strip().startswith("step ")]
  assert len(steps) >= 3, lines
  first, last = numbers(only(lines, "loss "))[:2]
  assert last < first - 1.0, lines  # from about ln(256) = 5.5 to well below
  before, after = numbers(only(lines, "held-out loss "))[:2]
  assert after < before, lines
  assert "config.json" in only(lines, "saved: ")
  assert only(lines, "reloaded: ").endswith("bit-identical: True")
  check_transformers_line(lines)
  # int8 per channel, int4 in groups of 32 (the tiny model's widths are 32
  # and 64), rounded to nearest and calibrated (GPTQ).
  for bits, header, most in (("int8", "per channel: ", 0.3), ("int4", "in groups of 32: ", 0.2),
                             ("int4 calibrated", "in groups of 32, GPTQ on 512 training windows: ", 0.2)):
    line = only(lines, f"quantized {bits} {header}")
    agreement = re.search(r"top-1 agreement (\d+\.\d+)%", line)
    ratio = re.search(r"weights (\d+\.\d+)x their float32 bytes", line)
    assert agreement and ratio, line
    assert 0 <= float(agreement.group(1)) <= 100 and 0 < float(ratio.group(1)) < most, line
  check_sample_line(lines)
  assert not any(line.startswith("ERROR") for line in lines), lines


@pytest.mark.parametrize("mode", ["--lora", "--qlora"])
def test_fast_adapters_train_merge_and_save_in_peft_layout(
    mode: str, tmp_path: pathlib.Path
) -> None:
  out = tmp_path / "tuned"
  lines = run_script(SCRIPT, "--fast", mode, "--out", str(out))
  if mode == "--qlora":
    assert only(lines, "quantized: ").startswith("quantized: int4 in groups of 32"), lines
  adapters = re.fullmatch(r"adapters: rank 8 on (.*); trainable ([\d,]+) values \((\d+\.\d)%.*",
                          only(lines, "adapters: "))
  assert adapters, lines
  assert adapters.group(1) == "down, gate, key, out, query, up, value"
  trainable = int(adapters.group(2).replace(",", ""))
  assert 0 < float(adapters.group(3)) < 50, lines
  # The optimizer's moments cover the adapters only (plus its step counts).
  state = re.fullmatch(r"optimizer state: ([\d,]+) values.*", only(lines, "optimizer state: "))
  assert state and 2 * trainable <= int(state.group(1).replace(",", "")) < 2 * trainable + 8, lines
  first, last = numbers(only(lines, "loss "))[:2]
  assert last < first - 1.0, lines
  before, after = numbers(only(lines, "held-out loss "))[:2]
  assert after < before, lines
  difference, tolerance = numbers(only(lines, "merged: "))[:2]
  assert difference <= tolerance, lines
  folder = tmp_path / "tuned-adapter"
  assert str(folder) in only(lines, "saved adapters: "), lines
  config = json.loads((folder / "adapter_config.json").read_text())
  assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16)
  assert (folder / "adapter_model.safetensors").is_file()
  if mode == "--qlora":
    assert only(lines, "float base + adapters: held-out loss "), lines
  assert only(lines, "reloaded: ").endswith("bit-identical: True")
  # The merged model saved is the base architecture: no adapters left in it.
  _, merged = bm.load_pretrained(out)
  assert not any(path[-1].startswith("lora") for path in merged)
  check_transformers_line(lines)
  check_sample_line(lines)
  assert not any(line.startswith("ERROR") for line in lines), lines


def test_model_and_out_fine_tune_a_given_folder(tmp_path: pathlib.Path) -> None:
  # A GPT-2 folder (another family, learned positions, a tied head) with more ids than bytes.
  given, out = tmp_path / "gpt2", tmp_path / "tuned"
  model, params = bm.create({
      "model_type": "gpt2", "vocab_size": 300, "n_embd": 32, "n_head": 4, "n_layer": 1,
      "n_positions": 64})
  bm.save_pretrained(model, params, given)
  lines = run_script(SCRIPT, "--fast", "--model", str(given), "--out", str(out), "--steps", "12")
  assert not any(line.startswith("checkpoint: ") for line in lines), lines
  assert only(lines, "loaded: ").startswith("loaded: gpt2, 1 layer of width 32")
  assert only(lines, "reloaded: ").endswith("bit-identical: True")
  check_transformers_line(lines)
  tuned, tuned_params = bm.load_pretrained(out)
  assert tuned.architecture == model.architecture
  assert list(tuned_params) == list(params)
  # Fine-tuning moved the weights the script saved.
  path = ("model", "lm", "embed", "embedding")
  assert not np.array_equal(np.asarray(tuned_params[path].value), np.asarray(params[path].value))


def test_a_vocabulary_smaller_than_the_bytes_is_an_error(tmp_path: pathlib.Path) -> None:
  model, params = bm.create({
      "model_type": "qwen2", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})
  bm.save_pretrained(model, params, tmp_path)
  result = subprocess.run(
      [sys.executable, SCRIPT, "--fast", "--model", str(tmp_path)], cwd=ROOT,
      env=user_environment(), capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 1, result.stderr
  assert "ERROR: the vocabulary (64) cannot hold the 256 byte ids" in result.stdout
