"""Helpers shared by the normalisation layers (`LayerNorm`, `RMSNorm`, `BatchNorm`).

Example:
  >>> import jax.numpy as jnp
  >>> compute_dtypes(jnp.bfloat16)
  (dtype('float32'), dtype(bfloat16))
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["check_epsilon", "compute_dtypes", "pmean"]

# jax.lax.pmean has no annotations; calling it through this typed name keeps
# mypy's strict untyped-call check on everywhere else.
pmean: Callable[[jax.Array, Hashable], jax.Array] = jax.lax.pmean


def compute_dtypes(dtype: Any) -> tuple[Any, Any]:
  """`(compute dtype, output dtype)` for normalising inputs of `dtype`.

  Computing in at least float32 keeps the mean of squares of bfloat16 or
  float16 inputs from losing most of its precision (or overflowing). Float
  inputs keep their dtype; integer inputs give the compute dtype.
  """
  compute = jnp.promote_types(dtype, jnp.float32)
  output = jnp.dtype(dtype) if jnp.issubdtype(dtype, jnp.inexact) else compute
  return compute, output


def check_epsilon(epsilon: float, where: str) -> None:
  """Raises ValueError unless `epsilon` is a non-negative number."""
  if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon < 0:
    raise ValueError(f"{where}: epsilon must be a non-negative number, got {epsilon!r}.")
