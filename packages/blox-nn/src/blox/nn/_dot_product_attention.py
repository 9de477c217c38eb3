"""`dot_product_attention`: the attention math, `softmax(q k^T * scale) v`, on its own.

A pure function over per-head arrays, usable without any module; the
`MultiHeadAttention` layer projects its inputs to heads and calls the same
code. The layout is `[*batch, length, heads, head_dim]`, the one of
`jax.nn.dot_product_attention`, so that the two can be swapped behind one
call.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.nn import causal_mask
  >>> q = jnp.ones((2, 4, 3, 8))  # [batch, q_length, heads, head_dim]
  >>> kv = jax.random.normal(jax.random.key(0), (2, 4, 3, 8))
  >>> out = dot_product_attention(q, kv, kv, mask=causal_mask(4))
  >>> out.shape
  (2, 4, 3, 8)
  >>> bool(jnp.allclose(out[:, 0], kv[:, 0]))  # the first query sees only key 0
  True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from blox.nn._checks import check_float_inputs
from blox.nn._dropout import _drop

__all__ = ["dot_product_attention"]


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """Scaled dot-product attention of `query` over `key`/`value`, per head.

  Args:
    query: `[*batch, q_length, heads, head_dim]`, floating point.
    key: `[*batch, kv_length, heads, head_dim]`, floating point.
    value: `[*batch, kv_length, heads, head_dim]`, floating point.
    mask: optional booleans (True = attend) that broadcast to
      `[*batch, heads, q_length, kv_length]`, e.g. from `causal_mask` or
      `padding_mask` (combine several with `combine_masks`). A query row whose
      keys are all masked out attends uniformly to every key (it stays finite).
    scale: the factor of the logits; defaults to `1 / sqrt(head_dim)`. It
      multiplies the query, in the query's dtype, before the product.
    dropout_rate: the dropout rate on the attention weights, in [0, 1); with
      a rate above 0, `dropout_key` is required.
    dropout_key: the PRNG key of the dropout mask.
    precision: the matmul precision of both products.

  The softmax is computed in float32 at least, whatever the input dtype
  (bfloat16 logits lose too much to the exponential), and the weights are
  cast back to the logits' dtype before the product with `value`.

  Returns:
    `[*batch, q_length, heads, head_dim]`.
  """
  where = "dot_product_attention"
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"{where}: dropout_rate must be in [0, 1), got {dropout_rate}.")
  if dropout_rate > 0.0 and dropout_key is None:
    raise ValueError(
        f"{where}: dropout_rate={dropout_rate} needs a dropout_key; pass one, e.g."
        " dropout_key=jax.random.key(0), or dropout_rate=0.0 for evaluation."
    )
  for name, array in (("query", query), ("key", key), ("value", value)):
    check_float_inputs(array, where, name)
  _check_heads(query, key, value, where)
  return _attend(
      query, key, value, [] if mask is None else [mask], where,
      scale=scale, dropout_rate=dropout_rate,
      dropout_key=dropout_key if dropout_rate > 0.0 else None, precision=precision,
  )


def _check_heads(query: jax.Array, key: jax.Array, value: jax.Array, where: str) -> None:
  """Raises ValueError unless the three arrays are per-head and agree in shape."""
  for name, array in (("query", query), ("key", key), ("value", value)):
    if jnp.ndim(array) < 3:
      raise ValueError(
          f"{where}: {name} needs shape [*batch, length, heads, head_dim]; got shape"
          f" {jnp.shape(array)}."
      )
  if jnp.shape(key) != jnp.shape(value):
    raise ValueError(
        f"{where}: key {jnp.shape(key)} and value {jnp.shape(value)} must have the"
        " same shape [*batch, kv_length, heads, head_dim]."
    )
  q_shape, kv_shape = jnp.shape(query), jnp.shape(key)
  if q_shape[:-3] != kv_shape[:-3] or q_shape[-2:] != kv_shape[-2:]:
    raise ValueError(
        f"{where}: query {q_shape} and key {kv_shape} must agree on the batch axes,"
        " the heads and head_dim ([*batch, length, heads, head_dim] both)."
    )


def _check_mask(mask: Any, logits_shape: tuple[int, ...], where: str) -> jax.Array:
  """`mask` as a boolean array; raises unless it broadcasts to `logits_shape`."""
  array = jnp.asarray(mask)
  if array.dtype != jnp.bool_:
    raise TypeError(
        f"{where}: the mask must be boolean (True = attend), got dtype"
        f" {array.dtype}; convert it with mask.astype(bool)."
    )
  try:
    shape = jnp.broadcast_shapes(array.shape, logits_shape)
  except ValueError:
    shape = ()
  if shape != logits_shape:
    raise ValueError(
        f"{where}: the mask of shape {array.shape} does not broadcast to"
        f" [*batch, heads, q_length, kv_length] = {logits_shape}."
    )
  return array


def _attend(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    masks: Sequence[Any],
    where: str,
    *,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """The math of `dot_product_attention`, with the checked inputs.

  `masks` are ANDed; each is checked on its own, so an error names the mask
  the caller gave rather than a combination. `where` names the caller in
  errors (a module's `where()` when a layer calls this). Dropout applies when
  `dropout_key` is given (the caller decides, e.g. only when training).
  """
  if scale is None:
    scale = 1.0 / math.sqrt(query.shape[-1])
  logits = jnp.einsum(
      "...qhd,...khd->...hqk", query * jnp.asarray(scale, query.dtype), key,
      precision=precision,
  )
  compute = jnp.promote_types(logits.dtype, jnp.float32)
  logits_32 = logits.astype(compute)
  if masks:
    allowed = jnp.ones((), jnp.bool_)
    for mask in masks:
      allowed = allowed & _check_mask(mask, logits.shape, where)
    # The lowest finite value (not -inf) keeps a fully masked row finite: it
    # attends uniformly. jnp.finfo has no annotations.
    lowest = jnp.finfo(compute).min  # type: ignore[no-untyped-call]
    logits_32 = jnp.where(allowed, logits_32, lowest)
  weights = jax.nn.softmax(logits_32, axis=-1).astype(logits.dtype)
  if dropout_key is not None:
    weights = _drop(dropout_key, weights, dropout_rate, where)
  return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)
