"""`dot_product_attention`: the attention math, `softmax(q k^T * scale) v`, on its own.

A pure function over per-head arrays, usable without any module; the
`MultiHeadAttention` layer projects its inputs to heads and calls the same
code. The layout is `[*batch, length, heads, head_dim]`, the one of
`jax.nn.dot_product_attention`, which computes it (its `implementation`
option picks XLA or the fused cuDNN kernel); blox's own formula, the same
math, covers what that function lacks (attention-weight dropout, an explicit
matmul precision, float64). Its two products, the logits `q k^T` and the
weighted sum of the values, go through `blox.nn.contract` (with no weight
name: keys and values are no params), so contraction hooks see them; jax's
function computes both inside one call, which hooks do not see. Keys and values may have fewer heads than the
query (grouped-query attention): query head `n` attends with kv head
`n // (heads // kv_heads)`.

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
  >>> shared = kv[:, :, :1]  # one key/value head for the 3 query heads (MQA)
  >>> dot_product_attention(q, shared, shared).shape
  (2, 4, 3, 8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Module
from blox.nn._checks import check_float_inputs
from blox.nn._contract import contract
from blox.nn._dropout import check_rate, drop
from blox.nn._out_sharding import broadcast_like
from blox.nn._soft_cap import soft_cap_in
from blox.params import Params

__all__ = ["IMPLEMENTATIONS", "attend", "check_implementation", "dot_product_attention"]


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
    implementation: str | None = None,
) -> jax.Array:
  """Scaled dot-product attention of `query` over `key`/`value`, per head.

  Args:
    query: `[*batch, q_length, heads, head_dim]`, floating point.
    key: `[*batch, kv_length, kv_heads, head_dim]`, floating point; `kv_heads`
      divides `heads` (grouped-query attention; 1 is multi-query attention).
    value: the shape of `key`, floating point.
    mask: optional booleans (True = attend) that broadcast to
      `[*batch, heads, q_length, kv_length]`, e.g. from `causal_mask` or
      `padding_mask` (combine several with `combine_masks`). A query row whose
      keys are all masked out attends uniformly to every key (it stays finite).
    scale: the factor of the logits; defaults to `1 / sqrt(head_dim)`. It
      multiplies the logits, in float32 at least.
    dropout_rate: the dropout rate on the attention weights, in [0, 1); with
      a rate above 0, `dropout_key` is required.
    dropout_key: the PRNG key of the dropout mask.
    precision: the matmul precision of both products; None is the default of
      the backend.
    implementation: passed to `jax.nn.dot_product_attention`: None (jax's
      choice, XLA today), 'xla', or 'cudnn' (the fused GPU kernel; it supports
      a subset of shapes and dtypes, and jax raises for the others). Dropout,
      a `precision` or float64 inputs use blox's own formula instead.

  The logits are accumulated and the softmax computed in float32 at least,
  whatever the input dtype (bfloat16 logits lose too much to the
  exponential); the weights are cast back to the inputs' dtype before the
  product with `value`. Inputs of different float dtypes are promoted to one.

  Returns:
    `[*batch, q_length, heads, head_dim]`.
  """
  where = "dot_product_attention"
  check_rate(dropout_rate, "dropout_rate", where)
  if dropout_rate > 0.0 and dropout_key is None:
    raise ValueError(
        f"{where}: dropout_rate={dropout_rate} needs a dropout_key; pass one, e.g."
        " dropout_key=jax.random.key(0), or dropout_rate=0.0 for evaluation."
    )
  check_implementation(implementation, "implementation", where)
  for name, array in (("query", query), ("key", key), ("value", value)):
    check_float_inputs(array, where, name)
  _check_heads(query, key, value, where)
  return attend(
      query, key, value, [] if mask is None else [mask], where,
      scale=scale, dropout_rate=dropout_rate,
      dropout_key=dropout_key if dropout_rate > 0.0 else None, precision=precision,
      implementation=implementation,
  )


IMPLEMENTATIONS = (None, "xla", "cudnn")


def check_implementation(value: Any, name: str, where: str) -> Any:
  """`value`; raises ValueError unless it is an implementation jax's attention knows."""
  if value not in IMPLEMENTATIONS:
    raise ValueError(
        f"{where}: {name} must be one of {IMPLEMENTATIONS} (that of"
        f" jax.nn.dot_product_attention), got {value!r}; use None to let"
        " jax choose, 'cudnn' for the fused GPU kernel."
    )
  return value


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
        " same shape [*batch, kv_length, kv_heads, head_dim]."
    )
  q_shape, kv_shape = jnp.shape(query), jnp.shape(key)
  if q_shape[:-3] != kv_shape[:-3] or q_shape[-1] != kv_shape[-1]:
    raise ValueError(
        f"{where}: query {q_shape} and key {kv_shape} must agree on the batch axes"
        " and head_dim ([*batch, length, heads, head_dim] both)."
    )
  if q_shape[-2] % kv_shape[-2]:
    raise ValueError(
        f"{where}: the query's {q_shape[-2]} heads are not a multiple of the key's"
        f" {kv_shape[-2]}; grouped-query attention needs kv_heads dividing heads."
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


def attend(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    masks: Sequence[Any],
    where: str,
    *,
    scale: float | None = None,
    logit_soft_cap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    precision: jax.lax.PrecisionLike = None,
    implementation: str | None = None,
    module: Module | None = None,
    params: Params | None = None,
) -> jax.Array:
  """The math of `dot_product_attention`, with the checked inputs.

  `masks` are ANDed; each is checked on its own, so an error names the mask
  the caller gave rather than a combination. `where` names the caller in
  errors (a module's `where()` when a layer calls this). Dropout applies when
  `dropout_key` is given (the caller decides, e.g. only when training).
  `logit_soft_cap`, if given, caps the scaled logits (`soft_cap`) before
  the masks; jax's function has no such step, so blox's formula computes
  it. `module` and `params` (the calling layer's, if any) are passed on to
  `contract`, so that hooks know whose products they see.
  """
  dtype = jnp.result_type(query, key, value)
  query, key, value = (jnp.asarray(a, dtype) for a in (query, key, value))
  *batch, q_length, heads, head_dim = query.shape
  logits_shape = (*batch, heads, q_length, key.shape[-3])
  allowed = None
  for mask in masks:
    checked = _check_mask(mask, logits_shape, where)
    allowed = checked if allowed is None else allowed & checked
  if scale is None:
    scale = 1.0 / math.sqrt(head_dim)
  compute = jnp.promote_types(dtype, jnp.float32)
  if (dropout_key is not None or precision is not None or compute != jnp.float32
      or logit_soft_cap is not None):
    return _formula(
        query, key, value, allowed, scale, compute, dropout_rate, dropout_key, precision, where,
        module, params, logit_soft_cap,
    )
  # jax's function takes exactly one batch axis and a mask [B, N, T, S].
  flat = [jnp.reshape(a, (-1, *a.shape[-3:])) for a in (query, key, value)]
  flat_mask = None
  if allowed is not None:
    flat_mask = _flat_mask(allowed, logits_shape, full=implementation == "cudnn")
  out = jax.nn.dot_product_attention(
      flat[0], flat[1], flat[2], mask=flat_mask, scale=scale,
      implementation=implementation,  # type: ignore[arg-type]  # a name checked above
  )
  if implementation == "cudnn" and flat_mask is not None:
    # XLA gives a fully masked row the same large negative logits, so
    # uniform weights, as blox's formula does; the fused kernel promises no
    # such thing, so those rows are set to the mean of the values here.
    out = _uniform_where_fully_masked(out, flat[2], flat_mask)
  return jnp.reshape(out, query.shape)


def _flat_mask(allowed: jax.Array, logits_shape: tuple[int, ...], full: bool) -> jax.Array:
  """`allowed` as `[B or 1, N or 1, T, S]` for logits `[*batch, N, T, S]`.

  Axes of size 1 that jax's XLA path broadcasts itself (a mask shared by the
  batch or the heads, such as a causal mask) stay 1, so no copy per example
  or head is made; with `full` (for the cuDNN kernel, whose mask layouts are
  narrower) the mask is broadcast to `[B, N, T, S]`.
  """
  mask = jnp.reshape(allowed, (1,) * (len(logits_shape) - allowed.ndim) + allowed.shape)
  batch = logits_shape[:-3]
  shared_batch = not full and all(size == 1 for size in mask.shape[:-3])
  heads = 1 if mask.shape[-3] == 1 and not full else logits_shape[-3]
  shape = (*((1,) * len(batch) if shared_batch else batch), heads, *logits_shape[-2:])
  return jnp.reshape(jnp.broadcast_to(mask, shape), (-1, *shape[-3:]))


def _grouped(query: jax.Array, kv_heads: int) -> jax.Array:
  """`[..., length, heads, d]` as `[..., length, kv_heads, heads // kv_heads, d]`."""
  *rest, heads, head_dim = query.shape
  return jnp.reshape(query, (*rest, kv_heads, heads // kv_heads, head_dim))


def _formula(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    allowed: jax.Array | None,
    scale: float,
    compute: Any,
    dropout_rate: float,
    dropout_key: jax.Array | None,
    precision: jax.lax.PrecisionLike,
    where: str,
    module: Module | None,
    params: Params | None,
    logit_soft_cap: float | None = None,
) -> jax.Array:
  """blox's own attention: the math of jax's XLA path, plus dropout, precision
  and the soft cap of the logits."""
  kv_heads = key.shape[-2]
  logits = contract(
      _grouped(query, kv_heads), key, "...qkgd,...skd->...kgqs", module=module,
      params=params, precision=precision, preferred_element_type=compute,
  )
  logits = jnp.reshape(logits, (*logits.shape[:-4], -1, *logits.shape[-2:]))
  logits = logits * jnp.asarray(scale, compute)
  if logit_soft_cap is not None:
    logits = soft_cap_in(logits, logit_soft_cap)
  if allowed is not None:
    # The lowest finite value (not -inf) keeps a fully masked row finite: it
    # attends uniformly. jnp.finfo has no annotations.
    lowest = jnp.finfo(compute).min  # type: ignore[no-untyped-call]
    logits = jnp.where(broadcast_like(allowed, logits), logits, lowest)
  weights = jax.nn.softmax(logits, axis=-1).astype(query.dtype)
  if dropout_key is not None:
    weights = drop(dropout_key, weights, dropout_rate, where)
  *batch, heads, q_length, kv_length = weights.shape
  grouped = jnp.reshape(weights, (*batch, kv_heads, heads // kv_heads, q_length, kv_length))
  out = contract(
      grouped, value, "...kgqs,...skd->...qkgd", module=module, params=params,
      precision=precision,
  )
  return jnp.reshape(out, query.shape)


def _uniform_where_fully_masked(out: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
  """`out [B, T, N, H]` with the rows whose `mask [B, N, T, S]` is all False
  replaced by the mean of `value [B, S, K, H]` (uniform weights)."""
  heads, kv_heads = out.shape[-2], value.shape[-2]
  mean = jnp.repeat(jnp.mean(value, axis=1), heads // kv_heads, axis=-2)  # [B, N, H]
  any_allowed = jnp.swapaxes(jnp.any(mask, axis=-1), 1, 2)  # [B, T, N]
  fallback = broadcast_like(mean[:, None].astype(out.dtype), out)
  return jnp.where(broadcast_like(any_allowed[..., None], out), out, fallback)
