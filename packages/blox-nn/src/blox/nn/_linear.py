"""`Linear`: an affine map over the last axis, `y = x @ kernel + bias`.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> linear = Linear(graph.child('linear'), output_size=4, rng=rng)
  >>> y, params = linear(rng.seed(Params(), seed=0), jnp.ones((2, 3)))
  >>> params[('net', 'linear', 'kernel')].value.shape
  (3, 4)
"""

from __future__ import annotations

import jax

from blox.graph import setting
from blox.nn._checks import check_feature_axis, check_float_inputs, check_positive_int
from blox.nn._layer import KernelLayer
from blox.nn._precision import to_compute, to_output
from blox.nn._out_sharding import follow
from blox.params import Params

__all__ = ["Linear"]


class Linear(KernelLayer):
  """A dense layer: kernel `(in, out)`, created before the bias `(out,)`.

  Example: float32 params, bfloat16 computation.
    >>> import jax.numpy as jnp
    >>> from blox.graph import Graph
    >>> from blox.params import Params
    >>> from blox.nn import Rng
    >>> graph = Graph('net')
    >>> rng = Rng(graph.child('rng'))
    >>> linear = Linear(graph.child('out'), 2, rng=rng, dtype=jnp.bfloat16)
    >>> y, params = linear(rng.seed(Params(), seed=0), jnp.ones(3))
    >>> y.dtype, params[('net', 'out', 'kernel')].value.dtype
    (dtype(bfloat16), dtype('float32'))
  """

  output_size: int = setting(
      kw_only=False, check=check_positive_int, doc="the size of the last output axis.")

  def __call__(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Applies the layer to floating-point `inputs` of shape `(..., in)`."""
    where = self.where()
    check_feature_axis(inputs, where)
    check_float_inputs(inputs, where)
    dtypes = self.dtypes()
    kernel, bias, params = self.kernel_and_bias(
        params, (inputs.shape[-1], self.output_size), (self.output_size,))
    inputs, kernel, bias = to_compute(dtypes, inputs, kernel, bias)
    outputs = self.contract(params, inputs, kernel, "...i,io->...o")
    if bias is not None:
      outputs = outputs + follow(bias, outputs)
    return to_output(dtypes, outputs), params
