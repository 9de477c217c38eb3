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

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from blox.nn._spatial import Padding, as_size_tuple, as_tuple, normalize_padding

__all__ = ["avg_pool", "max_pool", "min_pool"]


class _Windows(NamedTuple):
  """Checked pooling arguments, one entry per spatial axis."""

  window: tuple[int, ...]
  strides: tuple[int, ...]
  pads: tuple[tuple[int, int], ...]
  spatial: tuple[int, ...]  # the input sizes


def _windows(
    name: str,
    shape: tuple[int, ...],
    window_shape: Sequence[int],
    strides: int | Sequence[int] | None,
    padding: Padding,
) -> _Windows:
  """Checks the arguments against an input `shape` and resolves the padding."""
  window = as_size_tuple(window_shape, "window_shape", name)
  n = len(window)
  steps = window if strides is None else as_tuple(strides, n, "strides", name)
  mode = normalize_padding(padding, n, name, allowed=("SAME", "VALID"))
  if len(shape) < n + 1:
    raise ValueError(
        f"{name}: a window_shape of length {n} needs inputs shaped (*batch,"
        f" {n} spatial axes, channels), i.e. at least {n + 1} axes; got shape {shape}."
    )
  spatial = shape[len(shape) - n - 1 : -1]
  pads = (
      jax.lax.padtype_to_pads(spatial, window, steps, mode)
      if isinstance(mode, str) else mode
  )
  return _Windows(window, steps, tuple((int(lo), int(hi)) for lo, hi in pads), spatial)


def _pool(
    inputs: jax.Array,
    init_value: np.ndarray,
    reducer: Callable[[Any, Any], Any],
    windows: _Windows,
) -> jax.Array:
  """`jax.lax.reduce_window` over the spatial axes."""
  # Batch and channel axes get a window of 1, stride 1 and no padding.
  lead = jnp.ndim(inputs) - len(windows.window) - 1
  pooled: jax.Array = jax.lax.reduce_window(
      inputs, init_value, reducer,
      (1,) * lead + windows.window + (1,),
      (1,) * lead + windows.strides + (1,),
      [(0, 0)] * lead + list(windows.pads) + [(0, 0)],
  )
  return pooled


# Init values are NumPy scalars, never jnp arrays: under jax.jit a jnp array
# is a tracer, and reduce_window can then no longer tell that (max, -inf) is
# a monoid; its generic form has no derivative, so jit(grad(...)) would fail.


def _extreme(dtype: Any, low: bool) -> np.ndarray:
  """The value that never wins a max (`low`) or a min: -inf/+inf, or the int limits."""
  if jnp.issubdtype(dtype, jnp.floating):
    return np.array(-np.inf if low else np.inf, dtype)
  if jnp.issubdtype(dtype, jnp.integer):
    info = np.iinfo(np.dtype(dtype))
    return np.array(info.min if low else info.max, dtype)
  if jnp.issubdtype(dtype, jnp.bool_):
    return np.array(not low, dtype)
  raise TypeError(f"Cannot pool inputs of dtype {dtype}.")


def _window_counts(size: int, window: int, stride: int, pad: tuple[int, int]) -> np.ndarray:
  """How many of the `size` real positions of one axis each window covers."""
  low, high = pad
  outputs = max(0, (size + low + high - window) // stride + 1)
  starts = np.arange(outputs) * stride - low
  return np.clip(starts + window, 0, size) - np.clip(starts, 0, size)


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
  windows = _windows("max_pool", jnp.shape(inputs), window_shape, strides, padding)
  return _pool(inputs, _extreme(jnp.result_type(inputs), low=True), jax.lax.max, windows)


def min_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> jax.Array:
  """The minimum of each window; arguments as for `max_pool`."""
  windows = _windows("min_pool", jnp.shape(inputs), window_shape, strides, padding)
  return _pool(inputs, _extreme(jnp.result_type(inputs), low=False), jax.lax.min, windows)


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
  windows = _windows("avg_pool", jnp.shape(inputs), window_shape, strides, padding)
  dtype = jnp.result_type(inputs)
  if not jnp.issubdtype(dtype, jnp.inexact):
    dtype = jnp.promote_types(dtype, jnp.float32)
  sums = _pool(jnp.asarray(inputs, dtype), np.array(0, dtype), jax.lax.add, windows)
  if count_include_pad:
    return sums / np.array(math.prod(windows.window), dtype)
  # The number of real positions per window is known from the shapes alone:
  # per axis it is the window clipped to the input, and over several axes the
  # product. Computed here in NumPy, it is a constant of the traced program.
  counts = np.ones((), np.int64)
  for size, window, stride, pad in zip(windows.spatial, windows.window, windows.strides, windows.pads):
    counts = np.multiply.outer(counts, _window_counts(size, window, stride, pad))
  # A trailing channel axis of 1, and it broadcasts over the batch axes.
  return sums / counts[..., None].astype(dtype)
