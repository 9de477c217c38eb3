"""What counts as an array, a PRNG key, and a dtype, in one place for all of blox.

Every package of blox asks the same few questions of a value: is it an array,
is it a typed PRNG key, which dtype does JAX really make of a requested one.
They are answered here once; the other packages import the answers from
`blox.params`.

Example:
  >>> import jax, numpy as np
  >>> is_array(np.ones(3)), is_array(3.0), is_array(jax.ShapeDtypeStruct((2,), 'float32'))
  (True, False, False)
  >>> is_prng_key(jax.random.key(0)), is_prng_key(np.uint32(0))
  (True, False)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Initializer",
    "canonical_dtype",
    "describe_value",
    "dtype_text",
    "is_array",
    "is_prng_key",
    "is_value",
    "measure",
    "same_dtype",
    "split_arrays",
]


class Initializer(Protocol):
  """`init(key, shape, dtype) -> array`, the contract of `jax.nn.initializers`.

  `key` is None when the param is created without a key source. `dtype` is
  always passed, so a plain `lambda key, shape, dtype: ...` qualifies as well
  as JAX's initializers (whose dtype has a default).
  """

  def __call__(self, key: Any, shape: Any, dtype: Any, /) -> Any: ...


def is_array(value: object) -> bool:
  """Whether `value` is a concrete array: a jax or numpy array or numpy scalar.

  Python numbers, lists and abstract `jax.ShapeDtypeStruct`s are not.
  """
  return isinstance(value, (jax.Array, np.ndarray, np.generic))


def is_value(value: object) -> bool:
  """Whether `value` can be one param's value: a concrete array (see
  `is_array`) or an abstract `jax.ShapeDtypeStruct` (from `jax.eval_shape`)."""
  return is_array(value) or isinstance(value, jax.ShapeDtypeStruct)


def is_prng_key(value: Any) -> bool:
  """Whether `value` (an array, or a dtype) is a typed PRNG key (`key<fry>`).

  Legacy raw `uint32[2]` keys are plain integer arrays and are not.
  """
  dtype = getattr(value, "dtype", value)
  try:
    return bool(jnp.issubdtype(dtype, jax.dtypes.prng_key))
  except TypeError:
    return False


def canonical_dtype(dtype: Any) -> Any:
  """The dtype JAX actually creates for `dtype` (float32 for float64 while
  64-bit mode is off); typed PRNG key dtypes are returned as they are."""
  if is_prng_key(dtype):
    return dtype
  return jax.dtypes.canonicalize_dtype(dtype)


def dtype_text(dtype: Any) -> str:
  """`float32` for any spelling of a dtype (`jnp.float32`, 'float32', ...)."""
  try:
    return str(jnp.dtype(dtype))
  except TypeError:
    return str(dtype)


def same_dtype(existing: Any, requested: Any) -> bool:
  """Whether two dtypes agree; also for typed PRNG key dtypes (`key<fry>`).

  `jnp.dtype` cannot interpret key dtypes, so they are compared as they are.
  """
  if existing == requested:
    return True
  try:
    return bool(jnp.dtype(existing) == jnp.dtype(requested))
  except TypeError:
    return False


def describe_value(value: Any) -> str:
  """Shape and dtype of an array-like (`float32[3, 4]`), never its contents."""
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


def split_arrays(
    args: Sequence[Any], kwargs: Mapping[str, Any] | None = None
) -> tuple[list[Any], Callable[[Sequence[Any]], tuple[tuple[Any, ...], dict[str, Any]]]]:
  """The array leaves (`is_value`) of a call's arguments, and how to put others back.

  Transformations such as `jax.eval_shape` or `jax.jit` trace every leaf
  they are given; a function's other arguments (sizes, flags, modules) must
  stay as they are. This splits `(args, kwargs)` into the list of array
  leaves and a `rebuild(arrays)` that returns `(args, kwargs)` with those
  leaves replaced, e.g. by tracers.

  Example:
    >>> import numpy as np
    >>> arrays, rebuild = split_arrays((np.ones(2), 3), {'flag': True})
    >>> len(arrays), rebuild(['x'])
    (1, (('x', 3), {'flag': True}))
  """
  leaves, treedef = jax.tree.flatten((tuple(args), dict(kwargs or {})))
  positions = [i for i, leaf in enumerate(leaves) if is_value(leaf)]

  def rebuild(arrays: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    filled = list(leaves)
    for i, array in zip(positions, arrays, strict=True):
      filled[i] = array
    call_args, call_kwargs = jax.tree.unflatten(treedef, filled)
    return call_args, call_kwargs

  return [leaves[i] for i in positions], rebuild
