"""Kernel-and-optional-bias creation, shared by every layer that has them.

`Linear`, `Conv`, the attention projections and the recurrent cells all make
a kernel and, unless `use_bias=False`, a bias, each from its own init and
metadata. `kernel_and_bias` is that step, written once.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph, Module
  >>> from blox.params import Params
  >>> from blox.nn import Rng, initializers
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> class Affine(Module):
  ...   def __call__(self, params, x):
  ...     kernel, bias, params = kernel_and_bias(
  ...         self, params, kernel_shape=(x.shape[-1], 2), bias_shape=(2,),
  ...         kernel_init=initializers.lecun_normal(), bias_init=initializers.zeros,
  ...         rng=rng)
  ...     return x @ kernel + bias, params
  >>> y, params = Affine(graph.child('affine'))(rng.seed(Params(), seed=0), jnp.ones(3))
  >>> [path[-1] for path in params][2:]
  ['kernel', 'bias']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

from blox.graph import Module
from blox.nn._precision import float32_init
from blox.params import Initializer, KeySource, Params

__all__ = ["kernel_and_bias"]


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
  and accepts existing params of any dtype.

  Returns:
    `(kernel, bias, params)`; `bias` is None when `use_bias` is False.
  """
  kernel: jax.Array
  kernel, params = module.get_param(
      params, kernel_name, kernel_shape, float32_init(kernel_init, param_dtype),
      dtype=param_dtype,
      metadata=kernel_metadata, rng=rng,
  )
  if not use_bias:
    return kernel, None, params
  bias: jax.Array
  bias, params = module.get_param(
      params, bias_name, bias_shape, float32_init(bias_init, param_dtype),
      dtype=param_dtype,
      metadata=bias_metadata, rng=rng,
  )
  return kernel, bias, params
