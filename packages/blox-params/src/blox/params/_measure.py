"""How big a value is and how to name its kind, never its contents.

`measure` gives the numbers the tables of params show (shape, dtype,
element count, bytes); `describe_value` the short text (`float32[3, 4]`)
reprs and error messages use. Typed PRNG keys count their key data.

Example:
  >>> import jax
  >>> describe_value(jax.ShapeDtypeStruct((3, 4), 'float32'))
  'float32[3, 4]'
  >>> measure(jax.random.key(0))[2:]
  (2, 8)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from blox.params._array_kinds import is_prng_key

__all__ = ["describe_value", "measure"]


def describe_value(value: Any) -> str:
  """Shape and dtype of an array-like (`float32[3, 4]`), never its contents.

  Example:
    >>> import numpy as np
    >>> describe_value(np.zeros((2, 1), np.int8)), describe_value('text')
    ('int8[2, 1]', 'str')
  """
  shape = getattr(value, "shape", None)
  dtype = getattr(value, "dtype", None)
  if shape is None or dtype is None:
    return type(value).__name__
  return f"{dtype}{list(shape)}"


def measure(value: Any) -> tuple[tuple[int, ...], Any, int, int]:
  """`(shape, dtype, element count, bytes)` of an array or abstract array.

  What the tables of params (`blox.graph.summary`, `Params`' HTML display)
  show. A typed PRNG key array counts its key data: a threefry key is one key
  but two uint32 words, and the words are what occupies memory.

  Example:
    >>> import jax
    >>> measure(jax.ShapeDtypeStruct((3, 4), 'float32'))
    ((3, 4), dtype('float32'), 12, 48)
    >>> measure(jax.random.key(0))[2:]
    (2, 8)
  """
  shape = tuple(int(d) for d in getattr(value, "shape", np.shape(value)))
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    dtype = np.asarray(value).dtype
  if is_prng_key(dtype):
    # Key arrays always carry shape and dtype, and eval_shape takes concrete
    # and abstract ones alike.
    data = jax.eval_shape(jax.random.key_data, value)
    count = math.prod(data.shape)
    return shape, dtype, count, count * np.dtype(data.dtype).itemsize
  count = math.prod(shape)
  return shape, dtype, count, count * np.dtype(dtype).itemsize
