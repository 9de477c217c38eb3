"""LSTM benchmark: `bx.LSTM` (lax.scan) vs a hand-written `jax.lax.scan` LSTM.

Both sides compute the same step with the same weights, as `bx.LSTM`
documents it: the inputs times `kernel` plus the previous hidden state times
`recurrent_kernel` plus `bias` give the four gates (i, g, f, o), then

  c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
  h' = sigmoid(o) * tanh(c')

Two rows: the forward pass over a whole sequence (the final state feeds the
next call, as when streaming a long sequence in chunks), and an SGD train
step on a squared-error loss of the outputs (split -> grad -> merge for
blox, a dict of arrays by hand). Params are donated in the train step.

Example:
  >>> rows = run(smoke=True)  # doctest: +SKIP
  >>> rows[0].name
  'lstm forward (batch 4, time 8, hidden 8)'
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import blox as bx
from benchmarks.timing import Row, compare, count_ops, format_seconds

__all__ = ["run"]

LEARNING_RATE = 0.01

Weights = dict[str, jax.Array]
State = tuple[jax.Array, jax.Array]


def hand_lstm(weights: Weights, inputs: jax.Array, state: State) -> tuple[jax.Array, State]:
  """The LSTM over inputs `[batch, time, features]`, written with lax.scan."""

  def step(carry: State, x_t: jax.Array) -> tuple[State, jax.Array]:
    h, c = carry
    gates = (
        jnp.dot(x_t, weights["kernel"]) + jnp.dot(h, weights["recurrent_kernel"])
        + weights["bias"]
    )
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  final, outputs = jax.lax.scan(step, state, jnp.swapaxes(inputs, 0, 1))
  return jnp.swapaxes(outputs, 0, 1), final


def run(smoke: bool = False) -> list[Row]:
  """Measures the forward pass and a train step; returns table rows."""
  batch, time, features, hidden = (4, 8, 8, 8) if smoke else (32, 64, 64, 128)
  steps, rounds = (3, 3) if smoke else (8, 41)
  x = jax.random.normal(jax.random.key(1), (batch, time, features))
  targets = jax.random.normal(jax.random.key(2), (batch, time, hidden))

  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  lstm = bx.LSTM(graph.child("lstm"), hidden_size=hidden, rng=rng)
  params = rng.init(lstm.apply, x, seed=0)

  def fresh_weights() -> Weights:
    return {
        name: jnp.array(params[("net", "lstm", name)].value)
        for name in ("kernel", "recurrent_kernel", "bias")
    }

  zeros = jnp.zeros((batch, hidden))
  label = f"batch {batch}, time {time}, hidden {hidden}"
  rows: list[Row] = []

  # Forward over the sequence; the final state starts the next chunk.
  @jax.jit
  def blox_forward(p: bx.Params, s: bx.LSTMState) -> tuple[bx.Params, bx.LSTMState, jax.Array]:
    (outputs, state), p = lstm.apply(p, x, prev_state=s)
    return p, state, outputs

  @jax.jit
  def hand_forward(w: Weights, s: State) -> tuple[Weights, State, jax.Array]:
    outputs, state = hand_lstm(w, x, s)
    return w, state, outputs

  blox_out = blox_forward(params, bx.LSTMState(zeros, zeros))[2]
  hand_out = hand_forward(fresh_weights(), (zeros, zeros))[2]
  error = float(jnp.max(jnp.abs(blox_out - hand_out)))
  if error > 1e-4:
    raise AssertionError(f"bx.LSTM and the hand-written LSTM differ by {error}.")

  forward_ops = (
      f"{count_ops(blox_forward, params, bx.LSTMState(zeros, zeros))} vs"
      f" {count_ops(hand_forward, fresh_weights(), (zeros, zeros))} ops"
  )

  def blox_forward_carry(p: bx.Params, s: bx.LSTMState, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = blox_forward(p, s)
    return result

  def hand_forward_carry(w: Weights, s: State, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = hand_forward(w, s)
    return result

  result = compare(
      blox_forward_carry, (params, bx.LSTMState(zeros, zeros), None),
      hand_forward_carry, (fresh_weights(), (zeros, zeros), None),
      steps=steps, rounds=rounds,
  )
  rows.append(
      Row(
          f"lstm forward ({label})",
          format_seconds(result.blox_s), format_seconds(result.baseline_s),
          result.ratio, "<= 1.05x",
          f"{batch * time / result.blox_s:,.0f} tokens/s in blox; {forward_ops}",
      )
  )

  # A train step as a user writes it: bx.value_and_grad, then SGD on the trainable half.
  def loss_fn(p: bx.Params) -> tuple[jax.Array, bx.Params]:
    (outputs, _), p = lstm.apply(p, x)
    return jnp.mean((outputs - targets) ** 2), p

  def blox_train(p: bx.Params) -> tuple[bx.Params, jax.Array]:
    loss, p, grads = bx.value_and_grad(loss_fn)(p)
    trainable, rest = p.split()
    trainable = jax.tree.map(lambda w, g: w - LEARNING_RATE * g, trainable, grads)
    return trainable.merge(rest), loss

  def hand_train(w: Weights) -> tuple[Weights, jax.Array]:
    def loss_fn(w: Weights) -> jax.Array:
      outputs, _ = hand_lstm(w, x, (zeros, zeros))
      return jnp.mean((outputs - targets) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(w)
    return jax.tree.map(lambda a, g: a - LEARNING_RATE * g, w, grads), loss

  train_ops = f"{count_ops(blox_train, params)} vs {count_ops(hand_train, fresh_weights())} ops"
  blox_train_jit = jax.jit(blox_train, donate_argnums=0)
  hand_train_jit = jax.jit(hand_train, donate_argnums=0)

  def blox_train_carry(p: bx.Params, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = blox_train_jit(p)
    return result

  def hand_train_carry(w: Weights, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = hand_train_jit(w)
    return result

  result = compare(
      blox_train_carry, (params, None), hand_train_carry, (fresh_weights(), None),
      steps=steps, rounds=rounds,
  )
  rows.append(
      Row(
          f"lstm train step ({label})",
          format_seconds(result.blox_s), format_seconds(result.baseline_s),
          result.ratio, "<= 1.05x", f"median of {result.rounds} rounds; {train_ops}",
      )
  )
  return rows


if __name__ == "__main__":
  from benchmarks.timing import format_table

  print(format_table(run()))
