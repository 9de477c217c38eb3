"""Dtypes as JAX really makes them, compared and written the same way everywhere.

A requested dtype is not always what JAX creates (float64 is float32 while
64-bit mode is off), typed PRNG key dtypes are not numpy dtypes, and the same
dtype has many spellings. These helpers answer "which dtype", "the same
dtype?", "how to write it" and "floating (or differentiable) at all?" once.

Example:
  >>> import jax.numpy as jnp
  >>> canonical_dtype(jnp.float64), dtype_text(jnp.bfloat16)
  (dtype('float32'), 'bfloat16')
  >>> same_dtype('float32', jnp.float32), is_floating_dtype(jnp.int8)
  (True, False)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from blox.params._array_kinds import is_prng_key

__all__ = ["canonical_dtype", "dtype_text", "is_floating_dtype", "is_inexact_dtype", "same_dtype"]


def canonical_dtype(dtype: Any) -> Any:
  """The dtype JAX actually creates for `dtype` (float32 for float64 while
  64-bit mode is off); typed PRNG key dtypes are returned as they are.

  Example:
    >>> canonical_dtype('float16')
    dtype('float16')
  """
  if is_prng_key(dtype):
    return dtype
  return jax.dtypes.canonicalize_dtype(dtype)


def dtype_text(dtype: Any) -> str:
  """`float32` for any spelling of a dtype (`jnp.float32`, 'float32', ...).

  Example:
    >>> import numpy as np
    >>> dtype_text(np.float32), dtype_text('int8')
    ('float32', 'int8')
  """
  try:
    return str(jnp.dtype(dtype))
  except TypeError:
    return str(dtype)


def same_dtype(existing: Any, requested: Any) -> bool:
  """Whether two dtypes agree; also for typed PRNG key dtypes (`key<fry>`).

  `jnp.dtype` cannot interpret key dtypes, so they are compared as they are.

  Example:
    >>> import jax
    >>> key_dtype = jax.random.key(0).dtype
    >>> same_dtype(key_dtype, key_dtype), same_dtype(key_dtype, 'uint32')
    (True, False)
  """
  if existing == requested:
    return True
  try:
    return bool(jnp.dtype(existing) == jnp.dtype(requested))
  except TypeError:
    return False


def is_floating_dtype(dtype: Any) -> bool:
  """Whether `dtype` is a real floating-point dtype (bfloat16 and float8 too).

  Integers, bools, complex numbers and typed PRNG keys are not.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> is_floating_dtype(jnp.bfloat16), is_floating_dtype(jax.random.key(0).dtype)
    (True, False)
  """
  if dtype is None or is_prng_key(dtype):  # jnp.dtype(None) would be float64
    return False
  try:
    return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))
  except TypeError:
    return False


def is_inexact_dtype(dtype: Any) -> bool:
  """Whether values of `dtype` can be differentiated: floating or complex.

  Integers, bools and typed PRNG keys (counters, seeds) have no gradient.

  Example:
    >>> import jax.numpy as jnp
    >>> is_inexact_dtype(jnp.complex64), is_inexact_dtype(jnp.uint32)
    (True, False)
  """
  if dtype is None or is_prng_key(dtype):  # jnp.dtype(None) would be float64
    return False
  try:
    return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.inexact))
  except TypeError:
    return False
