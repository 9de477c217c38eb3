"""`LayerNorm` and `RMSNorm`: per-example normalisation over the feature axis.

Both normalise over the last axis of each input, independently for every
other position. Inputs must be floating point. The statistics and the
normalisation are computed in float32 (or float64 for float64 inputs)
whatever the input and compute dtypes; the outputs take the policy's
`output_dtype`, else the compute dtype (`dtype`, else the policy's
`compute_dtype`), else the input's dtype. `param_dtype` (else the policy's,
else float32) is the dtype the learned scale and bias are created in.

Features sharded over a named axis (tensor parallelism inside `shard_map`, or
`vmap` over feature chunks): pass that axis as `axis_name`, and each
statistic is averaged across it with `jax.lax.pmean`, so every shard
normalises with the statistics of the whole feature axis. This assumes every
shard holds the same number of features, which even sharding guarantees.
Every call, the first (creating) one included, must then run where that axis
name is bound (inside `jax.vmap` or `jax.shard_map`); elsewhere it raises a
`NameError` naming the layer and the axis.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> norm = LayerNorm(Graph('net').child('norm'))
  >>> y, params = norm(Params(), jnp.array([[1.0, 2.0, 3.0]]))
  >>> [round(v, 3) for v in y[0].tolist()]
  [-1.225, 0.0, 1.225]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import setting
from blox.nn._checks import check_feature_axis, check_float_inputs
from blox.nn._layer import Layer
from blox.nn._precision import float32_init
from blox.nn._stats import check_epsilon, compute_dtypes, pmean
from blox.nn.initializers import ones, zeros
from blox.nn._out_sharding import follow
from blox.params import Initializer, Params

__all__ = ["LayerNorm", "RMSNorm"]


def _feature_mean(x: jax.Array, axis_name: Hashable | None, where: str) -> jax.Array:
  """The mean over the last axis, across all shards of it when `axis_name` is set."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  return mean if axis_name is None else pmean(mean, axis_name, where)


class _FeatureNorm(Layer):
  """What both norms share: the scale's settings, the input checks and how
  learned params are read.

  They have no key source, so their initializers are called with `key=None`
  and must not need a key (`ones`, `zeros` and `constant(...)` don't). Their
  `dtype` is the dtype of the outputs: the statistics stay in float32.
  """

  epsilon: float = setting(
      default=1e-5, check=check_epsilon,
      doc="added under the square root (to the variance, or to `RMSNorm`'s mean of squares).")
  use_scale: bool = setting(default=True, doc="whether to learn a scale.")
  scale_init: Initializer = setting(
      default=ones,
      doc="the scale's initializer `(key, shape, dtype) -> array`, called with `key=None`.")
  scale_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the scale, e.g. `{'sharding': ('model',)}`.")
  axis_name: Hashable | None = setting(
      default=None, doc="the named axis the features are sharded over, or None.")

  def _check(self, inputs: jax.Array) -> Any:
    """The dtype of `inputs`, once they are checked to be float with a feature axis."""
    check_feature_axis(inputs, self.where())
    return check_float_inputs(inputs, self.where())

  def _learned(
      self,
      params: Params,
      name: str,
      features: int,
      init: Initializer,
      metadata: Mapping[str, Any] | None,
      dtype: Any,
      param_dtype: Any,
  ) -> tuple[jax.Array, Params]:
    """The scale or bias: shape `(features,)`, stored in `param_dtype`, used in `dtype`."""
    value: jax.Array
    value, params = self.get_param(
        params, name, (features,), init=float32_init(init, param_dtype), param_dtype=param_dtype,
        metadata=metadata,
    )
    return value.astype(dtype), params


class LayerNorm(_FeatureNorm):
  """`(x - mean) / sqrt(var + epsilon) * scale + bias` over the last axis.

  `var` is the biased variance (divided by the number of features). Params
  `scale` (ones) and `bias` (zeros) have shape `(features,)`. The layer has
  no key source, so its initializers are called with `key=None` and must not
  need a key (`ones`, `zeros` and `constant(...)` don't). `dtype` is the
  dtype of the outputs (the statistics stay in float32); without it, the
  policy's `compute_dtype`, else the inputs' dtype. A policy's
  `output_dtype` wins over both.
  """

  use_bias: bool = setting(default=True, doc="whether to learn a bias.")
  bias_init: Initializer = setting(
      default=zeros, doc="the bias's initializer, called with `key=None`.")
  bias_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the bias.")

  def __call__(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Normalises `inputs` of shape `(..., features)`; returns `(outputs, params)`."""
    dtypes = self.dtypes()
    compute, output = compute_dtypes(self._check(inputs), dtypes)
    x = jnp.asarray(inputs, compute)
    mean = _feature_mean(x, self.axis_name, self.where())
    centered = x - mean
    # Variance from the centred values (a second pass), which stays accurate
    # when the mean is large compared with the spread; with axis_name it is
    # still exact, because the mean above is already the global one.
    var = _feature_mean(jnp.square(centered), self.axis_name, self.where())
    y = centered * jax.lax.rsqrt(var + jnp.asarray(self.epsilon, compute))
    if self.use_scale:
      scale, params = self._learned(
          params, "scale", x.shape[-1], self.scale_init, self.scale_metadata, compute,
          dtypes.param,
      )
      y = y * follow(scale, y)
    if self.use_bias:
      bias, params = self._learned(
          params, "bias", x.shape[-1], self.bias_init, self.bias_metadata, compute,
          dtypes.param,
      )
      y = y + follow(bias, y)
    return y.astype(output), params


def _check_offset(value: Any, name: str, where: str) -> Any:
  """`value`; raises unless it is a real number (a setting's check)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"{where}: {name} must be a number such as 0.0 or 1.0, got {value!r}.")
  return value


class RMSNorm(_FeatureNorm):
  """`x / sqrt(mean(x ** 2) + epsilon) * (scale_offset + scale)` over the last axis.

  Unlike `LayerNorm` it neither subtracts the mean nor adds a bias. The
  param `scale` (ones) has shape `(features,)`. Initializers and dtypes work
  as for `LayerNorm`. `scale_offset` is added to the learned scale (in
  float32, at least): Gemma's norm stores the scale as an offset from one,
  `RMSNorm(graph, scale_offset=1.0, scale_init=zeros)`.

  Example: Gemma's norm starts as the plain normalisation.
    >>> import jax.numpy as jnp
    >>> from blox.graph import Graph
    >>> from blox.params import Params
    >>> from blox.nn.initializers import zeros
    >>> norm = RMSNorm(Graph('net').child('norm'), scale_offset=1.0, scale_init=zeros)
    >>> y, params = norm(Params(), jnp.array([[3.0, 4.0]]))
    >>> [round(v, 3) for v in y[0].tolist()]
    [0.849, 1.131]
  """

  scale_offset: float = setting(
      default=0.0, check=_check_offset,
      doc="added to the learned scale: the outputs are the normalised inputs times"
      " `scale_offset + scale` (1.0 with `scale_init=zeros` for Gemma); needs `use_scale`.",
  )

  def __post_init__(self) -> None:
    self._check_offset_has_scale()

  def _check_offset_has_scale(self) -> None:
    """Raises unless a non-zero `scale_offset` has a scale to be added to."""
    if self.scale_offset and not self.use_scale:
      raise ValueError(
          f"{self.where()}: scale_offset={self.scale_offset} is added to the learned"
          " scale, but use_scale=False makes none; set use_scale=True, or leave"
          " scale_offset at 0.0."
      )

  def __call__(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
    """Normalises `inputs` of shape `(..., features)`; returns `(outputs, params)`."""
    dtypes = self.dtypes()
    compute, output = compute_dtypes(self._check(inputs), dtypes)
    x = jnp.asarray(inputs, compute)
    mean_square = _feature_mean(jnp.square(x), self.axis_name, self.where())
    y = x * jax.lax.rsqrt(mean_square + jnp.asarray(self.epsilon, compute))
    self._check_offset_has_scale()
    if self.use_scale:
      scale, params = self._learned(
          params, "scale", x.shape[-1], self.scale_init, self.scale_metadata, compute,
          dtypes.param,
      )
      if self.scale_offset:
        # Skipped at 0.0, so that the plain norm stays bit for bit what it was.
        scale = jnp.asarray(self.scale_offset, compute) + scale
      y = y * follow(scale, y)
    return y.astype(output), params
