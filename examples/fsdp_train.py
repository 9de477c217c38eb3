"""Fully sharded training across processes, resumable from orbax checkpoints.

The model is the transformer of examples/transformer_model.py, whose params
name their logical axes ('vocab', 'embed', 'heads', 'kv_heads', 'mlp'). Here
`RULES` map them onto a ('data', 'model') mesh: 'embed' over 'data' (FSDP:
every param and its AdamW moments are split over the data-parallel devices
too, and gathered where used) and the rest over 'model' (tensor parallel).
The batch is split over 'data'. Params and optimizer state are created on
their devices (`bx.parallel.init_sharded`) and checkpointed every few steps
with orbax (`CheckpointManager`, `StandardSave`; restored with
`StandardRestore` into `bx.parallel.abstract_params`, nothing allocated).
A run that finds a checkpoint resumes from it.

`work` is one process of the system, one per host (README.md, "FSDP
across hosts"): `--role worker`, with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID from the environment.

Run with no arguments from the repository root, the script checks itself on
this machine (scripts/fsdp_check.py): it starts copies of itself as 2
workers x 4 simulated CPU devices, trains uninterrupted, trains again and
kills a process between two checkpoints, restarts both from the last one,
and checks that the final params and optimizer state equal those of the
uninterrupted run bit for bit (the data of a step is seeded by the step and
the RNG streams live in the params, so the resumed run computes exactly what
the uninterrupted one computed). Exit status 1 on any mismatch, failure or
timeout.

  uv run examples/fsdp_train.py          # 30 steps, a checkpoint every 5
  uv run examples/fsdp_train.py --fast   # a tiny model, 10 steps, a checkpoint every 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, Python puts examples/ itself on the path; the model and
# the check are imported from the repository root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

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


def work(args: argparse.Namespace) -> int:
  """One process of the system: joins it, trains (resuming if it can), writes the final state."""
  # jax is imported here, not at the top: the launcher never starts it.
  import jax
  import optax
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils

  import blox as bx
  from blox.params import is_prng_key
  from examples import transformer_model as lm

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
  # Explicit axes: every array's sharding is part of its type, and blox's
  # layers say the output sharding of each product (`--auto`: Auto axes,
  # where the compiler propagates the shardings; the same model code).
  kind = jax.sharding.AxisType.Auto if args.auto else jax.sharding.AxisType.Explicit
  mesh = bx.parallel.make_mesh(
      (jax.device_count() // MODEL_PARALLEL, MODEL_PARALLEL), ("data", "model"), axis_types=kind
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
    params, opt_state = state
    params, opt_state, loss = lm_step(params, opt_state, ids, targets)
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
    if step == args.stall_after:  # the check kills this process here
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
  parser.add_argument("--steps", type=int, default=30, help="worker: steps to train")
  parser.add_argument("--checkpoint-every", type=int, default=5,
                      help="worker: steps between checkpoints")
  parser.add_argument("--checkpoint-dir", default="fsdp_checkpoints",
                      help="worker: orbax's folder, shared by all processes; a run resumes from"
                      " its latest checkpoint")
  parser.add_argument("--out", default="fsdp_final.npz",
                      help="worker: where process 0 writes the final params and optimizer state")
  parser.add_argument("--summary", action="store_true", help="worker: print the params' table")
  parser.add_argument("--auto", action="store_true",
                      help="a mesh of Auto axes (the compiler propagates the shardings) instead"
                      " of Explicit ones (shardings in the arrays' types)")
  parser.add_argument("--stall-after", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.role == "worker":
    return work(args)
  from scripts.fsdp_check import check

  return check(__file__, args.fast, auto=args.auto)


if __name__ == "__main__":
  sys.exit(main())
