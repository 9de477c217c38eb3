"""What the recurrent cells (LSTM, GRU) share: settings, weights and zero state.

A gated cell with `gates` gate blocks has three params on its own node:
`kernel [features, gates * hidden]` (applied to the inputs),
`recurrent_kernel [hidden, gates * hidden]` (applied to the previous hidden
state) and `bias [gates * hidden]`, each with its own init and metadata.
Both products go through `blox.nn.contract`, with the weight names
`'kernel'` and `'recurrent_kernel'`, so contraction hooks see them.

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
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from blox.graph import RecurrenceBase, setting
from blox.nn._checks import check_feature_axis, check_float_inputs, check_positive_int
from blox.nn._contract import contract
from blox.nn._layer import Layer, kernel_and_bias
from blox.nn._precision import Dtypes, float32_init, to_compute, to_output
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


class GatedCell(RecurrenceBase, Layer):
  """The settings and weights of a cell with `num_gates` gate blocks.

  `LSTM` and `GRU` declare no settings of their own: they set `num_gates` and
  write the step (`__call__`) and `initial_state`.
  """

  num_gates: ClassVar[int]

  hidden_size: int = setting(
      kw_only=False, check=check_positive_int,
      doc="the size of the hidden state and of the outputs.")
  rng: KeySource = setting(doc="the key source for initialisation.")
  kernel_init: Initializer = setting(
      default=lecun_normal(), doc="the input kernel's initializer `(key, shape, dtype) -> array`.")
  recurrent_kernel_init: Initializer = setting(
      default=orthogonal(), doc="the recurrent kernel's initializer.")
  bias_init: Initializer = setting(default=zeros, doc="the bias's initializer.")
  kernel_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the input kernel, e.g. `{'sharding': (None, 'model')}`.")
  recurrent_kernel_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the recurrent kernel.")
  bias_metadata: Mapping[str, Any] | None = setting(default=None, doc="metadata for the bias.")
  precision: jax.lax.PrecisionLike = setting(
      default=None, doc="the precision of the matrix products (`jax.lax.Precision`).")

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
    dtypes = self.dtypes()
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
    return to_output(self.dtypes(), hidden)

  def _product(
      self, params: Params, x: jax.Array, weight: jax.Array, weight_name: str
  ) -> jax.Array:
    """`x @ weight` through `contract`, at the cell's precision.

    `weight` is the param `weight_name` (`'kernel'` or `'recurrent_kernel'`)
    or a block of its columns; hooks see it as given.
    """
    return contract(
        x, weight, "...i,io->...o", module=self, params=params, weight_name=weight_name,
        precision=self.precision,
    )
