"""`GRU`: a gated recurrent unit recurrence.

One step, with `W = kernel [features, 3h]`, `U = recurrent_kernel [h, 3h]`
and `b = bias [3h]`, whose three blocks are, in order, the reset gate r, the
update gate z and the candidate n (`W_r` is the r block of `W`, and so on):

  r = sigmoid(x @ W_r + h @ U_r + b_r)
  z = sigmoid(x @ W_z + h @ U_z + b_z)
  n = tanh(x @ W_n + b_n + (r * h) @ U_n)
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
  >>> params[('net', 'gru', 'kernel')].value.shape
  (3, 12)
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from blox.nn._recurrent import GatedCell, zero_hidden
from blox.nn._out_sharding import follow
from blox.params import Params

__all__ = ["GRU", "GRUState"]


class GRUState(NamedTuple):
  """The state of a `GRU`: the hidden state `[batch, hidden_size]`."""

  hidden: jax.Array


class GRU(GatedCell):
  """A gated recurrent unit (see the module docstring for the equations).

  Its params are `(*graph.path, 'kernel' | 'recurrent_kernel' | 'bias')`. The
  hidden state is `hidden_size` wide and stays in the compute dtype; only the
  outputs take the policy's `output_dtype`. The recurrent kernel enters the
  step in two column blocks (`U_r, U_z` times `h`, then `U_n` times `r * h`),
  so contraction hooks see those blocks as its weight.
  """

  num_gates: ClassVar[int] = 3

  def initial_state(
      self, params: Params, inputs: jax.Array, **kwargs: Any
  ) -> tuple[GRUState, Params]:
    """Zeros of shape `[*batch, hidden_size]` for one step of inputs `[*batch, features]`."""
    return GRUState(hidden=zero_hidden(inputs, self.hidden_size, self.dtypes())), params

  def __call__(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: GRUState,
      is_training: bool = True,
  ) -> tuple[tuple[jax.Array, GRUState], Params]:
    """One step on floating-point inputs `[*batch, features]`; `is_training` is unused.

    Returns:
      `((hidden, GRUState(hidden)), params)`.
    """
    inputs, (kernel, recurrent_kernel, bias), (h,), params = self._weights(
        params, inputs, prev_state
    )
    size = self.hidden_size
    projected = self._product(params, inputs, kernel, "kernel")
    x_r, x_z, x_n = jnp.split(projected + follow(bias, projected), 3, axis=-1)
    # The candidate sees the state through the reset gate, so the recurrent
    # kernel is applied in two blocks: (U_r, U_z) to h, then U_n to r * h.
    h_rz = self._product(params, h, recurrent_kernel[:, : 2 * size], "recurrent_kernel")
    r = jax.nn.sigmoid(x_r + h_rz[..., :size])
    z = jax.nn.sigmoid(x_z + h_rz[..., size:])
    h_n = self._product(params, r * h, recurrent_kernel[:, 2 * size :], "recurrent_kernel")
    n = jnp.tanh(x_n + h_n)
    hidden = (1 - z) * h + z * n
    return (self._output(hidden), GRUState(hidden=hidden)), params
