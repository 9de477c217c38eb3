"""The settings most layers share, declared once, and the steps built on them.

`Layer` declares `param_dtype` and `dtype` (see `_precision`); `KernelLayer`
adds what every layer with a kernel and an optional bias takes (`rng`,
`use_bias`, the initializers and metadata, `precision`) and the two steps
those layers share: getting the kernel and bias (`kernel_and_bias`) and
multiplying by the kernel (`contract`, the one contraction path). `Linear`,
`Conv` and `ConvTranspose` are `KernelLayer`s; the recurrent cells and
attention, whose params are laid out otherwise, are `Layer`s.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> class Affine(KernelLayer):
  ...   "x @ kernel + bias, to the width of the input."
  ...   def __call__(self, params, x):
  ...     kernel, bias, params = self.kernel_and_bias(
  ...         params, (x.shape[-1], x.shape[-1]), (x.shape[-1],))
  ...     return self.contract(params, x, kernel, '...i,io->...o') + bias, params
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> affine = Affine(graph.child('affine'), rng=rng, precision='highest')
  >>> y, params = affine(rng.seed(Params(), seed=0), jnp.ones(3))
  >>> affine
  Affine(rng=Rng@net/rng, precision='highest')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

from blox.graph import Module, setting
from blox.nn._contract import ConvDimensions, contract
from blox.nn._precision import Dtypes, check_dtype, float32_init, resolve_dtypes
from blox.nn.initializers import lecun_normal, zeros
from blox.params import Initializer, KeySource, Params

__all__ = ["KernelLayer", "Layer", "kernel_and_bias"]


class Layer(Module):
  """A module that creates params and computes in a dtype of its choosing."""

  param_dtype: Any = setting(
      default=None, check=check_dtype,
      doc="the dtype of the params when they are created; None: the policy's"
      " `param_dtype` (`Module.policy()`), else float32.",
  )
  dtype: Any = setting(
      default=None, check=check_dtype,
      doc="the dtype of the computation; None: the policy's `compute_dtype`,"
      " else the inputs' dtype promoted with the params'. Outputs come out in"
      " the policy's `output_dtype` when it has one, else in this dtype.",
  )

  def dtypes(self) -> Dtypes:
    """The dtypes of one call: these settings, else the module's policy."""
    return resolve_dtypes(self, self.param_dtype, self.dtype)


class KernelLayer(Layer):
  """A layer with a kernel and, unless `use_bias=False`, a bias."""

  rng: KeySource = setting(doc="the key source for initialisation.")
  use_bias: bool = setting(default=True, doc="whether to add a bias.")
  kernel_init: Initializer = setting(
      default=lecun_normal(), doc="the kernel's initializer `(key, shape, dtype) -> array`.")
  bias_init: Initializer = setting(default=zeros, doc="the bias's initializer.")
  kernel_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the kernel, e.g. `{'sharding': (None, 'model')}`.")
  bias_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the bias.")
  precision: jax.lax.PrecisionLike = setting(
      default=None, doc="the precision of the product (`jax.lax.Precision`).")

  def kernel_and_bias(
      self, params: Params, kernel_shape: Sequence[int], bias_shape: Sequence[int]
  ) -> tuple[jax.Array, jax.Array | None, Params]:
    """`(kernel, bias, params)`, created on first use in the params' dtype;
    `bias` is None without `use_bias`."""
    return kernel_and_bias(
        self, params, kernel_shape=kernel_shape, bias_shape=bias_shape,
        kernel_init=self.kernel_init, bias_init=self.bias_init, rng=self.rng,
        use_bias=self.use_bias, kernel_metadata=self.kernel_metadata,
        bias_metadata=self.bias_metadata, param_dtype=self.dtypes().param,
    )

  def contract(
      self,
      params: Params,
      inputs: jax.Array,
      kernel: jax.Array,
      equation: str | None = None,
      *,
      conv: ConvDimensions | None = None,
  ) -> jax.Array:
    """`inputs` times the kernel through `blox.nn.contract`, at `precision`."""
    return contract(
        inputs, kernel, equation, conv=conv, module=self, params=params,
        weight_name="kernel", precision=self.precision,
    )


def kernel_and_bias(
    module: Module,
    params: Params,
    *,
    kernel_shape: Sequence[int],
    bias_shape: Sequence[int],
    kernel_init: Initializer,
    bias_init: Initializer,
    rng: KeySource | None,
    use_bias: bool = True,
    kernel_metadata: Mapping[str, Any] | None = None,
    bias_metadata: Mapping[str, Any] | None = None,
    kernel_name: str | tuple[str, ...] = "kernel",
    bias_name: str | tuple[str, ...] = "bias",
    param_dtype: Any = None,
) -> tuple[jax.Array, jax.Array | None, Params]:
  """Gets (creating on first use) `module`'s kernel and, with `use_bias`, its bias.

  The kernel is created before the bias, each drawing one key from `rng`.
  With `param_dtype` both are created in it (a 16-bit one is initialised in
  float32, then rounded, see `float32_init`); None creates float32 params
  and accepts existing params of any dtype. Attention's projections, whose
  settings are per projection, call this directly.

  Returns:
    `(kernel, bias, params)`; `bias` is None when `use_bias` is False.
  """
  kernel: jax.Array
  kernel, params = module.get_param(
      params, kernel_name, kernel_shape, init=float32_init(kernel_init, param_dtype),
      param_dtype=param_dtype, metadata=kernel_metadata, rng=rng,
  )
  if not use_bias:
    return kernel, None, params
  bias: jax.Array
  bias, params = module.get_param(
      params, bias_name, bias_shape, init=float32_init(bias_init, param_dtype),
      param_dtype=param_dtype, metadata=bias_metadata, rng=rng,
  )
  return kernel, bias, params
