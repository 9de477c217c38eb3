"""`GRU`: a gated recurrent unit recurrence.

One step, with `[a, b]` a concatenation on the last axis and two `Linear`
children: `gates` (output `2 * hidden`, split in the order (r, z)) and
`candidate` (output `hidden`):

  r, z = split(sigmoid(gates([x, h])), 2)   # reset and update gates
  n = tanh(candidate([x, r * h]))           # candidate state
  h' = (1 - z) * h + z * n

`z` is the share of the state that is replaced by the candidate; the reset
gate `r` decides how much of the previous state the candidate sees. The output
of a step is `h'`; the state is `GRUState(hidden=h')`.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> gru = GRU(graph.child('gru'), hidden_size=4, rng=rng)
  >>> (outputs, state), params = gru.apply(rng.seed(Params(), seed=0), jnp.ones((2, 5, 3)))
  >>> outputs.shape, state.hidden.shape
  ((2, 5, 4), (2, 4))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from blox.graph import Graph, RecurrenceBase
from blox.nn._checks import check_positive_int
from blox.nn._recurrent import check_step_inputs, zero_hidden
from blox.nn.linear import Linear
from blox.params import KeySource, Params

__all__ = ["GRU", "GRUState"]


class GRUState(NamedTuple):
  """The state of a `GRU`: the hidden state `[batch, hidden_size]`."""

  hidden: jax.Array


class GRU(RecurrenceBase):
  """A gated recurrent unit (see the module docstring for the equations).

  Args:
    graph: the node this module binds to; the gate layers bind to its
      children `gates` and `candidate`.
    hidden_size: the size of the hidden state and of the outputs.
    rng: the key source for initialisation.
    is_static: scan over time with a Python loop instead of `jax.lax.scan`.
  """

  def __init__(
      self, graph: Graph, hidden_size: int, rng: KeySource, is_static: bool = False
  ) -> None:
    super().__init__(graph, is_static=is_static)
    check_positive_int(hidden_size, "hidden_size", self.where())
    self.hidden_size = hidden_size
    self.rng = rng
    self.gates = Linear(graph.child("gates"), 2 * hidden_size, rng)
    self.candidate = Linear(graph.child("candidate"), hidden_size, rng)

  def initial_state(
      self, params: Params, inputs: jax.Array, **kwargs: Any
  ) -> tuple[GRUState, Params]:
    """Zeros of shape `[*batch, hidden_size]` for one step of inputs `[*batch, features]`."""
    return GRUState(hidden=zero_hidden(inputs, self.hidden_size)), params

  def __call__(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: GRUState,
      is_training: bool = True,
  ) -> tuple[tuple[jax.Array, GRUState], Params]:
    """One step on inputs `[*batch, features]`; `is_training` is unused.

    Returns:
      `((hidden, GRUState(hidden)), params)`.
    """
    check_step_inputs(inputs, self.where())
    h = prev_state.hidden
    gates, params = self.gates(params, jnp.concatenate([inputs, h], axis=-1))
    r, z = jnp.split(jax.nn.sigmoid(gates), 2, axis=-1)
    candidate, params = self.candidate(params, jnp.concatenate([inputs, r * h], axis=-1))
    n = jnp.tanh(candidate)
    hidden = (1 - z) * h + z * n
    return (hidden, GRUState(hidden=hidden)), params
