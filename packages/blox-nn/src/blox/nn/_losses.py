"""`softmax_cross_entropy`: the classification loss, computed in float32.

Example:
  >>> import jax.numpy as jnp
  >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], jnp.bfloat16)
  >>> losses = softmax_cross_entropy(logits, jnp.array([0, 2]))
  >>> losses.dtype, [round(v, 4) for v in losses.tolist()]
  (dtype('float32'), [0.2395, 1.0986])
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from blox.nn._out_sharding import broadcast_like, explicit_spec

__all__ = ["softmax_cross_entropy"]

_WHERE = "softmax_cross_entropy"


def softmax_cross_entropy(logits: Any, labels: Any) -> jax.Array:
  """The cross-entropy between `softmax(logits)` and integer `labels`, per example.

  `-log_softmax(logits)[..., label]` for each example. The logits are cast to
  float32 (float64 stays float64) before the log-sum-exp, whatever their
  dtype: in bfloat16 the log-sum-exp over a large vocabulary loses most of
  its digits, so a model computing in bfloat16 still gets a float32 loss and
  float32 gradients into its logits' cast. Average the result yourself
  (weighting out padding, for instance).

  A label outside `[0, classes)` gives a NaN loss for its example, so the
  mistake shows instead of silently reading another class (it cannot be
  checked eagerly under `jax.jit`, where labels are abstract).

  Args:
    logits: floating point `[..., classes]`.
    labels: integers `[...]`, the batch shape of `logits`.

  Returns:
    The losses `[...]`, float32 (float64 for float64 logits).

  Raises:
    TypeError: `logits` are not floating point, or `labels` not integers.
    ValueError: the shapes do not agree (`labels.shape != logits.shape[:-1]`).
  """
  logits_dtype = jnp.result_type(logits)
  if not jnp.issubdtype(logits_dtype, jnp.floating):
    raise TypeError(
        f"{_WHERE}: logits must be floating point, got dtype {logits_dtype}; cast"
        " them first, e.g. logits.astype(jnp.float32)."
    )
  labels_dtype = jnp.result_type(labels)
  if not jnp.issubdtype(labels_dtype, jnp.integer):
    raise TypeError(
        f"{_WHERE}: labels must be integer class ids, got dtype {labels_dtype};"
        " for one-hot or soft targets compute -(targets * log_softmax(logits)).sum(-1)."
    )
  logits_shape, labels_shape = jnp.shape(logits), jnp.shape(labels)
  if not logits_shape or labels_shape != logits_shape[:-1]:
    raise ValueError(
        f"{_WHERE}: labels {labels_shape} must have the shape of logits"
        f" {logits_shape} without its last (classes) axis."
    )
  x = jnp.asarray(logits).astype(jnp.promote_types(logits_dtype, jnp.float32))
  labels = jnp.asarray(labels)
  classes = logits_shape[-1]
  in_range = (labels >= 0) & (labels < classes)
  index = jnp.clip(labels, 0, classes - 1)
  if explicit_spec(x) is None:
    picked = jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]
  else:
    # Classes sharded over an Explicit mesh axis: a gather along them would
    # need them gathered first; the one-hot sum reduces the shards instead
    # (the same value: one nonzero term).
    hot = broadcast_like(index[..., None] == jnp.arange(classes), x)
    picked = jnp.sum(jnp.where(hot, x, 0.0), axis=-1)
  losses = jax.nn.logsumexp(x, axis=-1) - picked
  return jnp.where(in_range, losses, jnp.nan)
