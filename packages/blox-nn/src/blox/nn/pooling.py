"""Pooling: `max_pool`, `min_pool` and `avg_pool` over channels-last inputs.

Pools are plain functions (they have no params). Inputs are laid out as
`(*batch, *spatial, channels)`, with `len(window_shape)` spatial axes and any
number of leading batch axes; each channel is pooled on its own.

Example:
  >>> import jax.numpy as jnp
  >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  >>> max_pool(x, (2, 2))[0, :, :, 0].tolist()
  [[5.0, 7.0], [13.0, 15.0]]
  >>> avg_pool(x, (2, 2), strides=(1, 1), padding='SAME').shape
  (1, 4, 4, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.nn._spatial import Padding, as_size_tuple, as_tuple, normalize_padding

__all__ = ["avg_pool", "max_pool", "min_pool"]


def _pool(
    name: str,
    inputs: jax.Array,
    init_value: Any,
    reducer: Callable[[Any, Any], Any],
    window_shape: Sequence[int],
    strides: int | Sequence[int] | None,
    padding: Padding,
) -> jax.Array:
  """`jax.lax.reduce_window` over the spatial axes, with checked arguments."""
  window = as_size_tuple(window_shape, "window_shape", name)
  n = len(window)
  steps = window if strides is None else as_tuple(strides, n, "strides", name)
  mode = normalize_padding(padding, n, name, allowed=("SAME", "VALID"))
  shape = tuple(jnp.shape(inputs))
  if len(shape) < n + 1:
    raise ValueError(
        f"{name}: a window_shape of length {n} needs inputs shaped (*batch,"
        f" {n} spatial axes, channels), i.e. at least {n + 1} axes; got shape {shape}."
    )
  spatial = shape[len(shape) - n - 1 : -1]
  pads = (
      jax.lax.padtype_to_pads(spatial, window, steps, mode)
      if isinstance(mode, str) else list(mode)
  )
  # Batch and channel axes get a window of 1, stride 1 and no padding.
  lead = len(shape) - n - 1
  pooled: jax.Array = jax.lax.reduce_window(
      inputs, init_value, reducer,
      (1,) * lead + window + (1,),
      (1,) * lead + steps + (1,),
      [(0, 0)] * lead + list(pads) + [(0, 0)],
  )
  return pooled


def _extreme(dtype: Any, low: bool) -> Any:
  """The value that never wins a max (`low`) or a min: -inf/+inf, or the int limits."""
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.array(-jnp.inf if low else jnp.inf, dtype)
  if jnp.issubdtype(dtype, jnp.integer):
    info = np.iinfo(np.dtype(dtype))
    return jnp.array(info.min if low else info.max, dtype)
  if jnp.issubdtype(dtype, jnp.bool_):
    return jnp.array(not low, dtype)
  raise TypeError(f"Cannot pool inputs of dtype {dtype}.")


def max_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
  """The maximum of each window.

  Args:
    inputs: `(*batch, *spatial, channels)`.
    window_shape: one size per spatial axis, e.g. `(2, 2)` (a sequence, even
      in 1-D: `(2,)`).
    strides: an int or one per spatial axis; defaults to `window_shape`
      (non-overlapping windows).
    padding: `'VALID'` (windows lie inside the input), `'SAME'` (output size
      `ceil(input / stride)`), or one `(low, high)` pair per spatial axis.
      Padded positions never win.
  """
  dtype = jnp.result_type(inputs)
  return _pool("max_pool", inputs, _extreme(dtype, low=True), jax.lax.max,
               window_shape, strides, padding)


def min_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
  """The minimum of each window; arguments as for `max_pool`."""
  dtype = jnp.result_type(inputs)
  return _pool("min_pool", inputs, _extreme(dtype, low=False), jax.lax.min,
               window_shape, strides, padding)


def avg_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = True,
) -> jax.Array:
  """The mean of each window; arguments as for `max_pool`.

  With `count_include_pad=True` (the default) every window sum is divided by
  the full window size, so padded positions count as zeros and windows at a
  padded edge average towards zero. With `False` each sum is divided by the
  number of real input positions in its window instead. The two agree for
  `'VALID'`. Integer inputs give float32 outputs.
  """
  dtype = jnp.result_type(inputs)
  if not jnp.issubdtype(dtype, jnp.inexact):
    dtype = jnp.promote_types(dtype, jnp.float32)
  x = jnp.asarray(inputs, dtype)
  zero = jnp.array(0, dtype)
  sums = _pool("avg_pool", x, zero, jax.lax.add, window_shape, strides, padding)
  if count_include_pad:
    size = 1
    for s in as_size_tuple(window_shape, "window_shape", "avg_pool"):
      size *= s
    return sums / jnp.array(size, dtype)
  # Pool a ones array shaped like one example to count the real positions
  # per window; it broadcasts over the batch axes.
  n = len(tuple(window_shape))
  counts = _pool("avg_pool", jnp.ones(x.shape[x.ndim - n - 1 : -1] + (1,), dtype), zero,
                 jax.lax.add, window_shape, strides, padding)
  return sums / counts
