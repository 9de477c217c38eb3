"""The per-head projections of attention, as functions on the owning module.

`project_to_heads` maps `[..., in]` to `[..., heads, head_dim]` with a kernel
`[in, heads, head_dim]`; `merge_heads` maps `[..., heads, head_dim]` back to
`[..., out]` with a kernel `[heads, head_dim, out]`; `normalize_heads`
RMS-normalises each head (query/key normalisation). They are functions, not
modules: their params are created on the calling module under a tuple name,
`(name, 'kernel')`, so an attention layer owns all its params itself and
shows as one module (no helper classes reading their configuration back
from an owner). Every size and option is an explicit argument. The products
go through `blox.nn.contract`, under the weight names `(name, 'kernel')`, so
contraction hooks see them as they see a `Linear`'s.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph, Module
  >>> from blox.params import Params
  >>> from blox.nn import Rng, initializers
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> class Heads(Module):
  ...   def __call__(self, params, x):
  ...     return project_to_heads(
  ...         self, params, 'query', x, num_heads=2, head_dim=3,
  ...         kernel_init=initializers.lecun_normal(), bias_init=initializers.zeros,
  ...         rng=rng)
  >>> y, params = Heads(graph.child('heads'))(rng.seed(Params(), seed=0), jnp.ones((5, 4)))
  >>> y.shape, [path[2:] for path in params][-2:]
  ((5, 2, 3), [('query', 'kernel'), ('query', 'bias')])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Module
from blox.nn._contract import contract
from blox.nn._layer import kernel_and_bias
from blox.nn._out_sharding import follow
from blox.params import Initializer, KeySource, Params

__all__ = ["merge_heads", "normalize_heads", "project_to_heads"]


def _flat_init(init: Initializer, fan_in_dims: int) -> Initializer:
  """Runs `init` on the 2-D `(fan_in, fan_out)` shape and reshapes the result.

  Variance-scaling initializers read fan-in and fan-out from the last two axes;
  on a per-head kernel such as `[in, heads, head_dim]` they would take `heads`
  as the fan-in. Initialising the flat matrix keeps their scale the one a
  `Linear` of the same size would get. `fan_in_dims=0` flattens to 1-D (a
  per-head bias).
  """

  def flat(key: Any, shape: Any, dtype: Any = jnp.float32) -> Any:
    fan_in = math.prod(shape[:fan_in_dims])
    fan_out = math.prod(shape[fan_in_dims:])
    flat_shape = (fan_in, fan_out) if fan_in_dims else (fan_out,)
    return jnp.reshape(init(key, flat_shape, dtype), shape)

  return flat


def _cast(dtype: Any, *arrays: jax.Array | None) -> list[Any]:
  """`arrays` (None stays None) cast to `dtype`; unchanged when it is None, so
  that the product promotes them."""
  if dtype is None:
    return list(arrays)
  return [None if a is None else a.astype(dtype) for a in arrays]


def project_to_heads(
    module: Module,
    params: Params,
    name: str,
    inputs: jax.Array,
    *,
    num_heads: int,
    head_dim: int,
    kernel_init: Initializer,
    bias_init: Initializer,
    rng: KeySource | None,
    use_bias: bool = True,
    kernel_metadata: Mapping[str, Any] | None = None,
    bias_metadata: Mapping[str, Any] | None = None,
    precision: jax.lax.PrecisionLike = None,
    param_dtype: Any = None,
    dtype: Any = None,
) -> tuple[jax.Array, Params]:
  """`inputs [..., in]` projected to `[..., num_heads, head_dim]`.

  Params `module`'s `(name, 'kernel')` `[in, num_heads, head_dim]` and, with
  `use_bias`, `(name, 'bias')` `[num_heads, head_dim]`, created in that order
  (one key each from `rng`) with the flat-shape initializers of `_flat_init`.
  The params are created in `param_dtype` (None: float32); with `dtype`, the
  inputs and params are cast to it before the product.
  """
  kernel, bias, params = kernel_and_bias(
      module, params,
      kernel_shape=(inputs.shape[-1], num_heads, head_dim),
      bias_shape=(num_heads, head_dim),
      kernel_init=_flat_init(kernel_init, 1), bias_init=_flat_init(bias_init, 0),
      rng=rng, use_bias=use_bias,
      kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
      kernel_name=(name, "kernel"), bias_name=(name, "bias"),
      param_dtype=param_dtype,
  )
  inputs, kernel, bias = _cast(dtype, inputs, kernel, bias)
  outputs = contract(
      inputs, kernel, "...i,ihd->...hd", module=module, params=params,
      weight_name=(name, "kernel"), precision=precision,
  )
  if bias is not None:
    outputs = outputs + follow(bias, outputs)
  return outputs, params


def merge_heads(
    module: Module,
    params: Params,
    name: str,
    inputs: jax.Array,
    *,
    output_size: int,
    kernel_init: Initializer,
    bias_init: Initializer,
    rng: KeySource | None,
    use_bias: bool = True,
    kernel_metadata: Mapping[str, Any] | None = None,
    bias_metadata: Mapping[str, Any] | None = None,
    precision: jax.lax.PrecisionLike = None,
    param_dtype: Any = None,
    dtype: Any = None,
) -> tuple[jax.Array, Params]:
  """`inputs [..., heads, head_dim]` projected to `[..., output_size]`.

  Params `module`'s `(name, 'kernel')` `[heads, head_dim, output_size]` and,
  with `use_bias`, `(name, 'bias')` `[output_size]`, created in that order.
  The kernel's initializer sees the flat `(heads * head_dim, output_size)`.
  `param_dtype` and `dtype` as for `project_to_heads`.
  """
  kernel, bias, params = kernel_and_bias(
      module, params,
      kernel_shape=(*inputs.shape[-2:], output_size),
      bias_shape=(output_size,),
      kernel_init=_flat_init(kernel_init, 2), bias_init=bias_init,
      rng=rng, use_bias=use_bias,
      kernel_metadata=kernel_metadata, bias_metadata=bias_metadata,
      kernel_name=(name, "kernel"), bias_name=(name, "bias"),
      param_dtype=param_dtype,
  )
  inputs, kernel, bias = _cast(dtype, inputs, kernel, bias)
  outputs = contract(
      inputs, kernel, "...hd,hdo->...o", module=module, params=params,
      weight_name=(name, "kernel"), precision=precision,
  )
  if bias is not None:
    outputs = outputs + follow(bias, outputs)
  return outputs, params


def normalize_heads(
    module: Module,
    params: Params,
    name: str,
    inputs: jax.Array,
    *,
    scale_init: Initializer,
    scale_metadata: Mapping[str, Any] | None = None,
    epsilon: float = 1e-6,
    scale_offset: float = 0.0,
    param_dtype: Any = None,
) -> tuple[jax.Array, Params]:
  """`inputs [..., heads, head_dim]` RMS-normalised over head_dim, times a scale.

  Param `module`'s `(name, 'scale')` `[head_dim]`, shared by the heads and
  created with `scale_init(None, shape, dtype)` (no key is drawn, as for
  `RMSNorm`), in `param_dtype` (None: float32). The statistics are computed
  in float32 at least; the result has the inputs' dtype. The factor is
  `scale_offset + scale`, as for `RMSNorm`.
  """
  scale: jax.Array
  scale, params = module.get_param(
      params, (name, "scale"), (inputs.shape[-1],), init=scale_init, param_dtype=param_dtype,
      metadata=scale_metadata,
  )
  dtype = inputs.dtype
  x = inputs.astype(jnp.promote_types(dtype, jnp.float32))
  mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  normalized = x * jax.lax.rsqrt(mean_square + jnp.asarray(epsilon, x.dtype))
  factor = scale.astype(x.dtype)
  if scale_offset:
    # Skipped at 0.0, so that the plain scale stays bit for bit what it was.
    factor = jnp.asarray(scale_offset, x.dtype) + factor
  return (normalized * follow(factor, normalized)).astype(dtype), params
