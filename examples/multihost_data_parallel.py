"""Data-parallel training across two processes, checked against one process.

Multi-host JAX on one machine. Each process of the system runs `train`: the
same model, the same steps, a mesh over the devices of ALL processes, each
process feeding only its own rows of every global batch
(`bx.parallel.shard_batch` builds the global arrays from them). A process
joins the system with `jax.distributed.initialize`, from the variables a
real host sets (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID);
without them it runs alone. CPU collectives go over gloo.

The model is that of examples/data_parallel.py without the model axis: an MLP
with BatchNorm (statistics over the whole global batch) and dropout (one mask
per example, from `bx.parallel.per_lane_rng`), written for one example and
mapped over the batch with `jax.vmap`.

Run from the repository root:

  uv run examples/multihost_data_parallel.py          # 40 steps
  uv run examples/multihost_data_parallel.py --fast   # 10 steps

Run like this, the script checks itself (scripts/multihost_check.py): it
starts two copies of itself as workers on 127.0.0.1 with 4 simulated CPU
devices each, and a third copy alone with 8 devices, and passes (exit
status 0) when both workers end with the same params and those match the
single-process run to float tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 16
CLASSES = 4
BATCH_SIZE = 64
DEVICES = 8


def make_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
  """The global batch of a step: the same in every process."""
  teacher = np.random.default_rng(0)
  w1 = teacher.normal(size=(FEATURES, 32)) / np.sqrt(FEATURES)
  w2 = teacher.normal(size=(32, CLASSES))
  x = np.random.default_rng(1000 + step).normal(size=(BATCH_SIZE, FEATURES)).astype(np.float32)
  y = np.argmax(np.tanh(x @ w1) @ w2, axis=-1).astype(np.int32)
  return x, y


def train(steps: int) -> dict[str, Any]:
  """Trains on this process's rows; the final params (whole copies) and the losses."""
  # jax is imported here, not at the top: the launcher never starts it.
  import jax
  import jax.numpy as jnp
  import optax

  import blox as bx

  class MLP(bx.Module):
    """Linear -> BatchNorm -> relu -> Dropout -> Linear, for a single example."""

    hidden_size: int = bx.setting(kw_only=False, doc="the width of the hidden layer.")
    rng: bx.KeySource = bx.setting(doc="draws the kernels and the dropout masks.")
    rate: float = bx.setting(default=0.1, doc="the dropout rate.")

    def __post_init__(self) -> None:
      self.hidden = bx.Linear(self.graph.child("hidden"), self.hidden_size, rng=self.rng)
      self.norm = bx.BatchNorm(self.graph.child("norm"), momentum=0.9, axis_name="batch")
      self.dropout = bx.Dropout(self.graph.child("dropout"), self.rate, rng=self.rng)
      self.readout = bx.Linear(self.graph.child("readout"), CLASSES, rng=self.rng)

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
  model = MLP(graph.child("mlp"), 32, rng=rng)

  def init() -> bx.Params:
    # Evaluation mode needs no batch axis: one example creates every param.
    return rng.init(model, jnp.zeros(FEATURES), is_training=False, seed=0)

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

  # The mesh is Explicit (as jax.make_mesh makes it): jit finds it here.
  with jax.set_mesh(mesh):
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


def work(steps: int, out: str) -> int:
  """One process: joins the system if the environment names one, trains, writes `out`."""
  import jax

  # jax.config.update and jax.distributed.shutdown have no annotations;
  # calling them through typed names keeps mypy's strict checks on.
  update_config: Callable[[str, Any], None] = jax.config.update
  shutdown: Callable[[], None] = jax.distributed.shutdown
  count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
  if count:
    # Cross-process collectives of the CPU backend go over gloo.
    update_config("jax_cpu_collectives_implementation", "gloo")
    # jax reads JAX_COORDINATOR_ADDRESS itself.
    jax.distributed.initialize(
        num_processes=int(count), process_id=int(index or 0), initialization_timeout=120
    )
    print(f"process {jax.process_index()} of {jax.process_count()}:"
          f" {jax.local_device_count()} local devices, {jax.device_count()} in all", flush=True)
  np.savez(out, **train(steps))
  if count:
    shutdown()
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="10 steps instead of 40")
  parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", default="multihost_final.npz", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  steps = args.steps if args.steps is not None else (10 if args.fast else 40)
  if args.worker:
    return work(steps, args.out)
  # The launcher: the check starts the workers and compares their results.
  root = str(Path(__file__).resolve().parent.parent)
  if root not in sys.path:  # run as a script, Python puts examples/ on the path, not the root
    sys.path.insert(0, root)
  from scripts.multihost_check import check

  return check(__file__, steps)


if __name__ == "__main__":
  sys.exit(main())
