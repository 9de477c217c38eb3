"""Helpers shared by the normalisation layers (`LayerNorm`, `RMSNorm`, `BatchNorm`).

Example:
  >>> import jax.numpy as jnp
  >>> compute_dtypes(jnp.bfloat16)
  (dtype('float32'), dtype(bfloat16))
  >>> from blox.nn._precision import Dtypes
  >>> compute_dtypes(jnp.float32, Dtypes(None, jnp.dtype(jnp.bfloat16), None))
  (dtype('float32'), dtype(bfloat16))
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp

from blox.nn._precision import Dtypes

__all__ = ["check_epsilon", "compute_dtypes", "pmean"]

# jax.lax.pmean has no annotations; calling it through this typed name keeps
# mypy's strict untyped-call check on everywhere else.
_pmean: Callable[[jax.Array, Hashable], jax.Array] = jax.lax.pmean


def pmean(x: jax.Array, axis_name: Hashable, where: str) -> jax.Array:
  """`jax.lax.pmean(x, axis_name)`, with an error naming the layer when the
  axis is not bound (the layer was called outside `vmap`/`shard_map`)."""
  try:
    return _pmean(x, axis_name)
  except NameError as error:
    raise NameError(
        f"{where}: axis_name={axis_name!r} is not bound here ({error}). A layer"
        " with an axis_name averages its statistics across that named axis, so"
        " call it inside jax.vmap(..., axis_name=...) or jax.shard_map over a"
        f" mesh with the axis {axis_name!r}; or make it with axis_name=None."
    ) from error


def compute_dtypes(dtype: Any, dtypes: Dtypes | None = None) -> tuple[Any, Any]:
  """`(statistics dtype, output dtype)` for normalising inputs of `dtype`.

  The whole normalisation (statistics, scale and bias) runs in at least
  float32, whatever the compute dtype: that keeps the mean of squares of
  bfloat16 or float16 inputs from losing most of its precision (or
  overflowing). The outputs take the layer's output dtype, else its compute
  dtype (`dtypes`), else the dtype of the (floating-point) inputs.
  """
  statistics, output = jnp.promote_types(dtype, jnp.float32), jnp.dtype(dtype)
  if dtypes is not None and dtypes.compute is not None:
    statistics = jnp.promote_types(statistics, dtypes.compute)
    output = dtypes.compute
  if dtypes is not None and dtypes.output is not None:
    output = dtypes.output
  return statistics, output


def check_epsilon(value: Any, name: str, where: str) -> Any:
  """`value`; raises ValueError unless it is a non-negative number (a setting's check)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
    raise ValueError(f"{where}: {name} must be a non-negative number, got {value!r}.")
  return value
