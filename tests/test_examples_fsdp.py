"""examples/fsdp_train.py end to end in its fast mode, as a user runs it.

Two processes train with fully sharded params and optimizer state, one is
killed between two checkpoints, both restart from the last one and must end
exactly where an uninterrupted run ends. The check itself lives in
scripts/fsdp_check.py, its processes in scripts/processes.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts import fsdp_check
from scripts.processes import Run, watch
from tests.scripts import ROOT, run_script

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
# Several processes each: one xdist worker runs them one after another, so
# that they do not starve each other's collectives of CPU.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]


# Explicit axes, the default. `--auto` changes only the mesh's axis types
# (tests/test_explicit_sharding.py compares the two on one process); its
# kill and resume are the same code, and a second run would add over a
# minute to CI.
def test_fsdp_example_resumes_after_a_kill_bit_for_bit() -> None:
  axes = "Explicit"
  lines = run_script("examples/fsdp_train.py", "--fast", timeout=600)
  text = "\n".join(lines)
  assert f"mesh ('data', 'model') = (4, 2), {axes} axes" in lines[0], text
  # Nothing large is replicated: each of the 8 devices holds about an eighth
  # of the state (only the RNG stream and the norm scales' copies are extra).
  (share,) = re.findall(r"on each device \(1/(\d+\.\d)\)", text)
  assert 7.5 < float(share) <= 8.0, text
  assert re.search(r"kernel .* embed,mlp -> -,data,model", text), text
  (killed,) = [line for line in lines if line.startswith("killed process 1 at step ")]
  kill_step, checkpoint = (int(n) for n in re.findall(r"step (\d+)", killed))
  (resumed,) = [line for line in lines if line.startswith("resumed from step ")]
  assert int(re.findall(r"\d+", resumed)[0]) == checkpoint < kill_step, text
  assert any(line.startswith("process 0 ") and "peer" in line for line in lines), text
  assert "final params identical to the uninterrupted run: True" in text, text
  assert "final optimizer state identical to the uninterrupted run: True" in text, text
  assert lines[-1] == "PASSED", text
  assert not any(line.startswith("FAILED") for line in lines), text


def test_fsdp_compare_fails_on_a_single_differing_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
  state: dict[str, Any] = {
      "params/[('w',)]": np.ones(3, np.float32), "opt_state/[0]": np.zeros(2, np.float32)
  }
  np.savez(tmp_path / "a.npz", **state)
  changed = dict(state)
  changed["params/[('w',)]"] = np.nextafter(state["params/[('w',)]"], np.float32(2))
  np.savez(tmp_path / "b.npz", **changed)
  assert fsdp_check.compare(tmp_path / "a.npz", tmp_path / "a.npz") == 0
  assert fsdp_check.compare(tmp_path / "a.npz", tmp_path / "b.npz") == 1
  out = capsys.readouterr().out
  assert "final params identical to the uninterrupted run: False" in out
  assert "final optimizer state identical to the uninterrupted run: True" in out
  assert "FAILED: the resumed run does not reproduce the uninterrupted one" in out


def test_fsdp_run_times_out_and_kills_its_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
  args = ["--role", "worker", "--fast", "--steps", "2", "--checkpoint-every", "1",
          "--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out.npz")]
  run = Run("slow", ROOT / "examples" / "fsdp_train.py", tmp_path, args, timeout_s=1.0)
  run.start()
  try:
    assert not watch([run], run.finished)
  finally:
    run.stop()
  assert "FAILED: slow run: not finished within 1 s" in capsys.readouterr().out
  assert len(run.procs) == 2 and all(proc.returncode is not None for proc in run.procs)
