"""Fully sharded training across two processes: killed mid-run, resumed from a checkpoint.

The model is the transformer of examples/transformer_lm.py, whose params name
their logical axes ('vocab', 'embed', 'heads', 'kv_heads', 'mlp'). Here
`RULES` map them onto a ('data', 'model') mesh: 'embed' over 'data' (FSDP:
every param and its AdamW moments are split over the data-parallel devices
too, and gathered where used) and the rest over 'model' (tensor parallel).
The batch is split over 'data'. Params and optimizer state are created on
their devices (`bx.parallel.init_sharded`) and checkpointed every few steps
with orbax (`CheckpointManager`, `StandardSave`; restored with
`StandardRestore` into `bx.parallel.abstract_params`, nothing allocated).

Run with no arguments from the repository root, this script is a launcher
that starts copies of itself as workers: 2 processes x 4 simulated CPU
devices on 127.0.0.1, joined by `jax.distributed` (gloo collectives), as
examples/multihost_data_parallel.py does. It then

  1. trains the model uninterrupted for all steps;
  2. trains it again from scratch, and kills process 1 (SIGKILL) between two
     checkpoints, once the last one is committed; its peer, left waiting in
     the next step's collectives, is killed too. (Process 1 is told to wait
     after that step, so that the kill lands there however loaded the
     machine is, and not a checkpoint earlier or later.)
  3. starts both processes again: they resume from the last checkpoint and
     finish, repeating the steps the kill lost;
  4. checks that the final params and optimizer state equal those of the
     uninterrupted run bit for bit. The data of a step is seeded by the step
     and the RNG streams live in the params (restored with them), so the
     resumed run computes exactly what the uninterrupted one computed.

  uv run examples/fsdp_train.py          # 30 steps, a checkpoint every 5
  uv run examples/fsdp_train.py --fast   # a tiny model, 10 steps, a checkpoint every 3

It exits with status 1 on any mismatch, failure or timeout, and always
kills its worker processes (their whole process groups). On real hosts
the same script runs as the worker itself, one per host (README.md,
"FSDP across hosts"): `--role worker`, with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID from the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, Python puts examples/ itself on the path; the model and
# the process helpers are imported as `examples.<name>` from the root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from examples._processes import free_port, port_was_taken, spawn, stop  # noqa: E402

# Logical axis -> mesh axis. 'embed' splits every matrix over 'data' (FSDP);
# heads, the MLP and the vocabulary split over 'model' (tensor parallel).
RULES = (
    ("batch", "data"),
    ("embed", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
)
MODEL_PARALLEL = 2
PROCESSES = 2
LOCAL_DEVICES = 4
ATTEMPTS = 3  # the coordinator's port may be taken between free_port() and its bind
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


# --- The launcher: no jax here, only processes and files. ---


class Pair:
  """The worker processes of one run, their logs in `folder`.

  `stall`: process 1 waits after that step, to be killed there. `cache`: a
  folder for jax's compilation cache, shared with a later run (process 0 of
  a restart then loads its programs instead of compiling them; jax writes
  the cache from process 0 only).
  """

  def __init__(
      self, name: str, folder: Path, worker_args: list[str], plan: Plan,
      stall: int | None = None, cache: Path | None = None,
  ) -> None:
    self.name = name
    self.folder = folder
    self.worker_args = worker_args
    self.plan = plan
    self.stall = stall
    self.cache = cache
    self.procs: list[subprocess.Popen[str]] = []
    self.attempts = 0
    self.started = 0.0

  def log(self, process: int) -> Path:
    return self.folder / f"{self.name}{process}.log"

  def text(self, process: int) -> str:
    path = self.log(process)
    return path.read_text() if path.exists() else ""

  def start(self) -> None:
    self.stop()
    self.procs, self.attempts, self.started = [], self.attempts + 1, time.monotonic()
    port = free_port()
    for process in range(PROCESSES):
      args = ["--role", "worker", *self.worker_args]
      if process == 1 and self.stall is not None:
        args += ["--stall-after", str(self.stall)]
      # The variables a real host would set (README.md, "FSDP across hosts").
      env = {
          "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
          "JAX_NUM_PROCESSES": str(PROCESSES),
          "JAX_PROCESS_ID": str(process),
      }
      if self.cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(self.cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
      with open(self.log(process), "w") as log:
        self.procs.append(spawn(__file__, args, LOCAL_DEVICES, log, env))

  def finished(self) -> bool:
    return bool(self.procs) and all(proc.poll() == 0 for proc in self.procs)

  def trouble(self) -> str | None:
    """Why this run has failed (None while it runs or once it is done)."""
    if any(proc.poll() not in (None, 0) for proc in self.procs):
      return "a worker failed"
    if self.stall is not None and self.finished():
      return "the workers finished before the step where process 1 was to be killed"
    if not self.finished() and time.monotonic() > self.started + self.plan.timeout_s:
      return f"not finished within {self.plan.timeout_s:.0f} s"
    return None

  def stop(self) -> None:
    for proc in self.procs:
      stop(proc)

  def report_failure(self, why: str) -> None:
    codes = ", ".join(f"process {i}: {proc.returncode}" for i, proc in enumerate(self.procs))
    print(f"FAILED: {self.name} run: {why} (exit status {codes})")
    for process in range(PROCESSES):
      for line in self.text(process).strip().splitlines()[-40:]:
        print(f"[{self.name} {process}] {line}")

  def steps(self) -> list[tuple[int, float]]:
    """`(step, loss)` from process 0's `step N loss L` lines."""
    found = []
    for line in self.text(0).splitlines():
      parts = line.split()
      if len(parts) == 4 and parts[0] == "step" and parts[2] == "loss":
        found.append((int(parts[1]), float(parts[3])))
    return found


def watch(pairs: list[Pair], until: Callable[[], bool]) -> bool:
  """Polls the runs until `until()` holds: True, or False after reporting a failure.

  A run whose coordinator port was taken (between `free_port` and its bind)
  starts again on another port, up to `ATTEMPTS` times.
  """
  while not until():
    for pair in pairs:
      why = pair.trouble()
      if why is None:
        continue
      pair.stop()
      taken = any(port_was_taken(pair.text(process)) for process in range(PROCESSES))
      if why == "a worker failed" and taken and pair.attempts < ATTEMPTS:
        print(f"{pair.name} run: the coordinator's port was taken meanwhile; retrying")
        pair.start()
        continue
      pair.report_failure(why)
      return False
    time.sleep(0.2)
  return True


def committed_steps(checkpoints: Path) -> list[int]:
  """The steps orbax has committed: a step's folder gets its plain name only when complete."""
  if not checkpoints.exists():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir() if p.is_dir() and p.name.isdigit())


def launch(fast: bool) -> int:
  plan = FAST if fast else FULL
  print(
      f"FSDP + tensor-parallel training: {PROCESSES} processes x {LOCAL_DEVICES} CPU devices,"
      f" mesh ('data', 'model') = ({PROCESSES * LOCAL_DEVICES // MODEL_PARALLEL},"
      f" {MODEL_PARALLEL}); {plan.steps} steps, a checkpoint every {plan.checkpoint_every}"
  )
  common = ["--steps", str(plan.steps), "--checkpoint-every", str(plan.checkpoint_every)]
  common += ["--fast"] if fast else []
  pairs: list[Pair] = []
  with tempfile.TemporaryDirectory(prefix="blox_fsdp_") as tmp:
    try:
      return run_all(Path(tmp), plan, common, pairs)
    finally:
      for pair in pairs:
        pair.stop()


def run_all(folder: Path, plan: Plan, common: list[str], pairs: list[Pair]) -> int:
  """The three runs; every pair started is appended to `pairs` (the caller stops them)."""
  start = time.monotonic()
  checkpoints, cache = folder / "checkpoints", folder / "compilation_cache"

  def worker_args(name: str, checkpoint_dir: Path) -> list[str]:
    return common + ["--checkpoint-dir", str(checkpoint_dir), "--out", str(folder / f"{name}.npz")]

  # 1 and 2 side by side: the uninterrupted run, and the run to be killed
  # between two checkpoints once the earlier one is committed.
  reference_args = worker_args("uninterrupted", folder / "reference") + ["--summary"]
  reference = Pair("uninterrupted", folder, reference_args, plan)
  killed_args = worker_args("killed", checkpoints)
  killed = Pair("killed", folder, killed_args, plan, stall=plan.kill_after, cache=cache)
  pairs += [reference, killed]
  for pair in (reference, killed):
    pair.start()
  before_kill = plan.kill_after - plan.kill_after % plan.checkpoint_every

  table_shown = False

  def show_table() -> None:
    """The uninterrupted run's params table, once its process 0 has printed it."""
    nonlocal table_shown
    lines = reference.text(0).splitlines()
    if table_shown or not any(line.startswith("params and optimizer state:") for line in lines):
      return
    table_shown = True
    for line in lines:
      # gloo reports each connection it makes; step lines come later.
      if not line.startswith(("step ", "[Gloo]")):
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
  trace = killed.steps()
  done = trace[-1][0] if trace else 0
  if survivor.poll() is None:
    stop(survivor)
    print(f"process 0 (last step done: {done}) was left waiting in step {done + 1}'s"
          f" collectives for its dead peer; killed it after {SURVIVOR_GRACE_S:.0f} s")
  else:
    print(f"process 0 (last step done: {done}) noticed its dead peer and exited with"
          f" status {survivor.returncode}")

  # 3. Both processes start again on the same checkpoints and finish.
  resumed = Pair("resumed", folder, worker_args("resumed", checkpoints), plan, cache=cache)
  pairs.append(resumed)
  resumed.start()
  if not watch([reference, resumed], lambda: reference.finished() and resumed.finished()):
    return 1
  show_table()
  trace = reference.steps()
  print(f"uninterrupted: {len(trace)} steps, loss {trace[0][1]:.4f} -> {trace[-1][1]:.4f}")
  starts = [int(line.split()[-1]) for line in resumed.text(0).splitlines()
            if line.startswith("resumed from step ")]
  trace = resumed.steps()
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


def compare(expected_file: Path, actual_file: Path) -> int:
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


# --- The worker: one process of the system, on a local or a real host. ---


def work(args: argparse.Namespace) -> int:
  import jax
  import jax.numpy as jnp
  import optax
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils

  import blox as bx
  from blox.params import is_prng_key
  from examples import transformer_lm as lm

  # jax.config.update and jax.distributed.shutdown have no annotations;
  # calling them through typed names keeps mypy's strict checks on.
  update_config: Callable[[str, Any], None] = jax.config.update
  shutdown: Callable[[], None] = jax.distributed.shutdown
  # Cross-process collectives of the CPU backend go over gloo.
  update_config("jax_cpu_collectives_implementation", "gloo")
  count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
  # jax reads JAX_COORDINATOR_ADDRESS itself; what is unset it detects from
  # the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU).
  jax.distributed.initialize(
      num_processes=int(count) if count else None, process_id=int(index) if index else None,
      initialization_timeout=120,
  )
  is_first = jax.process_index() == 0
  print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()}"
        f" local devices, {jax.device_count()} in all", flush=True)
  mesh = bx.parallel.make_mesh(
      (jax.device_count() // MODEL_PARALLEL, MODEL_PARALLEL), ("data", "model")
  )

  text = lm.standard_library_text()
  chars = sorted(set(text))
  index_of = {c: i for i, c in enumerate(chars)}
  data = np.array([index_of[c] for c in text], np.int32)
  # The vocabulary is split over 'model': round it up (unused ids never occur).
  vocab_size = -(-len(chars) // 8) * 8
  base = lm.FAST if args.fast else lm.FULL
  sizes = dataclasses.replace(base, steps=args.steps, warmup_steps=max(1, args.steps // 5))
  model, init = lm.build(sizes, vocab_size)
  optimizer = lm.make_optimizer(sizes)

  def init_state() -> tuple[bx.Params, optax.OptState]:
    params = init()
    return params, optimizer.init(params.split()[0])

  # The state's layout, nothing allocated: the restore target, and the
  # shardings the train step keeps (AdamW's moments are Params like the
  # params, so they are split by the same metadata and rules).
  target = bx.parallel.abstract_params(init_state, mesh, rules=RULES)
  state_shardings = jax.tree.map(lambda leaf: leaf.sharding, target)
  lm_step = lm.make_train_step(model, optimizer)

  def step_fn(state: Any, ids: jax.Array, targets: jax.Array) -> tuple[Any, jax.Array]:
    params, opt_state, loss = lm_step(*state, ids, targets)
    return (params, opt_state), loss

  # The state keeps its layout from step to step; the loss goes where XLA puts it.
  train_step = jax.jit(step_fn, out_shardings=(state_shardings, None), donate_argnums=0)

  # orbax wants an absolute path; a URL (gs://...) is passed on as it is.
  directory = args.checkpoint_dir
  manager = ocp.CheckpointManager(
      directory if "://" in directory else os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True),
  )
  start = manager.latest_step()
  if start is None:
    start = 0
    state = bx.parallel.init_sharded(init_state, mesh, rules=RULES)
  else:
    state = manager.restore(start, args=ocp.args.StandardRestore(target))
    print(f"resumed from step {start}", flush=True)
  if args.summary and is_first:
    params = state[0]
    print(bx.summary(params, shardings=bx.parallel.param_shardings(params, mesh, RULES), width=108))
    leaves = jax.tree.leaves(state)
    whole = sum(leaf.size for leaf in leaves)
    here = sum(leaf.addressable_shards[0].data.size for leaf in leaves)
    print(f"params and optimizer state: {whole:,} values, {here:,} on each device"
          f" (1/{whole / here:.1f})")

  rows = sizes.batch_size // jax.process_count()
  first = jax.process_index() * rows
  for step in range(start + 1, args.steps + 1):
    # A step's global batch is seeded by the step: a resumed run sees the same data.
    sampler = np.random.default_rng(step)
    starts = sampler.integers(0, len(data) - sizes.sequence_length - 1, sizes.batch_size)
    mine = starts[first : first + rows]
    windows = np.stack([data[s : s + sizes.sequence_length + 1] for s in mine])
    ids, targets = bx.parallel.shard_batch((windows[:, :-1], windows[:, 1:]), mesh)
    state, loss = train_step(state, ids, targets)
    print(f"step {step} loss {float(loss):.4f}", flush=True)
    if step % args.checkpoint_every == 0 or step == args.steps:
      # Async: returns once the arrays are copied off the devices.
      manager.save(step, args=ocp.args.StandardSave(state))
    if step == args.stall_after:
      print(f"waiting to be killed after step {step}", flush=True)
      while True:
        time.sleep(60)
  manager.wait_until_finished()
  manager.close()

  # Every process takes part in gathering the sharded arrays; process 0 writes them.
  def numeric(leaf: jax.Array) -> jax.Array:
    return jax.random.key_data(leaf) if is_prng_key(leaf) else leaf

  gathered = multihost_utils.process_allgather(jax.tree.map(numeric, state), tiled=True)
  if is_first:
    # Named like 'params/[('lm', 'rng', 'seed')]' and 'opt_state/[1][0].mu[...]'.
    named: dict[str, Any] = {
        ("params/" if path[0].idx == 0 else "opt_state/") + jax.tree_util.keystr(path[1:]):
            np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(gathered)[0]
    }
    np.savez(args.out, **named)
  shutdown()
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a tiny model, 10 steps")
  parser.add_argument(
      "--role", choices=["launcher", "worker"], default="launcher",
      help="launcher (default): run the whole check on this machine; worker: one process"
      " of the system, e.g. one per host (README.md, 'FSDP across hosts')",
  )
  parser.add_argument("--steps", type=int, default=FULL.steps, help="worker: steps to train")
  parser.add_argument("--checkpoint-every", type=int, default=FULL.checkpoint_every,
                      help="worker: steps between checkpoints")
  parser.add_argument("--checkpoint-dir", default="fsdp_checkpoints",
                      help="worker: orbax's folder, shared by all processes; a run resumes from"
                      " its latest checkpoint")
  parser.add_argument("--out", default="fsdp_final.npz",
                      help="worker: where process 0 writes the final params and optimizer state")
  parser.add_argument("--summary", action="store_true", help="worker: print the params' table")
  parser.add_argument("--stall-after", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.role == "launcher":
    return launch(args.fast)
  return work(args)


if __name__ == "__main__":
  sys.exit(main())
