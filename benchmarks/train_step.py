"""Train-step benchmark: a jitted SGD step in blox vs the same step on plain dicts.

The model is deep and narrow on purpose (64 `bx.Linear` layers of width 4,
batch 16, tanh): the arithmetic is tiny, so the per-step time is dominated by
what a container could add, namely flattening the params at the jit boundary
and the extra operations of `split`/`merge`. Both sides start from the same
initial values, donate their params, and feed each step's output to the next.

Rows: blox vs nested dicts (the target), blox vs a tuple of (kernel, bias)
pairs (the cheapest pytree), the hand-written step vs a second jit of itself
(the noise floor of the machine), and the time to first step (tracing,
lowering to StableHLO, XLA compilation, first call) of blox vs nested dicts,
each time on a fresh function so that no cache of JAX answers it.

Example:
  >>> rows = run(smoke=True)  # doctest: +SKIP
  >>> rows[0].name
  'train step (8x Linear(4), batch 16)'
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import blox as bx
from benchmarks.timing import Row, compare, count_ops, format_seconds, wait

__all__ = ["run"]

LEARNING_RATE = 0.01

Weights = dict[str, dict[str, jax.Array]]


class DeepMLP(bx.Module):
  """`depth` Linear layers of `width` units with tanh in between."""

  depth: int = bx.setting(kw_only=False, doc="the number of layers.")
  width: int = bx.setting(kw_only=False, doc="the units of every layer.")
  rng: bx.KeySource = bx.setting(doc="draws the kernels.")

  def __post_init__(self) -> None:
    self.layers = [bx.Linear(self.graph.child(f"layer{i}"), self.width, rng=self.rng)
                   for i in range(self.depth)]

  def __call__(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    for i, layer in enumerate(self.layers):
      x, params = layer(params, x)
      if i + 1 < len(self.layers):
        x = jnp.tanh(x)
    return x, params


def init_blox(depth: int, width: int, x: jax.Array) -> tuple[DeepMLP, bx.Params]:
  """Builds the model and its locked params.

  The Rng is only needed to create the kernels, but a user keeps it in the
  params, so its seed and counter travel through the step as well.
  """
  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  model = DeepMLP(graph.child("mlp"), depth, width, rng=rng)
  return model, rng.init(model, x, seed=0)


def blox_step_fn(
    model: DeepMLP,
) -> Callable[[bx.Params, jax.Array, jax.Array], tuple[bx.Params, jax.Array]]:
  """The user's train step: `bx.value_and_grad` (split, grad, merge), then SGD."""

  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    out, params = model(params, x)
    return jnp.mean((out - y) ** 2), params

  def step(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[bx.Params, jax.Array]:
    loss, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    trainable = jax.tree.map(lambda w, g: w - LEARNING_RATE * g, trainable, grads)
    return trainable.merge(rest), loss

  return step


def to_weights(params: bx.Params, depth: int) -> Weights:
  """Copies the blox kernels and biases into a nested dict of fresh arrays."""
  return {
      f"layer{i}": {
          name: jnp.array(params[("net", "mlp", f"layer{i}", name)].value)
          for name in ("kernel", "bias")
      }
      for i in range(depth)
  }


def hand_forward(weights: Weights, x: jax.Array) -> jax.Array:
  depth = len(weights)
  for i in range(depth):
    layer = weights[f"layer{i}"]
    x = jnp.dot(x, layer["kernel"]) + layer["bias"]
    if i + 1 < depth:
      x = jnp.tanh(x)
  return x


def hand_step(weights: Weights, x: jax.Array, y: jax.Array) -> tuple[Weights, jax.Array]:
  """The same step written directly on a dict of arrays."""

  def loss_fn(w: Weights) -> jax.Array:
    return jnp.mean((hand_forward(w, x) - y) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(weights)
  weights = jax.tree.map(lambda w, g: w - LEARNING_RATE * g, weights, grads)
  return weights, loss


TupleWeights = tuple[tuple[jax.Array, jax.Array], ...]


def hand_step_tuple(
    weights: TupleWeights, x: jax.Array, y: jax.Array
) -> tuple[TupleWeights, jax.Array]:
  """The same step on a tuple of (kernel, bias) pairs: the cheapest pytree there is."""

  def loss_fn(w: TupleWeights) -> jax.Array:
    h = x
    for i, (kernel, bias) in enumerate(w):
      h = jnp.dot(h, kernel) + bias
      if i + 1 < len(w):
        h = jnp.tanh(h)
    return jnp.mean((h - y) ** 2)

  loss, grads = jax.value_and_grad(loss_fn)(weights)
  weights = jax.tree.map(lambda w, g: w - LEARNING_RATE * g, weights, grads)
  return weights, loss


def first_step_times(
    make_step: Callable[[], Callable[..., Any]], args: tuple[Any, ...], repeats: int
) -> dict[str, float]:
  """Median seconds to trace, lower, compile, and for a fresh first call."""
  phases: dict[str, list[float]] = {"trace": [], "lower": [], "compile": [], "first call": []}
  for _ in range(repeats):
    # A new function object each time: JAX's caches are keyed by it.
    jitted = jax.jit(make_step())
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    phases["trace"].append(t1 - t0)
    phases["lower"].append(t2 - t1)
    phases["compile"].append(t3 - t2)
    fresh = jax.jit(make_step())
    t4 = time.perf_counter()
    wait(fresh(*args))
    phases["first call"].append(time.perf_counter() - t4)
  return {name: statistics.median(times) for name, times in phases.items()}


def run(smoke: bool = False) -> list[Row]:
  """Measures the steady-state step and the time to first step; returns table rows."""
  depth, width, batch = (8, 4, 16) if smoke else (64, 4, 16)
  steps, rounds, repeats = (5, 3, 1) if smoke else (50, 101, 5)
  x = jax.random.normal(jax.random.key(1), (batch, width))
  y = jax.random.normal(jax.random.key(2), (batch, width))
  model, params = init_blox(depth, width, x)
  _, fresh_params = init_blox(depth, width, x)  # never donated: copied for the control
  weights = to_weights(params, depth)

  # Same init values, same math: the first losses must agree.
  _, loss_blox = jax.jit(blox_step_fn(model))(params, x, y)
  _, loss_hand = jax.jit(hand_step)(weights, x, y)
  if abs(float(loss_blox) - float(loss_hand)) > 1e-5:
    raise AssertionError(f"The two models differ: loss {float(loss_blox)} vs {float(loss_hand)}.")

  ops = f"{count_ops(blox_step_fn(model), params, x, y)} vs {count_ops(hand_step, weights, x, y)} ops"

  # Time to first step, before the steady-state runs donate these buffers.
  blox_first = first_step_times(lambda: blox_step_fn(model), (params, x, y), repeats)
  hand_first = first_step_times(
      lambda: (lambda w, a, b: hand_step(w, a, b)), (weights, x, y), repeats
  )

  blox_jit = jax.jit(blox_step_fn(model), donate_argnums=0)
  hand_jit = jax.jit(hand_step, donate_argnums=0)

  def blox_carry(p: bx.Params, _: jax.Array) -> tuple[bx.Params, jax.Array]:
    result: tuple[bx.Params, jax.Array] = blox_jit(p, x, y)
    return result

  def hand_carry(w: Weights, _: jax.Array) -> tuple[Weights, jax.Array]:
    result: tuple[Weights, jax.Array] = hand_jit(w, x, y)
    return result

  result = compare(
      blox_carry, (params, loss_blox), hand_carry, (weights, loss_hand),
      steps=steps, rounds=rounds,
  )
  label = f"{depth}x Linear({width}), batch {batch}"
  rows = [
      Row(
          f"train step ({label})",
          format_seconds(result.blox_s), format_seconds(result.baseline_s),
          result.ratio, "<= 1.05x", f"median of {result.rounds} rounds; {ops}",
      )
  ]

  # A stricter baseline: the weights in a tuple instead of nested dicts.
  tuple_jit = jax.jit(hand_step_tuple, donate_argnums=0)

  def tuple_carry(w: TupleWeights, _: jax.Array) -> tuple[TupleWeights, jax.Array]:
    result: tuple[TupleWeights, jax.Array] = tuple_jit(w, x, y)
    return result

  tuple_weights = tuple(
      (layer["kernel"], layer["bias"]) for layer in to_weights(fresh_params, depth).values()
  )
  result = compare(
      blox_carry, (jax.tree.map(jnp.copy, fresh_params), loss_blox),
      tuple_carry, (tuple_weights, loss_hand),
      steps=steps, rounds=rounds,
  )
  rows.append(
      Row(
          f"train step ({label}) vs weights in a tuple",
          format_seconds(result.blox_s), format_seconds(result.baseline_s),
          result.ratio, "report", "the cheapest pytree as baseline",
      )
  )

  # The noise floor: the hand-written step against a second jit of itself.
  # Its distance from 1.00x is what the machine's noise alone produces.
  twin_jit = jax.jit(hand_step, donate_argnums=0)

  def twin_carry(w: Weights, _: jax.Array) -> tuple[Weights, jax.Array]:
    result: tuple[Weights, jax.Array] = twin_jit(w, x, y)
    return result

  control = compare(
      twin_carry, (to_weights(fresh_params, depth), loss_hand),
      hand_carry, (to_weights(fresh_params, depth), loss_hand),
      steps=steps, rounds=rounds,
  )
  rows.append(
      Row(
          "noise floor: hand-written train step vs itself",
          format_seconds(control.blox_s), format_seconds(control.baseline_s),
          control.ratio, "~1.00x", "A/A control: distance from 1.00x is noise",
      )
  )
  for phase in ("trace", "lower", "compile", "first call"):
    rows.append(
        Row(
            f"time to first step: {phase} ({label})",
            format_seconds(blox_first[phase]), format_seconds(hand_first[phase]),
            blox_first[phase] / hand_first[phase], "report",
        )
    )
  return rows


if __name__ == "__main__":
  from benchmarks.timing import format_table

  print(format_table(run()))
