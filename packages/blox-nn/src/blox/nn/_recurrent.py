"""What the recurrent cells (LSTM, GRU) share: arguments, weights and zero state.

A gated cell with `gates` gate blocks has three params on its own node:
`kernel [features, gates * hidden]` (applied to the inputs),
`recurrent_kernel [hidden, gates * hidden]` (applied to the previous hidden
state) and `bias [gates * hidden]`, each with its own init and metadata.

Example:
  >>> import jax.numpy as jnp
  >>> zero_hidden(jnp.ones((2, 3), jnp.bfloat16), 4).dtype
  dtype('float32')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Graph, RecurrenceBase
from blox.nn._checks import check_feature_axis, check_float_inputs, check_positive_int
from blox.nn._dense import kernel_and_bias
from blox.nn.initializers import lecun_normal, orthogonal, zeros
from blox.params import Initializer, KeySource, Params

__all__ = ["GatedCell", "zero_hidden"]


def zero_hidden(inputs: jax.Array, hidden_size: int) -> jax.Array:
  """Zeros `[*batch, hidden_size]` for one step of inputs `[*batch, features]`.

  The gate kernels are float32, so a step's outputs promote to at least that;
  the state starts in that dtype so that a `lax.scan` carry keeps its dtype.
  """
  shape = jnp.shape(inputs)[:-1] + (hidden_size,)
  return jnp.zeros(shape, jnp.result_type(inputs, jnp.float32))


class GatedCell(RecurrenceBase):
  """The constructor and weights of a cell with `num_gates` gate blocks.

  `LSTM` and `GRU` take exactly these arguments (documented on each); they
  set `num_gates` and write the step (`__call__`) and `initial_state`.
  """

  num_gates: int

  def __init__(
      self,
      graph: Graph,
      hidden_size: int,
      *,
      rng: KeySource,
      is_static: bool = False,
      kernel_init: Initializer = lecun_normal(),
      recurrent_kernel_init: Initializer = orthogonal(),
      bias_init: Initializer = zeros,
      kernel_metadata: Mapping[str, Any] | None = None,
      recurrent_kernel_metadata: Mapping[str, Any] | None = None,
      bias_metadata: Mapping[str, Any] | None = None,
      precision: jax.lax.PrecisionLike = None,
  ) -> None:
    super().__init__(graph, is_static=is_static)
    check_positive_int(hidden_size, "hidden_size", self.where())
    self.hidden_size = hidden_size
    self.rng = rng
    self.kernel_init = kernel_init
    self.recurrent_kernel_init = recurrent_kernel_init
    self.bias_init = bias_init
    self.kernel_metadata = kernel_metadata
    self.recurrent_kernel_metadata = recurrent_kernel_metadata
    self.bias_metadata = bias_metadata
    self.precision = precision

  def _weights(
      self, params: Params, inputs: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array, Params]:
    """`(kernel, recurrent_kernel, bias, params)` for one step of `inputs`.

    Checks the inputs first (floating point, with a feature axis). The
    kernel and the bias are created before the recurrent kernel.
    """
    where = self.where()
    check_feature_axis(inputs, where)
    check_float_inputs(inputs, where)
    width = self.num_gates * self.hidden_size
    kernel, bias, params = kernel_and_bias(
        self, params, kernel_shape=(inputs.shape[-1], width), bias_shape=(width,),
        kernel_init=self.kernel_init, bias_init=self.bias_init, rng=self.rng,
        kernel_metadata=self.kernel_metadata, bias_metadata=self.bias_metadata,
    )
    assert bias is not None  # use_bias is on: a gated cell always has a bias
    recurrent_kernel: jax.Array
    recurrent_kernel, params = self.get_param(
        params, "recurrent_kernel", (self.hidden_size, width),
        self.recurrent_kernel_init, metadata=self.recurrent_kernel_metadata, rng=self.rng,
    )
    return kernel, recurrent_kernel, bias, params

  def _dot(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x @ kernel` at the cell's precision."""
    return jnp.dot(x, kernel, precision=self.precision)
