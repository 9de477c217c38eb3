"""`Initializer`: the contract of the functions that create a param's first value.

Example:
  >>> import jax, jax.numpy as jnp
  >>> def ones(key, shape, dtype):
  ...   return jnp.ones(shape, dtype)
  >>> init: Initializer = ones
  >>> init(None, (2,), jnp.float32)
  Array([1., 1.], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Initializer"]


class Initializer(Protocol):
  """`init(key, shape, dtype) -> array`, the contract of `jax.nn.initializers`.

  `key` is None when the param is created without a key source. `dtype` is
  always passed, so a plain `lambda key, shape, dtype: ...` qualifies as well
  as JAX's initializers (whose dtype has a default).

  Example:
    >>> import jax
    >>> init: Initializer = jax.nn.initializers.zeros
    >>> init(None, (2,), 'float32').tolist()
    [0.0, 0.0]
  """

  def __call__(self, key: Any, shape: Any, dtype: Any, /) -> Any: ...
