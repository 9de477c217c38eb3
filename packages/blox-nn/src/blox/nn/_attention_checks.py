"""The argument and input checks of `MultiHeadAttention`.

Each takes `where`, the layer's `Module.where()`, so that its error names the
layer, and says what to do instead: the misuses they catch (a mask or a
cache where the key goes, a single token given as a sequence, metadata in
the old one-for-all form) otherwise fail deep inside an einsum, or not at
all.

Example:
  >>> import jax.numpy as jnp
  >>> _check_sequence(jnp.ones((2, 8)), "query", "MultiHeadAttention 'net/mha'")
  Traceback (most recent call last):
  ...
  ValueError: MultiHeadAttention 'net/mha': query needs shape [*batch, length, features] with at least one batch axis; got shape (2, 8). For one decoding step use decode_step(params, token, cache); for a single unbatched sequence add a batch axis, e.g. query[None].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from blox.nn._checks import check_float_inputs
from blox.nn._kv_cache import KVCache
from blox.params import SHARDING

__all__ = ["PROJECTIONS"]

# The names of the four projections: their param groups and metadata keys.
PROJECTIONS = ("query", "key", "value", "out")


def _refuse_misplaced(array: Any, name: str, where: str) -> None:
  """Raises TypeError for a cache or a mask given where `key`/`value` go."""
  if isinstance(array, KVCache):
    raise TypeError(
        f"{where}: got a KVCache as {name}; __call__ attends over whole sequences."
        " For one decoding step use decode_step(params, token, cache); for a"
        " prefill use apply(params, inputs, cache)."
    )
  if array is not None and jnp.result_type(array) == jnp.bool_:
    raise TypeError(
        f"{where}: got a boolean array as {name}; did you mean mask=...? Masks are"
        " passed by keyword: mha(params, query, key, mask=mask)."
    )


def _check_sequence(array: Any, name: str, where: str) -> None:
  """Raises unless `array` is a float `[*batch, length, features]`, batch non-empty.

  A rank-2 array is refused: `[length, features]` and `[batch, features]`
  (one token per example) look alike, and the second would silently attend
  across the batch.
  """
  check_float_inputs(array, where, name)
  if jnp.ndim(array) < 3:
    raise ValueError(
        f"{where}: {name} needs shape [*batch, length, features] with at least"
        f" one batch axis; got shape {jnp.shape(array)}. For one decoding step"
        " use decode_step(params, token, cache); for a single unbatched"
        f" sequence add a batch axis, e.g. {name}[None]."
    )


def _check_same_batch(query: Any, key: Any, value: Any, where: str) -> None:
  """Raises ValueError unless query, key and value share their batch axes."""
  if query.shape[:-2] != key.shape[:-2]:
    raise ValueError(
        f"{where}: query {query.shape} and key {key.shape} must have the same"
        " batch axes ([*batch, length, features] both); broadcast or reshape"
        " them to one batch shape."
    )
  if key.shape[:-1] != value.shape[:-1]:
    raise ValueError(
        f"{where}: key {key.shape} and value {value.shape} must agree on every"
        " axis but the last."
    )


def _check_token(token: Any, cache: Any, where: str, method: str, name: str) -> None:
  """Raises unless `token` (the argument `name` of `method`) is one float
  token `[*batch, features]`.

  With a cache, a token one axis longer than the cache's batch axes plus
  features is a sequence: that is a prefill, `apply`'s job.
  """
  check_float_inputs(token, where, name)
  if jnp.ndim(token) < 2:
    raise ValueError(
        f"{where}: {method} needs one token of shape [*batch, features] with at"
        f" least one batch axis; got shape {jnp.shape(token)}. Add a batch axis,"
        f" e.g. {name}[None]."
    )
  if isinstance(cache, KVCache) and jnp.ndim(token) == jnp.ndim(cache.key) - 1:
    raise ValueError(
        f"{where}: decode_step takes one token [*batch, features], but got shape"
        f" {jnp.shape(token)}, a sequence for this cache; run a sequence (a"
        " prefill) with apply(params, inputs, cache)."
    )


def _per_projection(
    metadata: Any, name: str, where: str
) -> dict[str, Mapping[str, Any] | None]:
  """`metadata` checked to map projection names to metadata mappings."""
  if metadata is None:
    return {}
  example = (
      f"e.g. {name}={{'query': {{{SHARDING!r}: (None, 'model', None)}},"
      f" 'out': {{{SHARDING!r}: ('model', None, None)}}}}"
  )
  if not isinstance(metadata, Mapping):
    raise TypeError(
        f"{where}: {name} must map projection names {PROJECTIONS} to metadata,"
        f" {example}; got {type(metadata).__name__}."
    )
  checked: dict[str, Mapping[str, Any] | None] = {}
  for projection, entry in metadata.items():
    if projection not in PROJECTIONS:
      raise ValueError(
          f"{where}: {name} maps projection names {PROJECTIONS} to metadata,"
          f" {example}; got the key {projection!r}."
      )
    if entry is not None and not isinstance(entry, Mapping):
      raise TypeError(
          f"{where}: {name}[{projection!r}] must be a metadata mapping (or None),"
          f" got {type(entry).__name__}."
      )
    checked[projection] = entry
  return checked
