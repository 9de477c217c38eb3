"""One process of the multi-host orbax checkpoint test (tests/test_orbax_multihost.py).

Run by that test, never by hand: the launcher sets XLA_FLAGS (simulated CPU
devices) and JAX_PLATFORMS before this script imports jax. Two roles:

- `save`: trains a small sharded model two AdamW steps on a `('data',
  'model')` mesh, saves the whole train state `(params, opt_state, step)` with
  an asynchronous orbax `CheckpointManager`, and, while the save runs,
  process 0 writes the gathered global values to `expected.npz`.
- `restore`: restores that checkpoint onto one or more meshes, with targets
  from `blox.parallel.abstract_params`, and checks every local shard of every
  leaf against `expected.npz`, bit for bit, and the shardings against the
  targets'.

Started by scripts/processes.py: when it sets JAX_NUM_PROCESSES (and the
coordinator's address and this process's id), the process joins
`jax.distributed.initialize` on 127.0.0.1 (CPU collectives over gloo);
otherwise it runs alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FEATURES, HIDDEN, BATCH_SIZE, STEPS = 16, 32, 8, 2
# Logical axis names in the metadata; the rules map them onto the mesh.
RULES = (("embed", "data"), ("mlp", "model"))


def state_functions() -> tuple[Callable[[], Any], Callable[..., Any]]:
  """`(init_state, train_step)`: the same model and optimizer in every role."""
  import jax
  import jax.numpy as jnp
  import optax

  import blox as bx
  from blox.params import SHARDING

  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  hidden = bx.Linear(graph.child("hidden"), HIDDEN, rng=rng,
                     kernel_metadata={SHARDING: ("embed", "mlp")}, bias_metadata={SHARDING: ("mlp",)})
  out = bx.Linear(graph.child("out"), FEATURES, rng=rng,
                  kernel_metadata={SHARDING: ("mlp", "embed")}, bias_metadata={SHARDING: ("embed",)})
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=1, decay_steps=10)
  optimizer = optax.adamw(schedule, weight_decay=1e-2)

  def model(params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    h, params = hidden(params, x)
    return out(params, jax.nn.relu(h))

  def init_state() -> tuple[bx.Params, Any, jax.Array]:
    params = rng.init(model, jnp.zeros((1, FEATURES)), seed=7)
    return params, optimizer.init(params.split()[0]), jnp.zeros((), jnp.int32)

  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    prediction, params = model(params, x)
    return jnp.mean((prediction - y) ** 2), params

  def train_step(state: Any, x: jax.Array, y: jax.Array) -> Any:
    params, opt_state, step = state
    _, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, step + 1

  return init_state, train_step


def parse_mesh(text: str) -> tuple[int, int]:
  data, model = (int(n) for n in text.split("x"))
  return data, model


def leaves(tree: Any) -> dict[str, Any]:
  """Every leaf of `tree` under its key path, e.g. `[0][('net', 'out', 'bias')]`."""
  import jax

  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def raw(leaf: Any) -> Any:
  """The leaf's array; a typed PRNG key as its uint32 key data."""
  import jax

  from blox.params import is_prng_key

  return jax.random.key_data(leaf) if is_prng_key(leaf) else leaf


def save(directory: Path, mesh_shape: tuple[int, int]) -> None:
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils

  import blox as bx

  init_state, train_step = state_functions()
  mesh = bx.parallel.make_mesh(mesh_shape, ("data", "model"))
  target = bx.parallel.abstract_params(init_state, mesh, rules=RULES)
  shardings = jax.tree.map(lambda leaf: leaf.sharding, target)
  state = bx.parallel.init_sharded(init_state, mesh, rules=RULES)
  step_fn = jax.jit(train_step, out_shardings=shardings)
  data = np.random.default_rng(0)
  rows = BATCH_SIZE // jax.process_count()
  start = jax.process_index() * rows
  for _ in range(STEPS):
    x = data.normal(size=(BATCH_SIZE, FEATURES)).astype(np.float32)
    batch = bx.parallel.shard_batch((x[start:start + rows], np.sin(x[start:start + rows])), mesh)
    state = step_fn(state, *batch)
  kernel = state[0][("net", "hidden", "kernel")].value
  if jax.process_count() > 1:
    assert not kernel.is_fully_addressable, "the hidden kernel should be split across processes"
    # bx.save writes from one process: it refuses such arrays and points to orbax.
    try:
      bx.save(directory / f"single-{jax.process_index()}.blox", state)
    except ValueError as error:
      assert "orbax-checkpoint" in str(error) and "Cannot save param ('net', " in str(error), error
    else:
      raise AssertionError("bx.save accepted an array split across processes")

  manager = ocp.CheckpointManager(directory / "checkpoints")
  manager.save(STEPS, args=ocp.args.StandardSave(state))
  # The save runs in the background; gathering (a collective of all processes) meanwhile.
  gather: Callable[..., Any] = multihost_utils.process_allgather
  expected: dict[str, Any] = {
      name: np.asarray(gather(raw(leaf), tiled=True)) for name, leaf in leaves(state).items()
  }
  manager.wait_until_finished()
  manager.close()
  if jax.process_index() == 0:
    np.savez(directory / "expected.npz", **expected)
  print(f"process {jax.process_index()}: saved step {STEPS}, {len(expected)} leaves", flush=True)


def restore(directory: Path, mesh_shape: tuple[int, int]) -> None:
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  import blox as bx

  init_state, _ = state_functions()
  mesh = bx.parallel.make_mesh(mesh_shape, ("data", "model"))
  target = bx.parallel.abstract_params(init_state, mesh, rules=RULES)
  manager = ocp.CheckpointManager(directory / "checkpoints")
  assert manager.latest_step() == STEPS, f"latest step {manager.latest_step()}, expected {STEPS}"
  restored = manager.restore(STEPS, args=ocp.args.StandardRestore(target))
  manager.close()
  # Paths, flags, metadata and the locked flag are the template's aux data.
  structure: Callable[[Any], Any] = jax.tree.structure
  assert structure(restored) == structure(target), "restored tree differs from the target's"
  expected = dict(np.load(directory / "expected.npz"))
  wanted = leaves(target)
  got = leaves(restored)
  assert sorted(got) == sorted(expected), f"leaves differ: {sorted(got)} vs {sorted(expected)}"
  shards = 0
  for name, leaf in got.items():
    goal = wanted[name]
    assert leaf.dtype == goal.dtype and leaf.shape == goal.shape, f"{name}: {leaf.dtype}{leaf.shape}"
    assert leaf.sharding.is_equivalent_to(goal.sharding, leaf.ndim), f"{name}: {leaf.sharding}"
    for shard in raw(leaf).addressable_shards:
      local = np.asarray(shard.data)
      want = expected[name][shard.index]
      same = local.dtype == want.dtype and local.tobytes() == want.tobytes()
      assert same, f"{name} differs from the saved value at {shard.index}"
      shards += 1
  print(f"process {jax.process_index()}: mesh {mesh_shape[0]}x{mesh_shape[1]},"
        f" {len(got)} leaves, {shards} local shards equal", flush=True)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("role", choices=["save", "restore"])
  parser.add_argument("--dir", type=Path, required=True)
  parser.add_argument("--mesh", action="append", type=parse_mesh, required=True)
  args = parser.parse_args(argv)

  import jax

  # jax.config.update and jax.distributed.shutdown have no annotations.
  update_config: Callable[[str, Any], None] = jax.config.update
  shutdown: Callable[[], None] = jax.distributed.shutdown
  count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
  if count:
    update_config("jax_cpu_collectives_implementation", "gloo")
    # jax reads JAX_COORDINATOR_ADDRESS itself.
    jax.distributed.initialize(
        num_processes=int(count), process_id=int(index or 0), initialization_timeout=60
    )
  for mesh_shape in args.mesh:
    (save if args.role == "save" else restore)(args.dir, mesh_shape)
  if count:
    shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main())
