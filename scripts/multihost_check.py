"""The end-to-end check of examples/multihost_data_parallel.py: two processes against one.

`uv run examples/multihost_data_parallel.py` (no `--worker`) calls `check`
here, which starts, side by side (scripts/processes.py):

- two copies of the example as `jax.distributed` workers on 127.0.0.1,
  4 simulated CPU devices each, one system of 8 devices;
- a third copy alone with 8 devices: the single-process reference.

All three train the same steps and write their final params and losses
(`--out`). The check passes (returns 0) when both workers hold identical
params and those match the reference to float tolerance (two processes
reduce gradients in another order than one); any mismatch, failure or
timeout returns 1. The workers are always stopped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from scripts.processes import Run, finish

__all__ = ["check", "compare"]

PROCESSES = 2
DEVICES = 8
TIMEOUT_S = 240.0
# Two processes reduce gradients in another order than one: allow float noise.
RTOL, ATOL = 1e-4, 1e-5


def check(script: str | Path, steps: int) -> int:
  """Runs the workers and the reference of `script` (the example); the exit status."""
  print(f"starting {PROCESSES} worker processes x {DEVICES // PROCESSES} CPU devices"
        f" and a single-process reference; {steps} steps")
  with tempfile.TemporaryDirectory(prefix="blox_multihost_") as tmp:
    folder = Path(tmp)

    def args(label: str) -> list[str]:
      return ["--worker", "--steps", str(steps), "--out", str(folder / f"{label}.npz")]

    workers = Run("worker", script, folder, lambda i: args(f"worker{i}"),
                  processes=PROCESSES, devices=DEVICES // PROCESSES, timeout_s=TIMEOUT_S)
    reference = Run("reference", script, folder, args("reference"),
                    processes=1, devices=DEVICES, timeout_s=TIMEOUT_S)
    if not finish([workers, reference]):
      return 1
    for run in (workers, reference):
      for i in range(run.processes):
        for line in run.text(i).splitlines():
          if line.startswith("step") or "loss" in line:
            print(f"[{run.label(i)}] {line}")
    return compare([folder / f"worker{i}.npz" for i in range(PROCESSES)],
                   folder / "reference.npz")


def compare(worker_files: list[Path], reference_file: Path) -> int:
  """0 when the workers' results are identical and match the reference's, else 1."""
  workers = [dict(np.load(path)) for path in worker_files]
  reference = dict(np.load(reference_file))
  ok = True
  for key in sorted(reference):
    if any(key not in w for w in workers):
      print(f"FAILED: {key} is missing from a worker's results")
      return 1
    between = max(float(np.max(np.abs(w[key] - workers[0][key]), initial=0.0)) for w in workers)
    if between != 0.0:
      print(f"FAILED: the workers disagree on {key} (max difference {between:.3g})")
      ok = False
    gap = float(np.max(np.abs(workers[0][key] - reference[key]), initial=0.0))
    if not np.allclose(workers[0][key], reference[key], rtol=RTOL, atol=ATOL):
      print(f"FAILED: {key} differs from the single-process run (max difference {gap:.3g})")
      ok = False
    elif key != "losses":
      print(f"{key}: workers identical, max difference to single process {gap:.2g}")
  if not ok:
    return 1
  print(f"final loss: {float(reference['losses'][-1]):.4f}"
        f" (first {float(reference['losses'][0]):.4f})")
  print("PASSED: both processes hold identical params, equal to the single-process run")
  return 0
