"""Data-parallel training across two processes, checked against one process.

Multi-host JAX on one machine: this script starts two copies of itself as
worker processes on 127.0.0.1, each with 4 simulated CPU devices, joined by
`jax.distributed.initialize` into one system of 8 devices (CPU collectives
over gloo). Both train the same model for the same steps on a mesh over all
8 devices, each process feeding only its half of every global batch
(`bx.parallel.shard_batch` builds the global arrays). A third copy trains the
same steps in a single process with 8 devices.

The model is that of examples/data_parallel.py without the model axis: an MLP
with BatchNorm (statistics over the whole global batch) and dropout (one mask
per example, from `bx.parallel.per_lane_rng`), written for one example and
mapped over the batch with `jax.vmap`.

Run from the repository root:

  uv run examples/multihost_data_parallel.py          # 40 steps
  uv run examples/multihost_data_parallel.py --fast   # 10 steps

It passes (exit status 0) when both workers end with the same params and
those match the single-process run to float tolerance; any mismatch, failure
or timeout exits with status 1. Child processes are always cleaned up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

# Run as a script, Python puts examples/ itself on the path; the shared
# process helpers are imported as `examples._processes` from the root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from examples._processes import free_port, port_was_taken, spawn, stop  # noqa: E402

FEATURES = 16
CLASSES = 4
BATCH_SIZE = 64
PROCESSES = 2
DEVICES = 8
TIMEOUT_S = 240.0
# Two processes reduce gradients in another order than one: allow float noise.
RTOL, ATOL = 1e-4, 1e-5


# --- The launcher: no jax here, only processes and files. ---


# The coordinator's port may be taken between free_port() and its bind.
ATTEMPTS = 3


def launch(steps: int) -> int:
  for attempt in range(1, ATTEMPTS + 1):
    status, port_taken = launch_once(steps, free_port())
    if not port_taken or attempt == ATTEMPTS:
      return status
    print("the coordinator's port was taken meanwhile; retrying with another port")
  return 1


def launch_once(steps: int, port: int) -> tuple[int, bool]:
  """Runs the workers and the reference once: `(exit status, port was taken)`."""
  print(f"starting {PROCESSES} worker processes x {DEVICES // PROCESSES} CPU devices"
        f" (coordinator 127.0.0.1:{port}) and a single-process reference; {steps} steps")
  with tempfile.TemporaryDirectory(prefix="blox_multihost_") as tmp:
    out = Path(tmp)
    runs = {f"worker{i}": ["--role", "worker", "--process-id", str(i), "--port", str(port)]
            for i in range(PROCESSES)}
    runs["reference"] = ["--role", "reference"]
    procs: dict[str, subprocess.Popen[str]] = {}
    logs: dict[str, IO[str]] = {}
    failed = False
    try:
      for name, role_args in runs.items():
        logs[name] = open(out / f"{name}.log", "w")
        devices = DEVICES if name == "reference" else DEVICES // PROCESSES
        procs[name] = spawn(
            __file__, role_args + ["--steps", str(steps), "--out", str(out / f"{name}.npz")],
            devices, logs[name],
        )
      # Poll all of them: when one worker dies, its peer would wait for it
      # until a timeout, so stop at the first failure.
      deadline = time.monotonic() + TIMEOUT_S
      while not failed and any(proc.poll() is None for proc in procs.values()):
        for name, proc in procs.items():
          if proc.poll() not in (None, 0):
            print(f"FAILED: {name} exited with status {proc.returncode}")
            failed = True
        if not failed and time.monotonic() > deadline:
          print(f"FAILED: not finished within {TIMEOUT_S:.0f}s")
          failed = True
        time.sleep(0.2)
      for name, proc in procs.items():
        if not failed and proc.returncode != 0:
          print(f"FAILED: {name} exited with status {proc.returncode}")
          failed = True
    finally:
      for proc in procs.values():
        stop(proc)
      for log in logs.values():
        log.close()
    port_taken = False
    for name in procs:
      text = (out / f"{name}.log").read_text().strip().splitlines()
      port_taken |= failed and any(port_was_taken(line) for line in text)
      shown = text if failed else [line for line in text if line.startswith("step") or "loss" in line]
      for line in shown[-40:]:
        print(f"[{name}] {line}")
    if failed:
      return 1, port_taken
    return compare(out), False


def compare(out: Path) -> int:
  results = {name: dict(np.load(out / f"{name}.npz"))
             for name in [f"worker{i}" for i in range(PROCESSES)] + ["reference"]}
  workers = [results[f"worker{i}"] for i in range(PROCESSES)]
  reference = results["reference"]
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


# --- The training, run by each worker and by the reference. ---


def make_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
  """The global batch of a step: the same in every process."""
  teacher = np.random.default_rng(0)
  w1 = teacher.normal(size=(FEATURES, 32)) / np.sqrt(FEATURES)
  w2 = teacher.normal(size=(32, CLASSES))
  x = np.random.default_rng(1000 + step).normal(size=(BATCH_SIZE, FEATURES)).astype(np.float32)
  y = np.argmax(np.tanh(x @ w1) @ w2, axis=-1).astype(np.int32)
  return x, y


def train(steps: int) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  import optax

  import blox as bx

  class MLP(bx.Module):
    """Linear -> BatchNorm -> relu -> Dropout -> Linear, for a single example."""

    def __init__(self, graph: bx.Graph, hidden: int, rate: float, rng: bx.Rng) -> None:
      super().__init__(graph)
      self.hidden = bx.Linear(graph.child("hidden"), hidden, rng=rng)
      self.norm = bx.BatchNorm(graph.child("norm"), momentum=0.9, axis_name="batch")
      self.dropout = bx.Dropout(graph.child("dropout"), rate, rng=rng)
      self.readout = bx.Linear(graph.child("readout"), CLASSES, rng=rng)

    def __call__(
        self, params: bx.Params, x: jax.Array, is_training: bool = True
    ) -> tuple[jax.Array, bx.Params]:
      h, params = self.hidden(params, x)
      h, params = self.norm(params, h, is_training=is_training)
      h, params = self.dropout(params, jax.nn.relu(h), is_training=is_training)
      return self.readout(params, h)

  assert jax.device_count() == DEVICES, f"expected {DEVICES} devices, got {jax.device_count()}"
  mesh = bx.parallel.make_mesh((DEVICES,), ("data",))
  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  model = MLP(graph.child("mlp"), hidden=32, rate=0.1, rng=rng)

  def init() -> bx.Params:
    params = rng.seed(bx.Params(), seed=0)
    _, params = model(params, jnp.zeros(FEATURES), is_training=False)
    return params.locked()

  per_example = jax.vmap(
      bx.parallel.per_lane_rng(model, "batch"),
      in_axes=(None, 0), out_axes=(0, None), axis_name="batch",
  )

  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    logits, params = per_example(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), params

  optimizer = optax.sgd(0.1, momentum=0.9)

  @jax.jit
  def train_step(
      params: bx.Params, opt_state: Any, x: jax.Array, y: jax.Array
  ) -> tuple[bx.Params, Any, jax.Array]:
    loss, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss

  params = bx.parallel.init_sharded(init, mesh)
  opt_state = jax.jit(optimizer.init)(params.split()[0])
  losses = []
  rows = BATCH_SIZE // jax.process_count()
  start = jax.process_index() * rows
  for step in range(steps):
    x, y = make_batch(step)
    # Each process feeds only its own rows: the mesh lists process 0's devices first.
    batch = bx.parallel.shard_batch((x[start:start + rows], y[start:start + rows]), mesh)
    params, opt_state, loss = train_step(params, opt_state, *batch)
    losses.append(float(loss))
    if step % 5 == 0 or step == steps - 1:
      print(f"step {step:3d}  loss {losses[-1]:.4f}", flush=True)

  # Data-parallel params are replicated: every process holds whole copies.
  result: dict[str, Any] = {"losses": np.asarray(losses)}
  for path, param in params.items():
    local = param.value.addressable_data(0)
    if jnp.issubdtype(local.dtype, jax.dtypes.prng_key):
      local = jax.random.key_data(local)
    result["/".join(path)] = np.asarray(local)
  return result


def run_role(role: str, steps: int, out: str, process_id: int, port: int) -> int:
  import jax

  # jax.config.update and jax.distributed.shutdown have no annotations;
  # calling them through typed names keeps mypy's strict checks on.
  update_config: Callable[[str, Any], None] = jax.config.update
  shutdown: Callable[[], None] = jax.distributed.shutdown
  if role == "worker":
    # Cross-process collectives of the CPU backend go over gloo.
    update_config("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=PROCESSES,
        process_id=process_id, initialization_timeout=120,
    )
    print(f"process {jax.process_index()} of {jax.process_count()}:"
          f" {jax.local_device_count()} local devices, {jax.device_count()} in all", flush=True)
  result = train(steps)
  np.savez(out, **result)
  if role == "worker":
    shutdown()
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="10 steps instead of 40")
  parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--role", choices=["launcher", "worker", "reference"], default="launcher",
                      help=argparse.SUPPRESS)
  parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  steps = args.steps if args.steps is not None else (10 if args.fast else 40)
  if args.role == "launcher":
    return launch(steps)
  return run_role(args.role, steps, args.out, args.process_id, args.port)


if __name__ == "__main__":
  sys.exit(main())
