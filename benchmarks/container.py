"""Benchmark: what `Params` costs as a pytree, next to a tuple and a dict.

A model's state crosses the pytree boundary on every jitted step: JAX flattens
the inputs, checks the structure against its cache and unflattens the outputs.
This benchmark holds N small float32 arrays in a locked `Params`, a plain
tuple (the floor: JAX's cheapest native container) and a plain dict, and times

  flatten    `jax.tree.flatten(tree)`
  unflatten  `jax.tree.unflatten(treedef, leaves)`
  jit call   a jitted `tree_map(x + 1)` whose output feeds the next call

Each round times a batch of calls of every container in turn (rotating which
goes first), after a warm-up; times are medians over the rounds and ratios
are medians of the per-round ratios, so that noise from a busy machine falls
on all containers alike.

Example (from the repository root):
  uv run benchmarks/container.py           # N = 10, 100, 1000
  uv run benchmarks/container.py --smoke   # a tiny run, for CI

Other scripts import `run(smoke)` and get one row per (operation, N).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from blox.params import Param, Params

__all__ = ["HEADER", "TARGETS", "format_table", "main", "run"]

# Largest acceptable Params/tuple time ratio per operation, at the largest N
# of a full run. A jitted call does real work besides the container, so its
# target is the tightest.
TARGETS: dict[str, float] = {"flatten": 1.5, "unflatten": 1.5, "jit call": 1.10}
TARGET_N = 1000

HEADER = (
    f"{'op':<10} {'N':>5} {'params':>10} {'tuple':>10} {'dict':>10}"
    f" {'params/tuple':>13} {'params/dict':>12} {'target':>8}  verdict"
)

Tree = Any
Op = Callable[[], object]


def _make_trees(n: int) -> tuple[Params, tuple[jax.Array, ...], dict[str, jax.Array]]:
  """The same N arrays as a locked Params, a tuple and a dict."""
  arrays = [jnp.full((4,), float(i), jnp.float32) for i in range(n)]
  params = Params(
      {(f"layer{i}", "w"): Param(a) for i, a in enumerate(arrays)}
  ).locked()
  as_tuple = tuple(arrays)
  as_dict = {f"layer{i:05d}": a for i, a in enumerate(arrays)}
  return params, as_tuple, as_dict


def _wait(tree: Tree) -> Tree:
  """Blocks until every array in `tree` is computed."""
  return jax.block_until_ready(tree)  # type: ignore[no-untyped-call]  # jax leaves it unannotated


def _flatten_op(tree: Tree) -> Op:
  return lambda: jax.tree.flatten(tree)


def _unflatten_op(tree: Tree) -> Op:
  leaves, treedef = jax.tree.flatten(tree)
  return lambda: jax.tree.unflatten(treedef, leaves)


def _add_one(tree: Tree) -> Tree:
  return jax.tree.map(lambda x: x + 1, tree)


def _jit_call_op(tree: Tree) -> Op:
  """A jitted step fed its own output; each call dispatches and waits."""
  step = jax.jit(_add_one)
  state = [_wait(step(tree))]  # compile before timing

  def call() -> object:
    state[0] = step(state[0])
    return state[0]

  return call


def _time_batch(op: Op, reps: int, block: bool) -> float:
  """Seconds per call of `op`, over `reps` back-to-back calls."""
  start = time.perf_counter()
  out: object = None
  for _ in range(reps):
    out = op()
  if block:
    # Dispatch is asynchronous: wait so that the batch pays for its work.
    _wait(out)
  return (time.perf_counter() - start) / reps


def _calibrate(op: Op, block: bool, batch_seconds: float) -> int:
  """How many calls make a batch of about `batch_seconds`."""
  reps = 1
  while True:
    elapsed = _time_batch(op, reps, block) * reps
    if elapsed >= batch_seconds / 4 or reps >= 1 << 20:
      return max(1, int(reps * batch_seconds / max(elapsed, 1e-9)))
    reps *= 4


def _measure(
    ops: dict[str, Op], block: bool, rounds: int, batch_seconds: float
) -> dict[str, list[float]]:
  """Seconds per call of each op, one sample per interleaved round."""
  # One batch size for all containers (calibrated on the slowest) keeps the
  # rounds comparable.
  reps = min(_calibrate(op, block, batch_seconds) for op in ops.values())
  samples: dict[str, list[float]] = {name: [] for name in ops}
  names = list(ops)
  for r in range(rounds):
    # Rotate the order so that no container always runs first (or last).
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      samples[name].append(_time_batch(ops[name], reps, block))
  return samples


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
  """The median of per-round ratios: drift between rounds cancels out."""
  return statistics.median(a / b for a, b in zip(numerators, denominators))


_OPS: dict[str, tuple[Callable[[Tree], Op], bool]] = {
    "flatten": (_flatten_op, False),
    "unflatten": (_unflatten_op, False),
    "jit call": (_jit_call_op, True),
}


def run(smoke: bool = False) -> list[dict[str, object]]:
  """Runs the benchmark; one row per (operation, N).

  Each row holds `benchmark`, `op`, `n`, the median seconds per call
  `params_s`, `tuple_s` and `dict_s`, the ratios `params_vs_tuple` and
  `params_vs_dict`, and `target` (the largest acceptable Params/tuple ratio,
  or None where no target applies) with `ok` (None without a target).

  Args:
    smoke: a tiny run that only checks that everything works (N = 10, 100;
      few, short rounds). Its times mean little.
  """
  sizes: Sequence[int] = (10, 100) if smoke else (10, 100, TARGET_N)
  rounds = 3 if smoke else 21
  batch_seconds = 0.002 if smoke else 0.03
  rows: list[dict[str, object]] = []
  for op_name, (make_op, block) in _OPS.items():
    for n in sizes:
      params, as_tuple, as_dict = _make_trees(n)
      ops = {
          "params": make_op(params),
          "tuple": make_op(as_tuple),
          "dict": make_op(as_dict),
      }
      samples = _measure(ops, block, rounds, batch_seconds)
      times = {name: statistics.median(values) for name, values in samples.items()}
      vs_tuple = _median_ratio(samples["params"], samples["tuple"])
      target = TARGETS[op_name] if n == TARGET_N and not smoke else None
      rows.append({
          "benchmark": "container",
          "op": op_name,
          "n": n,
          "params_s": times["params"],
          "tuple_s": times["tuple"],
          "dict_s": times["dict"],
          "params_vs_tuple": vs_tuple,
          "params_vs_dict": _median_ratio(samples["params"], samples["dict"]),
          "target": target,
          "ok": None if target is None else vs_tuple <= target,
      })
  return rows


def _seconds(value: object) -> str:
  assert isinstance(value, float)
  if value >= 1e-3:
    return f"{value * 1e3:8.3f}ms"
  return f"{value * 1e6:8.2f}us"


def format_table(rows: Sequence[dict[str, object]]) -> str:
  """The rows of `run` as a text table (absolute times and ratios)."""
  lines = [HEADER]
  for row in rows:
    target = row["target"]
    verdict = "" if row["ok"] is None else ("ok" if row["ok"] else "MISSED")
    lines.append(
        f"{row['op']!s:<10} {row['n']!s:>5} {_seconds(row['params_s']):>10}"
        f" {_seconds(row['tuple_s']):>10} {_seconds(row['dict_s']):>10}"
        f" {row['params_vs_tuple']:>12.3f}x {row['params_vs_dict']:>11.3f}x"
        f" {'' if target is None else f'<={target:.2f}x':>8}  {verdict}"
    )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Params vs tuple vs dict as pytrees.")
  parser.add_argument(
      "--smoke", action="store_true", help="a tiny run that only checks it works"
  )
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  print(format_table(run(smoke=args.smoke)))


if __name__ == "__main__":
  main()
