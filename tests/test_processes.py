"""The process harness (scripts/processes.py) retries a run that only timed out
joining its peers, and says why; other failures are reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.processes import Run, collectives_timed_out, timeout_scale, watch

# A worker that fails like gloo on a loaded machine the first time it runs,
# and succeeds the next (a marker file remembers the first attempt).
_FLAKY = """
import pathlib, sys
marker = pathlib.Path(sys.argv[1]) / ("tried" + sys.argv[2])
if not marker.exists():
  marker.write_text("1")
  print("jax.errors.JaxRuntimeError: UNKNOWN: Gloo context initialization failed:"
        " DEADLINE_EXCEEDED: GetKeyValue() timed out with key: cpu:gloo/0 and duration: 30s")
  sys.exit(1)
print("done")
"""

_BROKEN = "import sys\nprint('ValueError: a real bug')\nsys.exit(1)\n"


def _run(tmp_path: Path, source: str, name: str) -> Run:
  script = tmp_path / f"{name}.py"
  script.write_text(source)
  return Run(name, script, tmp_path, lambda process: [str(tmp_path), str(process)],
             processes=2, devices=1, timeout_s=60.0)


def test_a_run_whose_workers_timed_out_joining_is_retried_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
  run = _run(tmp_path, _FLAKY, "flaky")
  run.start()
  try:
    assert watch([run], run.finished)
  finally:
    run.stop()
  out = capsys.readouterr().out
  assert "flaky run: its workers timed out waiting for each other (a loaded machine);" \
      " retrying (attempt 2 of 3)" in out
  assert run.started_count == 2 and all("done" in run.text(i) for i in range(2))


def test_any_other_failure_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
  run = _run(tmp_path, _BROKEN, "broken")
  run.start()
  try:
    assert not watch([run], run.finished)
  finally:
    run.stop()
  out = capsys.readouterr().out
  assert "FAILED: broken run: a worker failed" in out and "retrying" not in out
  assert run.started_count == 1


def test_the_timeout_scale_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setenv("BLOX_TIMEOUT_SCALE", "2.5")
  assert timeout_scale() == 2.5
  assert Run("r", "x.py", Path("."), [], timeout_s=10.0).timeout_s == 25.0
  monkeypatch.setenv("BLOX_TIMEOUT_SCALE", "slow")
  with pytest.raises(ValueError, match="BLOX_TIMEOUT_SCALE must be a number"):
    timeout_scale()
  assert not collectives_timed_out("ValueError: shapes differ")
