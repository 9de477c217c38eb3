"""Timing helpers shared by the benchmarks: interleaved rounds, median ratios.

Two implementations of the same computation are timed in alternating rounds
(A then B, then B then A, ...), so that slow drift of the machine (another
process waking up, frequency scaling) hits both alike. Each round runs a
fixed number of steps, feeding every step's outputs into the next call, and
waits for the last result; the reported ratio is the median of the per-round
ratios. `machine()` describes the machine and versions for the record.

Example:
  >>> import jax.numpy as jnp
  >>> double = lambda x: (x * 2,)
  >>> result = compare(double, (jnp.ones(3),), double, (jnp.ones(3),),
  ...                  steps=2, rounds=3)
  >>> result.rounds
  3
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.extend.core import Jaxpr, subjaxprs

__all__ = [
    "Comparison",
    "Row",
    "compare",
    "count_ops",
    "format_seconds",
    "format_table",
    "interleave",
    "interleaved_times",
    "machine",
    "print_table",
    "run_steps",
    "wait",
]

# A step takes the carried state (a tuple) and returns the next state; extra
# inputs are closed over by the caller.
Step = Callable[..., tuple[Any, ...]]


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Median seconds per step of each side, and the median per-round ratio."""

  blox_s: float
  baseline_s: float
  ratio: float
  rounds: int


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the benchmark table."""

  name: str
  blox: str
  baseline: str
  ratio: float | None
  target: str
  note: str = ""


def wait(tree: Any) -> None:
  """Blocks until every array in `tree` is computed (dispatch is asynchronous)."""
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      leaf.block_until_ready()


def run_steps(step: Step, state: tuple[Any, ...], steps: int) -> tuple[float, tuple[Any, ...]]:
  """Runs `state = step(*state)` `steps` times; returns (seconds per step, state)."""
  start = time.perf_counter()
  for _ in range(steps):
    state = step(*state)
  wait(state)
  return (time.perf_counter() - start) / steps, state


def compare(
    blox_step: Step,
    blox_state: tuple[Any, ...],
    baseline_step: Step,
    baseline_state: tuple[Any, ...],
    *,
    steps: int,
    rounds: int,
    warmup: int = 2,
) -> Comparison:
  """Times both steps in interleaved rounds; see the module docstring."""
  # Warm up: compile, and let allocator and caches settle.
  _, blox_state = run_steps(blox_step, blox_state, warmup)
  _, baseline_state = run_steps(baseline_step, baseline_state, warmup)
  blox_times: list[float] = []
  baseline_times: list[float] = []
  for r in range(rounds):
    if r % 2 == 0:
      t_blox, blox_state = run_steps(blox_step, blox_state, steps)
      t_base, baseline_state = run_steps(baseline_step, baseline_state, steps)
    else:
      t_base, baseline_state = run_steps(baseline_step, baseline_state, steps)
      t_blox, blox_state = run_steps(blox_step, blox_state, steps)
    blox_times.append(t_blox)
    baseline_times.append(t_base)
  ratios = [b / h for b, h in zip(blox_times, baseline_times)]
  return Comparison(
      blox_s=statistics.median(blox_times),
      baseline_s=statistics.median(baseline_times),
      ratio=statistics.median(ratios),
      rounds=rounds,
  )


def interleave(
    cases: dict[str, tuple[Step, tuple[Any, ...]]],
    baseline: str,
    *,
    steps: int,
    rounds: int,
    warmup: int = 2,
) -> dict[str, Comparison]:
  """`compare` for several implementations: each against `baseline`, all in the same rounds.

  Round `r` runs the cases in a rotated order (starting at case `r`), so
  that each runs first, last and in between equally often. Each case's
  `Comparison` holds its median seconds (`blox_s`), the baseline's
  (`baseline_s`) and the median of its per-round ratios to the baseline.
  """
  if baseline not in cases:
    raise ValueError(f"The baseline {baseline!r} is not one of the cases {sorted(cases)}.")
  times, _ = interleaved_times(cases, steps=steps, rounds=rounds, warmup=warmup)
  base = times[baseline]
  return {
      name: Comparison(
          blox_s=statistics.median(times[name]),
          baseline_s=statistics.median(base),
          ratio=statistics.median([t / b for t, b in zip(times[name], base)]),
          rounds=rounds,
      )
      for name in cases
  }


def interleaved_times(
    cases: dict[str, tuple[Step, tuple[Any, ...]]],
    *,
    steps: int,
    rounds: int,
    warmup: int = 2,
) -> tuple[dict[str, list[float]], dict[str, tuple[Any, ...]]]:
  """The rounds of `interleave`: each case's seconds per step in every round, and its final state.

  For ratios between any two cases (the median of `a[r] / b[r]` over the
  rounds `r`), not only against one baseline; the final states let a caller
  check that every case still computes the same thing after the timing.
  """
  names = list(cases)
  states = {}
  for name, (step, state) in cases.items():
    _, states[name] = run_steps(step, state, warmup)
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(rounds):
    start = r % len(names)
    for name in names[start:] + names[:start]:
      seconds, states[name] = run_steps(cases[name][0], states[name], steps)
      times[name].append(seconds)
  return times, states


def count_ops(fn: Callable[..., Any], *args: Any) -> int:
  """The number of JAX primitives `fn` traces to, counting inside scans and jits.

  Two implementations of one computation with equal counts run the same
  operations; a container that added work would show up here.
  """

  def count(jaxpr: Jaxpr) -> int:
    return len(jaxpr.eqns) + sum(count(sub) for sub in subjaxprs(jaxpr))

  return count(jax.make_jaxpr(fn)(*args).jaxpr)


def format_seconds(seconds: float) -> str:
  """`1.23 ms`-style text with a unit that keeps 3 significant digits."""
  for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
    if seconds >= scale:
      return f"{seconds / scale:.3g} {unit}"
  return f"{seconds / 1e-9:.3g} ns"


def format_table(rows: Sequence[Row]) -> str:
  """A Markdown table of the rows (pasteable into BENCHMARKS.md)."""
  header = ("benchmark", "blox", "plain JAX", "ratio", "target", "note")
  lines = [
      tuple(
          (r.name, r.blox, r.baseline, "-" if r.ratio is None else f"{r.ratio:.3f}x",
           r.target, r.note)
      )
      for r in rows
  ]
  widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

  def join(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

  separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([join(header), separator, *(join(line) for line in lines)])


def print_table(rows: Sequence[Row], smoke: bool) -> None:
  """Prints the machine, the mode and the table of `rows`: a benchmark module run as a script."""
  print(f"machine: {machine()}")
  print(f"mode: {'smoke (tiny sizes, numbers mean nothing)' if smoke else 'full'}")
  print()
  print(format_table(rows))


def machine() -> str:
  """CPU model, core count and versions, for the record in BENCHMARKS.md."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  device = jax.devices()[0]
  return (
      f"{model}, {cores} cores available; jax {jax.__version__} on"
      f" {device.platform} ({device.device_kind}); Python {platform.python_version()}"
  )
