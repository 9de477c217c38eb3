"""`LSTM`: a long short-term memory recurrence.

One step, with `[x, h]` the concatenation of inputs and previous hidden state
and a single `Linear` child named `gates` producing the four gate
pre-activations in the order (i, g, f, o):

  i, g, f, o = split(gates([x, h]), 4)
  c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
  h' = sigmoid(o) * tanh(c')

The output of a step is `h'`; the state is `LSTMState(hidden=h', cell=c')`.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> lstm = LSTM(graph.child('lstm'), hidden_size=4, rng=rng)
  >>> (outputs, state), params = lstm.apply(rng.seed(Params(), seed=0), jnp.ones((2, 5, 3)))
  >>> outputs.shape, state.cell.shape
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

__all__ = ["LSTM", "LSTMState"]


class LSTMState(NamedTuple):
  """The state of an `LSTM`: hidden and cell, each `[batch, hidden_size]`."""

  hidden: jax.Array
  cell: jax.Array


class LSTM(RecurrenceBase):
  """A long short-term memory recurrence (see the module docstring).

  Args:
    graph: the node this module binds to; the gate layer binds to its child
      `gates`, so its params are `(*graph.path, 'gates', 'kernel' | 'bias')`.
    hidden_size: the size of the hidden and cell states and of the outputs.
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
    self.gates = Linear(graph.child("gates"), 4 * hidden_size, rng)

  def initial_state(
      self, params: Params, inputs: jax.Array, **kwargs: Any
  ) -> tuple[LSTMState, Params]:
    """Zeros of shape `[*batch, hidden_size]` for one step of inputs `[*batch, features]`."""
    zeros = zero_hidden(inputs, self.hidden_size)
    return LSTMState(hidden=zeros, cell=zeros), params

  def __call__(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: LSTMState,
      is_training: bool = True,
  ) -> tuple[tuple[jax.Array, LSTMState], Params]:
    """One step on inputs `[*batch, features]`; `is_training` is unused.

    Returns:
      `((hidden, LSTMState(hidden, cell)), params)`.
    """
    check_step_inputs(inputs, self.where())
    # concatenate promotes dtypes, like the kernel product that follows.
    joined = jnp.concatenate([inputs, prev_state.hidden], axis=-1)
    gates, params = self.gates(params, joined)
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(f) * prev_state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return (hidden, LSTMState(hidden=hidden, cell=cell)), params
