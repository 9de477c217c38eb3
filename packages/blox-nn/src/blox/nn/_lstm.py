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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from blox.nn._recurrent import GatedCell, zero_hidden
from blox.params import Params

__all__ = ["LSTM", "LSTMState"]


class LSTMState(NamedTuple):
  """The state of an `LSTM`: hidden and cell, each `[batch, hidden_size]`."""

  hidden: jax.Array
  cell: jax.Array


class LSTM(GatedCell):
  """A long short-term memory recurrence (see the module docstring).

  Args:
    graph: the node this module binds to; its params are
      `(*graph.path, 'kernel' | 'recurrent_kernel' | 'bias')`.
    hidden_size: the size of the hidden and cell states and of the outputs.
    rng: the key source for initialisation.
    is_static: scan over time with a Python loop instead of `jax.lax.scan`.
    kernel_init: the input kernel's initializer `(key, shape, dtype) -> array`.
    recurrent_kernel_init: the recurrent kernel's initializer.
    bias_init: the bias's initializer.
    kernel_metadata: metadata for the input kernel, e.g.
      `{'sharding': (None, 'model')}`.
    recurrent_kernel_metadata: metadata for the recurrent kernel.
    bias_metadata: metadata for the bias.
    precision: the precision of the matrix products (`jax.lax.Precision`).
    param_dtype: the dtype of the params when they are created; None: the
      policy's `param_dtype` (`Module.policy()`), else float32.
    dtype: the dtype of the step and of the state; None: the policy's
      `compute_dtype`, else the inputs' dtype promoted with the params'. The
      outputs (not the state) come out in the policy's `output_dtype` if set.
  """

  num_gates = 4

  def initial_state(
      self, params: Params, inputs: jax.Array, **kwargs: Any
  ) -> tuple[LSTMState, Params]:
    """Zeros of shape `[*batch, hidden_size]` for one step of inputs `[*batch, features]`."""
    zeros = zero_hidden(inputs, self.hidden_size, self._dtypes())
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
    gates = self._dot(inputs, kernel) + self._dot(h, recurrent_kernel) + bias
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return (self._output(hidden), LSTMState(hidden=hidden, cell=cell)), params
