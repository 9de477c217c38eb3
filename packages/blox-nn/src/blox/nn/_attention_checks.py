"""The argument and input checks of `MultiHeadAttention`.

Each takes `where`, the layer's `Module.where()`, so that its error names the
layer, and says what to do instead: the misuses they catch (a mask or a
cache where the key goes, a single token given as a sequence, metadata in
the one-for-all form of a plain layer, an input of another width than the
params were made for) otherwise fail deep inside an einsum, or not at all.
The checks of one setting have the form `(value, name, where) -> value` of a
`blox.graph.setting`'s `check=`.

Example:
  >>> import jax.numpy as jnp
  >>> check_sequence(jnp.ones((2, 8)), "query", "MultiHeadAttention 'net/mha'")
  Traceback (most recent call last):
  ...
  ValueError: MultiHeadAttention 'net/mha': query needs shape [*batch, length, features] with at least one batch axis; got shape (2, 8). For one decoding step use decode_step(params, token, cache); for a single unbatched sequence add a batch axis, e.g. query[None].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from blox.graph import Module
from blox.nn._checks import check_float_inputs, check_positive_int
from blox.nn._kv_cache import KVCache
from blox.nn._rope import RopeScaling
from blox.params import SHARDING, Params

__all__ = [
    "PROJECTIONS",
    "QK_NORMS",
    "check_bool",
    "check_head_dim",
    "check_input_width",
    "check_kv_heads_divide",
    "check_optional_bool",
    "check_optional_positive",
    "check_optional_size",
    "check_real",
    "check_rope_scaling",
    "check_projection_metadata",
    "check_qk_norm_metadata",
    "check_rope_base",
    "check_rope_lengths",
    "check_rope_options",
    "check_same_batch",
    "check_sequence",
    "check_token",
    "check_window_lengths",
    "per_projection",
    "refuse_misplaced",
]

# The names of the four projections: their param groups and metadata keys.
PROJECTIONS = ("query", "key", "value", "out")
# The param groups of query/key normalisation (`qk_norm=True`).
QK_NORMS = ("query_norm", "key_norm")


# The checks of one setting.


def check_optional_size(value: Any, name: str, where: str) -> Any:
  """`value`, None or a positive int (a size that defaults to the inputs')."""
  if value is not None:
    check_positive_int(value, f"{name} (or None)", where)
  return value


def check_bool(value: Any, name: str, where: str) -> Any:
  """`value`, a Python bool (a switch that decides what is traced)."""
  if not isinstance(value, bool):
    raise TypeError(f"{where}: {name} must be a bool (True or False), got {value!r}.")
  return value


def check_optional_bool(value: Any, name: str, where: str) -> Any:
  """`value`, None (follow another setting) or a Python bool."""
  if value is not None and not isinstance(value, bool):
    raise TypeError(f"{where}: {name} must be None or a bool (True or False), got {value!r}.")
  return value


def check_optional_positive(value: Any, name: str, where: str) -> Any:
  """`value`, None or a positive, finite number."""
  if value is not None and (
      isinstance(value, bool) or not isinstance(value, (int, float))
      or not 0 < value < float("inf")
  ):
    raise ValueError(f"{where}: {name} must be None or a positive number, got {value!r}.")
  return value


def check_real(value: Any, name: str, where: str) -> Any:
  """`value`, a real Python number."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"{where}: {name} must be a number such as 0.0 or 1.0, got {value!r}.")
  return value


def check_rope_scaling(value: Any, name: str, where: str) -> Any:
  """`value`, None or a `RopeScaling`."""
  if value is not None and not isinstance(value, RopeScaling):
    raise TypeError(
        f"{where}: {name} must be None or a blox.nn.RopeScaling, e.g."
        f" RopeScaling('llama3', factor=8.0); got {type(value).__name__}."
    )
  return value


def check_rope_base(value: Any, name: str, where: str) -> Any:
  """`value`, None (no RoPE) or a positive number."""
  if value is not None and (
      isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
  ):
    raise ValueError(
        f"{where}: {name} must be None (no RoPE) or a positive number such as"
        f" 10000.0, got {value!r}."
    )
  return value


def check_projection_metadata(value: Any, name: str, where: str) -> Any:
  """`value`, None or a mapping from projection names to metadata."""
  per_projection(value, name, where)
  return value


def check_qk_norm_metadata(value: Any, name: str, where: str) -> Any:
  """`value`, None or a mapping from 'query_norm'/'key_norm' to metadata."""
  per_projection(value, name, where, QK_NORMS)
  return value


def per_projection(
    metadata: Any, name: str, where: str, names: tuple[str, ...] = PROJECTIONS
) -> dict[str, Mapping[str, Any] | None]:
  """`metadata` checked to map projection names (or the param groups `names`,
  e.g. `QK_NORMS`) to metadata mappings; `{}` for None."""
  if metadata is None:
    return {}
  if names == PROJECTIONS:
    kind = "projection names"
    example = (
        f"e.g. {name}={{'query': {{{SHARDING!r}: (None, 'model', None)}},"
        f" 'out': {{{SHARDING!r}: ('model', None, None)}}}}"
    )
  else:
    kind = "the param groups"
    example = f"e.g. {name}={{{names[0]!r}: {{{SHARDING!r}: (None,)}}}}"
  if not isinstance(metadata, Mapping):
    raise TypeError(
        f"{where}: {name} must map {kind} {names} to metadata, {example}; got"
        f" {type(metadata).__name__}."
    )
  checked: dict[str, Mapping[str, Any] | None] = {}
  for group, entry in metadata.items():
    if group not in names:
      raise ValueError(
          f"{where}: {name} maps {kind} {names} to metadata, {example}; got the"
          f" key {group!r}."
      )
    if entry is not None and not isinstance(entry, Mapping):
      raise TypeError(
          f"{where}: {name}[{group!r}] must be a metadata mapping (or None),"
          f" got {type(entry).__name__}."
      )
    checked[group] = entry
  return checked


# The checks of several settings.


def check_kv_heads_divide(num_heads: int, num_kv_heads: int | None, where: str) -> None:
  """Raises ValueError unless `num_kv_heads` (None: `num_heads`) divides `num_heads`."""
  if num_kv_heads is not None and num_heads % num_kv_heads:
    raise ValueError(
        f"{where}: num_kv_heads={num_kv_heads} does not divide num_heads={num_heads};"
        " pick a divisor of num_heads (1 for multi-query attention, None for one"
        " kv head per query head)."
    )


def check_head_dim(
    qkv_size: int, num_heads: int, rope_base: Any, where: str, *, from_query: bool = False
) -> int:
  """`qkv_size // num_heads`; raises unless it divides (and is even for RoPE).

  `from_query`: `qkv_size` is the query's width (the setting is None), which
  the error says, since the configuration alone is then not at fault.
  """
  origin = " (qkv_size is None: it is the query's last axis)" if from_query else ""
  if qkv_size % num_heads:
    raise ValueError(
        f"{where}: qkv_size={qkv_size}{origin} is not divisible by"
        f" num_heads={num_heads}; pick qkv_size as a multiple of num_heads (it"
        " defaults to the query's last axis)."
    )
  head_dim = qkv_size // num_heads
  if rope_base is not None and head_dim % 2:
    raise ValueError(
        f"{where}: rope_base needs an even head_dim (RoPE rotates feature pairs),"
        f" but qkv_size={qkv_size} // num_heads={num_heads} = {head_dim}{origin};"
        " pick qkv_size as a multiple of 2 * num_heads."
    )
  return head_dim


def check_rope_options(rope_base: Any, rope_scaling: Any, where: str) -> None:
  """Raises ValueError for a `rope_scaling` without rotary embeddings to scale."""
  if rope_scaling is not None and rope_base is None:
    raise ValueError(
        f"{where}: rope_scaling={rope_scaling!r} rescales the rotary frequencies,"
        " but rope_base=None applies no rotary embeddings; set rope_base (e.g."
        " 500000.0 for Llama 3), or leave rope_scaling at None."
    )


# The checks of the inputs.


def check_input_width(
    module: Module, params: Params, projection: str, inputs: Any, name: str
) -> None:
  """Raises ValueError if `projection`'s kernel exists for another input width.

  Run before the sizes are derived from the inputs: a query of a new width
  would otherwise give another head_dim, and the error would blame the
  configuration (an odd head_dim for RoPE) rather than the input. `name` is
  the argument as the caller knows it ('query', 'inputs', 'token', ...).
  """
  path = module.param_path((projection, "kernel"))
  if path not in params:
    return
  kernel_shape = tuple(params[path].value.shape)
  width, expected = jnp.shape(inputs)[-1], kernel_shape[0]
  if width != expected:
    raise ValueError(
        f"{module.where()}: the last axis of {name} is {width}, but the params were"
        f" made for {expected} features: {projection}/kernel has shape {kernel_shape}"
        f" [features, heads, head_dim]. Feed {name} with {expected} features, or"
        f" start from fresh params to make the layer for {width}."
    )


def check_rope_lengths(query: Any, key: Any, where: str) -> None:
  """Raises unless `key` has the query's length (RoPE positions of self-attention)."""
  if key.shape[-2] != query.shape[-2]:
    raise ValueError(
        f"{where}: with rope_base set, queries and keys are rotated at the"
        " positions of self-attention, arange(length), but the query has length"
        f" {query.shape[-2]} and the key {key.shape[-2]}. For cross-attention use"
        " rope_base=None (and rotate with blox.nn.rope yourself if needed)."
    )


def check_window_lengths(query: Any, key: Any, where: str) -> None:
  """Raises unless `key` has the query's length (a sliding window's positions)."""
  if key.shape[-2] != query.shape[-2]:
    raise ValueError(
        f"{where}: a sliding window compares the positions of self-attention,"
        f" arange(length), but the query has length {query.shape[-2]} and the key"
        f" {key.shape[-2]}. For cross-attention pass sliding_window=None (and a"
        " mask of your own, if needed)."
    )


def refuse_misplaced(array: Any, name: str, where: str) -> None:
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


def check_sequence(array: Any, name: str, where: str) -> None:
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


def check_same_batch(query: Any, key: Any, value: Any, where: str) -> None:
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


def check_token(token: Any, cache: Any, where: str, method: str, name: str) -> None:
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
