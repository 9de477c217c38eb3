"""Attention masks: causal, padding, and their combination.

Masks are boolean, True = attend, and broadcast to the attention logits
`[*batch, heads, q_length, kv_length]` of `dot_product_attention` and
`MultiHeadAttention`.

Example:
  >>> import jax.numpy as jnp
  >>> causal_mask(3).astype(int).tolist()
  [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
  >>> pad = padding_mask(jnp.array([2, 3]), kv_length=3)  # valid lengths
  >>> pad.shape
  (2, 1, 1, 3)
  >>> combine_masks(causal_mask(3), pad)[0, 0].astype(int).tolist()
  [[1, 0, 0], [1, 1, 0], [1, 1, 0]]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["causal_mask", "combine_masks", "padding_mask"]


def causal_mask(q_length: int, kv_length: int | None = None) -> jax.Array:
  """The mask `[q_length, kv_length]` that lets query `i` attend to keys `j <= i`.

  `kv_length` defaults to `q_length`. Queries and keys are aligned at their
  first position (as with `jax.nn.dot_product_attention(..., is_causal=True)`).
  """
  for name, size in (("q_length", q_length), ("kv_length", kv_length)):
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
      raise ValueError(f"causal_mask: {name} must be a positive int, got {size!r}.")
  kv_length = q_length if kv_length is None else kv_length
  return jnp.tril(jnp.ones((q_length, kv_length), jnp.bool_))


def padding_mask(lengths_or_valid: Any, kv_length: int | None = None) -> jax.Array:
  """The mask `[*batch, 1, 1, kv_length]` that hides padded key positions.

  Args:
    lengths_or_valid: either integer valid lengths `[*batch]` (key positions
      `< length` are attended), or a boolean validity array
      `[*batch, kv_length]` (True = a real token).
    kv_length: the number of key positions; required with lengths, and, if
      given with a validity array, checked against its last axis.

  The two singleton axes are the heads and the queries, so the mask
  broadcasts to `[*batch, heads, q_length, kv_length]`.
  """
  array = jnp.asarray(lengths_or_valid)
  if array.dtype == jnp.bool_:
    if array.ndim < 1:
      raise ValueError(
          "padding_mask: a validity array needs shape [*batch, kv_length]; got a"
          " scalar. Pass per-example lengths as integers instead."
      )
    if kv_length is not None and array.shape[-1] != kv_length:
      raise ValueError(
          f"padding_mask: the validity array {array.shape} has {array.shape[-1]} key"
          f" positions, but kv_length={kv_length}; pass matching sizes."
      )
    return array[..., None, None, :]
  if not jnp.issubdtype(array.dtype, jnp.integer):
    raise TypeError(
        "padding_mask: pass integer lengths [*batch] or a boolean validity array"
        f" [*batch, kv_length]; got dtype {array.dtype}."
    )
  if kv_length is None:
    raise ValueError(
        "padding_mask: with lengths, give kv_length, the number of key positions,"
        " e.g. padding_mask(lengths, kv_length=inputs.shape[-2])."
    )
  if isinstance(kv_length, bool) or not isinstance(kv_length, int) or kv_length < 1:
    raise ValueError(f"padding_mask: kv_length must be a positive int, got {kv_length!r}.")
  valid = jnp.arange(kv_length) < array[..., None]
  return valid[..., None, None, :]


def combine_masks(*masks: Any) -> jax.Array | None:
  """The AND of the given boolean masks, broadcast together; None ones are skipped.

  Returns None when every mask is None (no masking at all).
  """
  given = []
  for index, mask in enumerate(masks):
    if mask is None:
      continue
    mask = jnp.asarray(mask)
    given.append(mask)
    if mask.dtype != jnp.bool_:
      raise TypeError(
          f"combine_masks: mask {index} has dtype {mask.dtype}; masks are boolean"
          " (True = attend): convert it with mask.astype(bool)."
      )
  if not given:
    return None
  try:
    jnp.broadcast_shapes(*(mask.shape for mask in given))
  except ValueError:
    shapes = ", ".join(str(mask.shape) for mask in given)
    raise ValueError(
        f"combine_masks: the masks of shapes {shapes} do not broadcast together;"
        " align them on [*batch, heads, q_length, kv_length]."
    ) from None
  combined = given[0]
  for mask in given[1:]:
    combined = combined & mask
  return combined
