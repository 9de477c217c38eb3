"""The end-to-end check of examples/fsdp_train.py: kill a run, resume it, compare bit for bit.

`uv run examples/fsdp_train.py` (no `--role`) calls `check` here, which
starts copies of the example as workers, 2 processes x 4 simulated CPU
devices on 127.0.0.1 (scripts/processes.py), and

  1. trains the model uninterrupted for all steps;
  2. trains it again from scratch, and kills process 1 (SIGKILL) between two
     checkpoints, once the last one is committed; its peer, left waiting in
     the next step's collectives, is killed too. (Process 1 is told to wait
     after that step, `--stall-after`, so that the kill lands there however
     loaded the machine is, and not a checkpoint earlier or later.)
  3. starts both processes again: they resume from the last checkpoint and
     finish, repeating the steps the kill lost;
  4. checks that the final params and optimizer state equal those of the
     uninterrupted run bit for bit (`compare`).

It returns 1 on any mismatch, failure or timeout and always kills the
workers (their whole process groups). It runs the workers, never imports
them: this module needs no jax.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from scripts.processes import Run, stop, watch

__all__ = ["FAST", "FULL", "Plan", "check", "committed_steps", "compare"]

PROCESSES = 2
LOCAL_DEVICES = 4
MODEL_PARALLEL = 2  # the example's mesh is (devices / 2, 2)
# How long the killed process's peer may take to notice before it is killed too.
SURVIVOR_GRACE_S = 3.0


@dataclasses.dataclass(frozen=True)
class Plan:
  """How long to train, how often to checkpoint and after which step to kill."""

  steps: int
  checkpoint_every: int
  kill_after: int  # between two checkpoints, so the resumed run repeats steps
  timeout_s: float  # for each of the three runs


# Generous: a loaded 2-core machine runs the fast plan in about 2 minutes.
FULL = Plan(steps=30, checkpoint_every=5, kill_after=17, timeout_s=480.0)
FAST = Plan(steps=10, checkpoint_every=3, kill_after=7, timeout_s=240.0)


def check(script: str | Path, fast: bool, auto: bool = False) -> int:
  """Runs the three runs of `script` (the example) and compares; the exit status.

  `auto`: the workers' mesh has Auto axes instead of Explicit ones.
  """
  plan = FAST if fast else FULL
  print(
      f"FSDP + tensor-parallel training: {PROCESSES} processes x {LOCAL_DEVICES} CPU devices,"
      f" mesh ('data', 'model') = ({PROCESSES * LOCAL_DEVICES // MODEL_PARALLEL},"
      f" {MODEL_PARALLEL}), {'Auto' if auto else 'Explicit'} axes; {plan.steps} steps,"
      f" a checkpoint every {plan.checkpoint_every}"
  )
  common = ["--role", "worker", "--steps", str(plan.steps),
            "--checkpoint-every", str(plan.checkpoint_every), *(["--fast"] if fast else []),
            *(["--auto"] if auto else [])]
  runs: list[Run] = []
  with tempfile.TemporaryDirectory(prefix="blox_fsdp_") as tmp:
    try:
      return _three_runs(Path(tmp), Path(script), plan, common, runs)
    finally:
      for run in runs:
        run.stop()


def _three_runs(folder: Path, script: Path, plan: Plan, common: list[str], runs: list[Run]) -> int:
  """The three runs; every run started is appended to `runs` (the caller stops them)."""
  start = time.monotonic()
  checkpoints = folder / "checkpoints"
  # jax's compilation cache, shared by the killed and the resumed run:
  # process 0 of the restart loads its programs instead of compiling them.
  cache = {"JAX_COMPILATION_CACHE_DIR": str(folder / "compilation_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

  def make(
      name: str, checkpoint_dir: Path, *extra: str, stall: bool = False, cached: bool = False
  ) -> Run:
    """Starts a run; with `stall`, process 1 waits after `plan.kill_after` to be killed."""
    args = [*common, "--checkpoint-dir", str(checkpoint_dir),
            "--out", str(folder / f"{name}.npz"), *extra]
    waits = ["--stall-after", str(plan.kill_after)] if stall else []
    run = Run(
        name, script, folder, lambda process: args + (waits if process == 1 else []),
        processes=PROCESSES, devices=LOCAL_DEVICES, timeout_s=plan.timeout_s,
        env=cache if cached else None, killed_later=stall,
    )
    runs.append(run)
    run.start()
    return run

  # 1 and 2 side by side: the uninterrupted run, and the run to be killed
  # between two checkpoints once the earlier one is committed.
  reference = make("uninterrupted", folder / "reference", "--summary")
  killed = make("killed", checkpoints, stall=True, cached=True)
  before_kill = plan.kill_after - plan.kill_after % plan.checkpoint_every
  shown = [False]

  def show_table() -> None:
    """The uninterrupted run's params table, once its process 0 has printed it."""
    lines = reference.text(0).splitlines()
    if shown[0] or not any(line.startswith("params and optimizer state:") for line in lines):
      return
    shown[0] = True
    for line in lines:
      if not line.startswith(("step ", "[Gloo]")):  # gloo reports each connection it makes
        print(f"  {line}")

  def stalled() -> bool:
    show_table()
    waiting = f"waiting to be killed after step {plan.kill_after}" in killed.text(1)
    return waiting and before_kill in committed_steps(checkpoints)

  if not watch([reference, killed], stalled):
    return 1
  stop(killed.procs[1])
  last = max(committed_steps(checkpoints))
  print(f"killed process 1 at step {plan.kill_after} (last checkpoint: step {last})")
  survivor = killed.procs[0]
  deadline = time.monotonic() + SURVIVOR_GRACE_S
  while survivor.poll() is None and time.monotonic() < deadline:
    time.sleep(0.2)
  trace = steps(killed)
  done = trace[-1][0] if trace else 0
  if survivor.poll() is None:
    stop(survivor)
    print(f"process 0 (last step done: {done}) was left waiting in step {done + 1}'s"
          f" collectives for its dead peer; killed it after {SURVIVOR_GRACE_S:.0f} s")
  else:
    print(f"process 0 (last step done: {done}) noticed its dead peer and exited with"
          f" status {survivor.returncode}")

  # 3. Both processes start again on the same checkpoints and finish.
  resumed = make("resumed", checkpoints, cached=True)
  if not watch([reference, resumed], lambda: reference.finished() and resumed.finished()):
    return 1
  show_table()
  trace = steps(reference)
  print(f"uninterrupted: {len(trace)} steps, loss {trace[0][1]:.4f} -> {trace[-1][1]:.4f}")
  starts = [int(line.split()[-1]) for line in resumed.text(0).splitlines()
            if line.startswith("resumed from step ")]
  trace = steps(resumed)
  if starts != [last] or not trace or trace[0][0] != last + 1:
    print(f"FAILED: the restarted run should resume after step {last}; it resumed from"
          f" {starts or 'scratch'} and trained steps {[step for step, _ in trace]}")
    return 1
  print(
      f"resumed from step {last}: steps {last + 1} to {trace[-1][0]} ({len(trace)} steps,"
      f" {plan.kill_after - last} of them again), loss {trace[-1][1]:.4f}"
  )
  print(f"all three runs: {time.monotonic() - start:.1f} s")
  # 4. Bit for bit.
  return compare(folder / "uninterrupted.npz", folder / "resumed.npz")


def steps(run: Run) -> list[tuple[int, float]]:
  """`(step, loss)` from process 0's `step N loss L` lines."""
  found = []
  for line in run.text(0).splitlines():
    parts = line.split()
    if len(parts) == 4 and parts[0] == "step" and parts[2] == "loss":
      found.append((int(parts[1]), float(parts[3])))
  return found


def committed_steps(checkpoints: Path) -> list[int]:
  """The steps orbax has committed: a step's folder gets its plain name only when complete."""
  if not checkpoints.exists():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir() if p.is_dir() and p.name.isdigit())


def compare(expected_file: Path, actual_file: Path) -> int:
  """0 when the two final states (`.npz`, written by the workers) are equal bit for bit, else 1."""
  expected, actual = dict(np.load(expected_file)), dict(np.load(actual_file))
  if sorted(expected) != sorted(actual):
    print(f"FAILED: the final states hold other arrays: {sorted(set(expected) ^ set(actual))}")
    return 1
  results = {}
  for part in ("params", "opt_state"):
    names = [name for name in expected if name.startswith(part + "/")]
    differ = [
        name for name in names
        if expected[name].dtype != actual[name].dtype or expected[name].shape != actual[name].shape
        or expected[name].tobytes() != actual[name].tobytes()
    ]
    for name in differ:
      difference = expected[name].astype(np.float64) - actual[name].astype(np.float64)
      gap = np.max(np.abs(difference), initial=0.0)
      print(f"  {name}: max difference {gap:.3g}")
    count = sum(expected[name].size for name in names)
    label = "final params" if part == "params" else "final optimizer state"
    print(
        f"{label} identical to the uninterrupted run: {not differ}"
        f" ({len(names)} arrays, {count:,} values, compared bit for bit)"
    )
    results[part] = not differ
  if not all(results.values()):
    print("FAILED: the resumed run does not reproduce the uninterrupted one")
    return 1
  print("PASSED")
  return 0
