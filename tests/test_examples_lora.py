"""The LoRA fine-tuning example runs and checks itself."""

from __future__ import annotations

import pytest
import re

from tests.scripts import run_script

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
pytestmark = pytest.mark.slow


def test_lora_example_runs_in_fast_mode() -> None:
  out = "\n".join(run_script("examples/lora_finetune.py", "--fast", timeout=300))
  assert "adapted model starts equal to the base: True" in out
  assert "base weights unchanged (bitwise): True" in out
  assert re.search(r"^lora step +0  loss \d", out, re.MULTILINE)
  found = re.search(r"^fine-tune: loss ([\d.]+) -> ([\d.]+)$", out, re.MULTILINE)
  assert found is not None, out
  assert float(found.group(2)) < float(found.group(1))
  # The summary shows the adapters as the only trainable params.
  adapter_rows = re.findall(r"^  [ab] .* yes ", out, re.MULTILINE)
  assert len(adapter_rows) == 6
  assert not re.search(r"^  (kernel|bias) .* yes ", out, re.MULTILINE)
  assert out.rstrip().endswith("OK")
