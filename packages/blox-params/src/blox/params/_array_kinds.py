"""What counts as an array, a param value and a typed PRNG key, for all of blox.

Every package of blox asks these questions of a value; they are answered here
once, and the other packages import the answers from `blox.params`.

Example:
  >>> import jax, numpy as np
  >>> is_array(np.ones(3)), is_array(3.0), is_array(jax.ShapeDtypeStruct((2,), 'float32'))
  (True, False, False)
  >>> is_value(jax.ShapeDtypeStruct((2,), 'float32'))
  True
  >>> is_prng_key(jax.random.key(0)), is_prng_key(np.uint32(0))
  (True, False)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_array", "is_prng_key", "is_value"]


def is_array(value: object) -> bool:
  """Whether `value` is a concrete array: a jax or numpy array or numpy scalar.

  Python numbers, lists and abstract `jax.ShapeDtypeStruct`s are not.

  Example:
    >>> import jax.numpy as jnp
    >>> is_array(jnp.zeros(2)), is_array([0.0, 0.0])
    (True, False)
  """
  return isinstance(value, (jax.Array, np.ndarray, np.generic))


def is_value(value: object) -> bool:
  """Whether `value` can be one param's value: a concrete array (see
  `is_array`) or an abstract `jax.ShapeDtypeStruct` (from `jax.eval_shape`).

  Example:
    >>> import jax
    >>> is_value(jax.ShapeDtypeStruct((2,), 'float32')), is_value(2.0)
    (True, False)
  """
  return is_array(value) or isinstance(value, jax.ShapeDtypeStruct)


def is_prng_key(value: Any) -> bool:
  """Whether `value` (an array, or a dtype) is a typed PRNG key (`key<fry>`).

  Legacy raw `uint32[2]` keys are plain integer arrays and are not.

  Example:
    >>> import jax
    >>> is_prng_key(jax.random.key(0).dtype), is_prng_key(jax.random.PRNGKey(0))
    (True, False)
  """
  dtype = getattr(value, "dtype", value)
  try:
    return bool(jnp.issubdtype(dtype, jax.dtypes.prng_key))
  except TypeError:
    return False
