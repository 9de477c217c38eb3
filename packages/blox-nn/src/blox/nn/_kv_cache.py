"""`KVCache`: the key/value cache of autoregressive attention, and its steps.

The cache is plain data (a NamedTuple); the functions here allocate it,
check it against the inputs, write new keys and values into it, and give the
mask of what each query may see. Every size is passed explicitly, so that
they know nothing of the layer that uses them.

Example:
  >>> import jax.numpy as jnp
  >>> cache = allocate_cache((2,), max_length=4, num_heads=1, head_dim=3, dtype=jnp.float32)
  >>> cache.key.shape, cache.position.tolist()
  ((2, 4, 1, 3), [0, 0])
  >>> keys = write_cache(cache.key, jnp.ones((2, 1, 1, 3)), jnp.array([0, 2]))
  >>> keys[:, :, 0, 0].tolist()
  [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from blox.nn._out_sharding import broadcast_like, explicit_spec, mesh_of, sharding_of

# PartitionSpec's constructor has no annotations (strict mypy).
_spec: Callable[..., PartitionSpec] = PartitionSpec

__all__ = [
    "KVCache",
    "allocate_cache",
    "cache_positions",
    "check_cache",
    "check_room",
    "extend_cache",
    "overflow_to_nan",
    "query_positions",
    "visible_mask",
    "write_cache",
]


class KVCache(NamedTuple):
  """The decoding state of `MultiHeadAttention`: the projected keys and values.

  Attributes:
    key: `[*batch, max_length, num_kv_heads, head_dim]` (`num_kv_heads` is
      the layer's `num_heads` unless it uses grouped-query attention).
    value: same shape as `key`.
    position: int32 `[*batch]`, the position the next token is written to,
      per batch element. Cache positions at or after it are masked out.

  Every leaf has the batch axes first, so a batch element can be reset to the
  empty cache on its own (e.g. with `blox.graph.maybe_reset_state`).
  """

  key: jax.Array
  value: jax.Array
  position: jax.Array


def allocate_cache(
    batch: tuple[int, ...], *, max_length: int, num_heads: int, head_dim: int, dtype: Any,
    like: tuple[Any, Any] | None = None,
) -> KVCache:
  """An empty cache: zero keys and values, every position at 0.

  `like=(token, key_kernel)` lays it out on Explicit mesh axes as the keys
  it will hold: the batch axes sharded as the token's, the heads as the key
  kernel's `[features, heads, head_dim]`; without Explicit shardings (or
  without `like`) it is an ordinary array.
  """
  shape = (*batch, max_length, num_heads, head_dim)
  entries = None
  if like is not None:
    token, kernel = like
    token_spec, kernel_spec = explicit_spec(token), explicit_spec(kernel)
    if token_spec is not None or kernel_spec is not None:
      batch_entries = tuple(token_spec[:-1]) if token_spec is not None else (None,) * len(batch)
      heads = kernel_spec[1] if kernel_spec is not None else None
      used = {a for e in batch_entries if e is not None for a in ((e,) if isinstance(e, str) else e)}
      if heads is not None and set((heads,) if isinstance(heads, str) else heads) & used:
        heads = None
      entries = (batch_entries, heads, mesh_of(token, kernel))
  if entries is None:
    empty = jnp.zeros(shape, dtype)
    return KVCache(empty, empty, jnp.zeros(batch, jnp.int32))
  batch_entries, heads, mesh = entries
  layout = NamedSharding(mesh, _spec(*batch_entries, None, heads, None))
  empty = jnp.zeros(shape, dtype, out_sharding=layout)
  position = jnp.zeros(batch, jnp.int32, out_sharding=NamedSharding(mesh, _spec(*batch_entries)))
  return KVCache(empty, empty, position)


def check_cache(
    cache: Any, batch: tuple[int, ...], *, num_heads: int, head_dim: int, where: str
) -> int:
  """Checks `cache` against inputs with batch axes `batch`; returns its `max_length`."""
  if not isinstance(cache, KVCache):
    raise TypeError(
        f"{where}: the cache must be the KVCache from initial_state, got"
        f" {type(cache).__name__}."
    )
  shape = tuple(cache.key.shape)
  if (
      len(shape) != len(batch) + 3
      or shape[:-3] != batch
      or shape[-2:] != (num_heads, head_dim)
      or tuple(cache.value.shape) != shape
      or tuple(jnp.shape(cache.position)) != batch
  ):
    raise ValueError(
        f"{where}: the cache holds keys {shape}, values {tuple(cache.value.shape)}"
        f" and position {tuple(jnp.shape(cache.position))}, but inputs with batch"
        f" axes {batch} need keys and values [*batch, max_length, {num_heads},"
        f" {head_dim}] and position [*batch]. Make the cache with initial_state."
    )
  return shape[-3]


def check_room(position: jax.Array, length: int, max_length: int, where: str) -> None:
  """Raises ValueError if writing `length` tokens runs past the cache's end.

  Only outside of `jax.jit`, where the position is known; under jit the
  overflow shows as NaN outputs instead (see `overflow_to_nan`).
  """
  if isinstance(position, jax.core.Tracer):
    return
  last = int(jnp.max(position, initial=0)) + length
  if last > max_length:
    raise ValueError(
        f"{where}: the cache is full: writing {length} token(s) reaches position"
        f" {last}, past its max_length={max_length}. Make a longer cache with"
        " initial_state."
    )


def write_cache(cache: jax.Array, update: jax.Array, position: jax.Array) -> jax.Array:
  """Writes `update [*batch, length, ...]` into `cache [*batch, max_length, ...]`
  from `position[b]` on, for every batch element `b`.

  A block of several tokens is a scatter, not `dynamic_update_slice`: the
  latter clamps its start so that the whole block fits, which would shift a
  block that runs past the end backwards over earlier tokens. Here the slots
  past `max_length` are dropped and the tokens that fit land at their own
  positions. One token (decoding) is a `dynamic_update_slice` per row, which
  XLA does in place (the scatter made cached decoding 1.17x slower than a
  hand-written decoder, see BENCHMARKS.md); a token past the end rewrites the
  last slot with its own old value, so nothing changes there either.

  Measured alternatives for the one-token write, each in both decoding
  benchmarks (a bfloat16 and a float32 cache) against this write: a scatter
  with `unique_indices` (1.3x the bfloat16 decoder's time: XLA's CPU backend
  scatters 16-bit floats in float32, converting the cache there and back);
  the same scatter on the values' bits as unsigned integers (1.3x; a 32-bit
  integer scatter is not done in place); a one-hot `where` over the cache
  (1.1x, and a pass over the whole cache on any backend).
  """
  tail = cache.shape[-3:]
  flat_cache = jnp.reshape(cache, (-1, *tail))
  flat_update = jnp.reshape(update.astype(cache.dtype), (-1, *update.shape[-3:]))
  if flat_update.shape[1] == 1:
    return jnp.reshape(
        jax.vmap(_write_token)(flat_cache, flat_update, jnp.reshape(position, (-1,))),
        cache.shape,
    )
  rows = jnp.arange(flat_cache.shape[0])[:, None]
  cols = jnp.reshape(position, (-1, 1)) + jnp.arange(flat_update.shape[1], dtype=position.dtype)
  # On Explicit mesh axes the scatter keeps the cache's layout, said out loud.
  written = flat_cache.at[rows, cols].set(
      flat_update, mode="drop", out_sharding=sharding_of(flat_cache))
  return jnp.reshape(written, cache.shape)


def _write_token(cache: jax.Array, token: jax.Array, position: jax.Array) -> jax.Array:
  """One row: `token [1, heads, d]` into `cache [max_length, heads, d]` at `position`."""
  start = jnp.minimum(position, cache.shape[0] - 1)
  kept = jax.lax.dynamic_slice(cache, (start, 0, 0), token.shape)
  token = jnp.where(position < cache.shape[0], token, kept)
  return jax.lax.dynamic_update_slice(cache, token, (start, 0, 0))


def query_positions(position: jax.Array, length: int) -> jax.Array:
  """`[*batch, length]`: query `i` of batch element `b` sits at `position[b] + i`."""
  return position[..., None] + jnp.arange(length, dtype=jnp.int32)


def visible_mask(q_positions: jax.Array, max_length: int) -> jax.Array:
  """`[*batch, 1 (heads), length, max_length]`: each query sees the cache up to itself."""
  kv_positions = jnp.arange(max_length, dtype=jnp.int32)
  return (kv_positions <= q_positions[..., None])[..., None, :, :]


def overflow_to_nan(outputs: jax.Array, q_positions: jax.Array, max_length: int) -> jax.Array:
  """`outputs [*batch, length, features]`, NaN where the token did not fit.

  Under jit the position is not known when tracing. `write_cache` drops the
  tokens past the end (the ones that fit are stored where they belong);
  their outputs become NaN, so the mistake shows instead of passing for a
  result.
  """
  overflowed = broadcast_like((q_positions >= max_length)[..., None], outputs)
  return jnp.where(overflowed, jnp.nan, outputs)


def cache_positions(
    cache: Any, batch: tuple[int, ...], length: int, *, num_heads: int, head_dim: int, where: str
) -> jax.Array:
  """`[*batch, length]`: the positions of `length` new tokens in `cache`.

  Checks first that `cache` fits inputs with batch axes `batch`
  (`check_cache`) and, outside of jit, that the tokens fit in it
  (`check_room`).
  """
  max_length = check_cache(cache, batch, num_heads=num_heads, head_dim=head_dim, where=where)
  position = jnp.asarray(cache.position, jnp.int32)
  check_room(position, length, max_length, where)
  return query_positions(position, length)


def extend_cache(cache: KVCache, key: jax.Array, value: jax.Array) -> tuple[KVCache, jax.Array]:
  """`(new_cache, mask)`: `key` and `value` `[*batch, length, heads, head_dim]`
  written at the cache's positions, and the mask `[*batch, 1, length,
  max_length]` of the cache entries each new token sees (those up to itself)."""
  position = jnp.asarray(cache.position, jnp.int32)
  length, max_length = key.shape[-3], cache.key.shape[-3]
  new_cache = KVCache(
      write_cache(cache.key, key, position), write_cache(cache.value, value, position),
      position + length,
  )
  return new_cache, visible_mask(query_positions(position, length), max_length)
