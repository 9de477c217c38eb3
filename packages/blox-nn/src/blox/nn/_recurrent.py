"""What the recurrent cells (LSTM, GRU) share: arguments, weights and zero state.

A gated cell with `gates` gate blocks has three params on its own node:
`kernel [features, gates * hidden]` (applied to the inputs),
`recurrent_kernel [hidden, gates * hidden]` (applied to the previous hidden
state) and `bias [gates * hidden]`, each with its own init and metadata.

Precision: the params are created in `param_dtype` (else the policy's, else
float32); a step computes in `dtype` (else the policy's `compute_dtype`, else
the inputs' dtype promoted with the params' and the state's), and the state
it returns stays in that compute dtype, so that a `jax.lax.scan` carry keeps
its dtype; only the step's outputs are cast to the policy's `output_dtype`.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.nn._precision import Dtypes
  >>> zero_hidden(jnp.ones((2, 3), jnp.bfloat16), 4, Dtypes(None, None, None)).dtype
  dtype('float32')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Graph, RecurrenceBase
from blox.nn._checks import check_feature_axis, check_float_inputs, check_positive_int
from blox.nn._layer import kernel_and_bias
from blox.nn._precision import (
    Dtypes,
    check_dtype,
    float32_init,
    resolve_dtypes,
    to_compute,
    to_output,
)
from blox.nn.initializers import lecun_normal, orthogonal, zeros
from blox.params import Initializer, KeySource, Params

__all__ = ["GatedCell", "zero_hidden"]


def zero_hidden(inputs: jax.Array, hidden_size: int, dtypes: Dtypes) -> jax.Array:
  """Zeros `[*batch, hidden_size]` for one step of inputs `[*batch, features]`.

  In the compute dtype; without one, in the inputs' dtype promoted with the
  params' (float32 unless `param_dtype` says otherwise), the dtype a step's
  state promotes to, so that a `lax.scan` carry keeps its dtype.
  """
  shape = jnp.shape(inputs)[:-1] + (hidden_size,)
  if dtypes.compute is not None:
    return jnp.zeros(shape, dtypes.compute)
  param = jnp.float32 if dtypes.param is None else dtypes.param
  return jnp.zeros(shape, jnp.result_type(inputs, param))


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
      param_dtype: Any = None,
      dtype: Any = None,
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
    self.param_dtype = check_dtype(param_dtype, "param_dtype", self.where())
    self.dtype = check_dtype(dtype, "dtype", self.where())

  def _dtypes(self) -> Dtypes:
    return resolve_dtypes(self, self.param_dtype, self.dtype)

  def _weights(
      self, params: Params, inputs: jax.Array, state: Sequence[jax.Array]
  ) -> tuple[jax.Array, list[jax.Array], list[jax.Array], Params]:
    """`(inputs, [kernel, recurrent_kernel, bias], state, params)` for one step,
    everything cast to the step's compute dtype.

    Checks the inputs first (floating point, with a feature axis). The
    kernel and the bias are created before the recurrent kernel.
    """
    where = self.where()
    check_feature_axis(inputs, where)
    check_float_inputs(inputs, where)
    dtypes = self._dtypes()
    width = self.num_gates * self.hidden_size
    kernel, bias, params = kernel_and_bias(
        self, params, kernel_shape=(inputs.shape[-1], width), bias_shape=(width,),
        kernel_init=self.kernel_init, bias_init=self.bias_init, rng=self.rng,
        kernel_metadata=self.kernel_metadata, bias_metadata=self.bias_metadata,
        param_dtype=dtypes.param,
    )
    assert bias is not None  # use_bias is on: a gated cell always has a bias
    recurrent_kernel: jax.Array
    recurrent_kernel, params = self.get_param(
        params, "recurrent_kernel", (self.hidden_size, width),
        init=float32_init(self.recurrent_kernel_init, dtypes.param), param_dtype=dtypes.param,
        metadata=self.recurrent_kernel_metadata, rng=self.rng,
    )
    inputs, *rest = to_compute(dtypes, inputs, kernel, recurrent_kernel, bias, *state)
    return inputs, rest[:3], rest[3:], params

  def _output(self, hidden: jax.Array) -> jax.Array:
    """A step's output: its new hidden state in the policy's output dtype."""
    return to_output(self._dtypes(), hidden)

  def _dot(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x @ kernel` at the cell's precision."""
    return jnp.dot(x, kernel, precision=self.precision)
