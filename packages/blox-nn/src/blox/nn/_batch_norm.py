"""`BatchNorm`: normalisation with batch statistics and running averages.

Training normalises with the statistics of the current batch and folds them
into running averages, kept in `Params` as non-trainable state; evaluation
normalises with the running averages and leaves params as they are.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> bn = BatchNorm(Graph('net').child('bn'), momentum=0.5)
  >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
  >>> y, params = bn(Params(), x, is_training=True)
  >>> params[('net', 'bn', 'running_mean')].value.tolist()
  [0.5, 10.0]
  >>> trainable, state = params.split()  # running statistics get no gradient
  >>> sorted(path[-1] for path in state)
  ['running_mean', 'running_var']
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import setting
from blox.nn._checks import check_feature_axis, check_float_inputs, check_is_training
from blox.nn._layer import Layer
from blox.nn._precision import float32_init
from blox.nn._stats import check_epsilon, compute_dtypes, pmean
from blox.nn.initializers import ones, zeros
from blox.nn._out_sharding import follow
from blox.params import Initializer, Params

__all__ = ["BatchNorm"]


def _check_momentum(value: Any, name: str, where: str) -> Any:
  """`value`; raises ValueError unless it is a number in [0, 1]."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise ValueError(f"{where}: {name} must be a number in [0, 1], got {value!r}.")
  return value


class BatchNorm(Layer):
  """`(x - mean) / sqrt(var + epsilon) * scale + bias`, statistics over the batch.

  Statistics are taken per feature (the last axis) over every other axis, so
  `(batch, features)`, `(batch, time, features)` and `(batch, height, width,
  channels)` inputs all work. `var` is the biased variance (divided by the
  number of values), both for normalising and for the running average.

  Inputs must be floating point. Params, all of shape `(features,)`: `scale`
  (ones) and `bias` (zeros), trainable; `running_mean` (zeros) and
  `running_var` (ones), created with
  `trainable=False` so that `params.split()` keeps them out of the gradient
  half. They are created on the first call, training or not.

  - `is_training=True`: normalises with the batch statistics and returns params
    with `running = momentum * running + (1 - momentum) * batch` for both the
    mean and the variance. The written values pass through
    `jax.lax.stop_gradient`, so no gradient flows into them even when the
    running statistics are differentiated by mistake.
  - `is_training=False`: normalises with the running statistics and returns
    the params it was given.

  Data-parallel training: with `axis_name`, the batch statistics are averaged
  across that named axis (`jax.lax.pmean` of the mean, then of the mean of
  squared deviations from that global mean), so every device or `vmap` lane
  normalises with, and records, the statistics of the whole global batch.
  This assumes equal per-shard batch sizes. Under `jax.vmap(...,
  axis_name='batch')` each lane may then see a single example. Training with
  an `axis_name` must run inside `jax.vmap` or `jax.shard_map` with that axis
  name bound; elsewhere it raises a `NameError` naming this layer
  (evaluation reads the running averages and needs no axis).

  The layer has no key source, so its initializers are called with
  `key=None`. `param_dtype` is the dtype `scale` and `bias` are created in;
  the running statistics are always created in float32, since averaging
  many small updates in a 16-bit float would lose them. `dtype` is the dtype
  of the outputs (without it, the policy's `compute_dtype`, else the inputs'
  dtype; a policy's `output_dtype` wins over both): the statistics and the
  normalisation itself are computed in float32 (or float64 for float64
  inputs) whatever this dtype.
  """

  momentum: float = setting(
      default=0.9, check=_check_momentum,
      doc="the weight of the old running value in each update, in [0, 1].")
  epsilon: float = setting(
      default=1e-5, check=check_epsilon, doc="added to the variance before the square root.")
  use_scale: bool = setting(default=True, doc="whether to learn a scale.")
  use_bias: bool = setting(default=True, doc="whether to learn a bias.")
  scale_init: Initializer = setting(
      default=ones, doc="the scale's initializer, called with `key=None`; so are the three below.")
  bias_init: Initializer = setting(default=zeros, doc="the bias's initializer.")
  running_mean_init: Initializer = setting(
      default=zeros, doc="the running mean's initializer.")
  running_var_init: Initializer = setting(
      default=ones, doc="the running variance's initializer.")
  scale_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the scale, e.g. `{'sharding': ('model',)}`.")
  bias_metadata: Mapping[str, Any] | None = setting(default=None, doc="metadata for the bias.")
  running_mean_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the running mean.")
  running_var_metadata: Mapping[str, Any] | None = setting(
      default=None, doc="metadata for the running variance.")
  axis_name: Hashable | None = setting(
      default=None, doc="the named axis the batch is split over, or None.")

  def _batch_statistics(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance per feature, over all axes but the last (and
    across `axis_name`)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    if self.axis_name is not None:
      mean = pmean(mean, self.axis_name, self.where())
    # The second pass uses the global mean, so averaging the local mean
    # squared deviations gives the global variance exactly.
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    if self.axis_name is not None:
      var = pmean(var, self.axis_name, self.where())
    return mean, var

  def __call__(
      self, params: Params, inputs: jax.Array, is_training: bool = True
  ) -> tuple[jax.Array, Params]:
    """Normalises `inputs` of shape `(..., features)`; returns `(outputs, params)`.

    `is_training` must be a Python bool: it chooses which computation is traced.
    """
    where = self.where()
    check_feature_axis(inputs, where)
    check_is_training(is_training, where)
    dtypes = self.dtypes()
    compute, output = compute_dtypes(check_float_inputs(inputs, where), dtypes)
    x = jnp.asarray(inputs, compute)
    features = (x.shape[-1],)
    running_mean, params = self.get_param(
        params, "running_mean", features, init=self.running_mean_init, trainable=False,
        metadata=self.running_mean_metadata,
    )
    running_var, params = self.get_param(
        params, "running_var", features, init=self.running_var_init, trainable=False,
        metadata=self.running_var_metadata,
    )
    if is_training:
      mean, var = self._batch_statistics(x)
      keep = jnp.asarray(self.momentum, compute)
      for name, running, batch in (("running_mean", running_mean, mean), ("running_var", running_var, var)):
        updated = keep * running.astype(compute) + (1 - keep) * batch
        params = self.set_param(params, name, jax.lax.stop_gradient(updated).astype(running.dtype))
    else:
      mean, var = running_mean.astype(compute), running_var.astype(compute)
    y = (x - mean) * jax.lax.rsqrt(var + jnp.asarray(self.epsilon, compute))
    if self.use_scale:
      scale, params = self.get_param(
          params, "scale", features, init=float32_init(self.scale_init, dtypes.param),
          param_dtype=dtypes.param,
          metadata=self.scale_metadata,
      )
      y = y * follow(scale.astype(compute), y)
    if self.use_bias:
      bias, params = self.get_param(
          params, "bias", features, init=float32_init(self.bias_init, dtypes.param),
          param_dtype=dtypes.param,
          metadata=self.bias_metadata,
      )
      y = y + follow(bias.astype(compute), y)
    return y.astype(output), params
