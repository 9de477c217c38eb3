"""`LSTM`: a long short-term memory recurrence.

One step, with `W = kernel [features, 4h]`, `U = recurrent_kernel [h, 4h]`
and `b = bias [4h]`, whose four blocks hold the gates in the order (i, g, f, o):

  i, g, f, o = split(x @ W + h @ U + b, 4)
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
  >>> params[('net', 'lstm', 'recurrent_kernel')].value.shape
  (4, 16)
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from blox.nn._recurrent import GatedCell, zero_hidden
from blox.nn._out_sharding import follow
from blox.params import Params

__all__ = ["LSTM", "LSTMState"]


class LSTMState(NamedTuple):
  """The state of an `LSTM`: hidden and cell, each `[batch, hidden_size]`."""

  hidden: jax.Array
  cell: jax.Array


class LSTM(GatedCell):
  """A long short-term memory recurrence (see the module docstring).

  Its params are `(*graph.path, 'kernel' | 'recurrent_kernel' | 'bias')`. The
  hidden and cell states are `hidden_size` wide and stay in the compute
  dtype; only the outputs take the policy's `output_dtype`.
  """

  num_gates: ClassVar[int] = 4

  def initial_state(
      self, params: Params, inputs: jax.Array, **kwargs: Any
  ) -> tuple[LSTMState, Params]:
    """Zeros of shape `[*batch, hidden_size]` for one step of inputs `[*batch, features]`."""
    zeros = zero_hidden(inputs, self.hidden_size, self.dtypes())
    return LSTMState(hidden=zeros, cell=zeros), params

  def __call__(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: LSTMState,
      is_training: bool = True,
  ) -> tuple[tuple[jax.Array, LSTMState], Params]:
    """One step on floating-point inputs `[*batch, features]`; `is_training` is unused.

    Returns:
      `((hidden, LSTMState(hidden, cell)), params)`.
    """
    inputs, (kernel, recurrent_kernel, bias), (h, c), params = self._weights(
        params, inputs, prev_state
    )
    projected = self._product(params, inputs, kernel, "kernel") + self._product(
        params, h, recurrent_kernel, "recurrent_kernel")
    gates = projected + follow(bias, projected)
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return (self._output(hidden), LSTMState(hidden=hidden, cell=cell)), params
