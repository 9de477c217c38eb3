"""Sliding-window attention, and the per-call overrides of `MultiHeadAttention`.

A sliding window lets a query at position q attend only to keys at positions
k with `q - k < window`: itself and the `window - 1` keys before it under a
causal mask (Mistral's and Gemma's convention). It is one more boolean mask,
built from the positions of the queries and the keys, like the causal mask.

The layers of a `blox.graph.Repeat` share one module, so values that differ
from layer to layer (Gemma's alternating local and global layers, their own
rotary frequencies) are passed per call, as traced arrays: the window as an
int32 scalar, the frequencies as `[head_dim // 2]` floats. A window at least
as long as the keys is no window at all.

Example:
  >>> import jax.numpy as jnp
  >>> positions = jnp.arange(4)
  >>> window_mask(positions, positions, 2)[0].astype(int).tolist()
  [[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from blox.nn._rope import check_frequencies

__all__ = ["check_frequencies_override", "check_window_override", "window_mask"]


def check_window_override(value: Any, where: str) -> None:
  """Raises unless `value` is None, a positive int or an integer scalar array
  (an argument `sliding_window`, possibly traced)."""
  if value is None:
    return
  if isinstance(value, bool):
    pass  # True is an int to Python, but surely no window length
  elif isinstance(value, int):
    if value >= 1:
      return
  elif hasattr(value, "dtype") and jnp.ndim(value) == 0:
    if jnp.issubdtype(jnp.result_type(value), jnp.integer):
      return
  raise ValueError(
      f"{where}: sliding_window must be None (the layer's setting), a positive int,"
      f" or an integer scalar array such as jnp.int32(4096) (it may be traced);"
      f" got {value!r}."
  )


def check_frequencies_override(
    frequencies: Any, rope_base: Any, head_dim: int, where: str
) -> None:
  """Raises unless `frequencies` (an argument `rope_frequencies`) is None or
  fits the layer: rope on, one float per feature pair."""
  if frequencies is None:
    return
  if rope_base is None:
    raise ValueError(
        f"{where}: rope_frequencies were given, but the layer applies no rotary"
        " embeddings (rope_base=None); make it with rope_base=... (e.g. 10000.0),"
        " or leave rope_frequencies out."
    )
  check_frequencies(frequencies, head_dim, where, "rope_frequencies")


def window_mask(q_positions: jax.Array, kv_positions: jax.Array, window: Any) -> jax.Array:
  """`[..., 1 (heads), q_length, kv_length]`: True where `q - k < window`.

  `q_positions` are `[..., q_length]` (per batch element with a cache),
  `kv_positions` `[kv_length]` (or `[..., kv_length]` given per batch
  element); `window` an int or an integer scalar, possibly traced.
  """
  distance = q_positions[..., :, None] - kv_positions[..., None, :]
  limit = window if isinstance(window, int) else jnp.asarray(window).astype(distance.dtype)
  return (distance < limit)[..., None, :, :]
