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

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module
from blox.nn._checks import check_feature_axis, check_float_inputs, check_positive_int
from blox.nn._dense import kernel_and_bias
from blox.nn._precision import check_dtype, resolve_dtypes, to_compute, to_output
from blox.nn.initializers import lecun_normal, zeros
from blox.params import Initializer, KeySource, Params

__all__ = ["Linear"]


class Linear(Module):
  """A dense layer: kernel `(in, out)`, created before the bias `(out,)`.

  Args:
    graph: the node this layer binds to.
    output_size: the size of the last output axis.
    rng: the key source for initialisation.
    use_bias: whether to add a bias.
    kernel_init: the kernel's initializer `(key, shape, dtype) -> array`.
    bias_init: the bias's initializer.
    kernel_metadata: metadata for the kernel, e.g.
      `{'sharding': (None, 'model')}`.
    bias_metadata: metadata for the bias.
    precision: the precision of the matrix product (`jax.lax.Precision`).
    param_dtype: the dtype of the params when they are created; None: the
      policy's `param_dtype` (`Module.policy()`), else float32.
    dtype: the dtype of the computation; None: the policy's `compute_dtype`,
      else the inputs' dtype promoted with the params'. The outputs come out
      in the policy's `output_dtype` when it has one, else in this dtype.

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

  def __init__(
      self,
      graph: Graph,
      output_size: int,
      *,
      rng: KeySource,
      use_bias: bool = True,
      kernel_init: Initializer = lecun_normal(),
      bias_init: Initializer = zeros,
      kernel_metadata: Mapping[str, Any] | None = None,
      bias_metadata: Mapping[str, Any] | None = None,
      precision: jax.lax.PrecisionLike = None,
      param_dtype: Any = None,
      dtype: Any = None,
  ) -> None:
    super().__init__(graph)
    check_positive_int(output_size, "output_size", self.where())
    self.output_size = output_size
    self.rng = rng
    self.use_bias = use_bias
    self.kernel_init = kernel_init
    self.bias_init = bias_init
    self.kernel_metadata = kernel_metadata
    self.bias_metadata = bias_metadata
    self.precision = precision
    self.param_dtype = check_dtype(param_dtype, "param_dtype", self.where())
    self.dtype = check_dtype(dtype, "dtype", self.where())

  def __call__(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Applies the layer to floating-point `inputs` of shape `(..., in)`."""
    where = self.where()
    check_feature_axis(inputs, where)
    check_float_inputs(inputs, where)
    dtypes = resolve_dtypes(self, self.param_dtype, self.dtype)
    kernel, bias, params = kernel_and_bias(
        self, params, kernel_shape=(inputs.shape[-1], self.output_size),
        bias_shape=(self.output_size,), kernel_init=self.kernel_init,
        bias_init=self.bias_init, rng=self.rng, use_bias=self.use_bias,
        kernel_metadata=self.kernel_metadata, bias_metadata=self.bias_metadata,
        param_dtype=dtypes.param,
    )
    inputs, kernel, bias = to_compute(dtypes, inputs, kernel, bias)
    outputs = jnp.dot(inputs, kernel, precision=self.precision)
    if bias is not None:
      outputs = outputs + bias
    return to_output(dtypes, outputs), params
