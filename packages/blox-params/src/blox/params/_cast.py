"""`Params.astype`: every floating-point value cast to another floating dtype.

Mixed precision and checkpoint conversion cast the weights, and only the
weights: a `Params` also holds typed PRNG keys (random-stream seeds), integer
counters and bool flags, which have no floating dtype to change (and a
typed key cannot be cast at all, so `jax.tree.map(lambda v:
v.astype(jnp.bfloat16), params)` fails on it). `astype` casts the
floating-point values and keeps everything else, including the structure.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({('w',): Param(jnp.ones(2)),
  ...                  ('seed',): Param(jax.random.key(0), trainable=False)})
  >>> half = astype(params, jnp.bfloat16)
  >>> half[('w',)].value.dtype, half[('seed',)].value is params[('seed',)].value
  (dtype(bfloat16), True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from blox.params._dtypes import canonical_dtype, dtype_text, is_floating_dtype
from blox.params._param import Param
from blox.params._paths import Path

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["astype", "cast_dtype"]

# jax.ShapeDtypeStruct's constructor has no annotations; calling it through a
# typed name keeps mypy's strict untyped-call check on everywhere else.
_abstract_array: Callable[..., jax.ShapeDtypeStruct] = jax.ShapeDtypeStruct


def astype(params: Params, dtype: Any) -> Params:
  """Returns params with every floating-point value cast to `dtype`.

  Values of a floating dtype (float16, bfloat16, float32, float64, float8
  variants) are cast; integer, bool, complex and typed PRNG key values are
  kept as they are, the very same objects, and so are values that already
  have `dtype`. Trainable flags, metadata, order, ranks and the locked flag
  are kept: the result has the same tree structure. Abstract values
  (`jax.ShapeDtypeStruct`) get the new dtype too; works under `jax.jit`.

  Args:
    dtype: a floating-point dtype, e.g. `jnp.bfloat16` or `'float32'`.

  Raises:
    TypeError: `dtype` is not a dtype.
    ValueError: `dtype` is not floating-point (cast integer params one by one
      with `params.set`), or is 64-bit while JAX's 64-bit mode is off.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from blox.params import Param, Params
    >>> params = Params({('w',): Param(jnp.ones(2)), ('n',): Param(jnp.zeros((), jnp.int32))})
    >>> [p.value.dtype.name for p in params.astype(jnp.float16).values()]
    ['float16', 'int32']
  """
  target = cast_dtype(dtype)

  def cast(path: Path, param: Param) -> Any:
    value = param.value
    dtype = getattr(value, "dtype", None)
    if dtype is None or dtype == target or not is_floating_dtype(dtype):
      return value
    if isinstance(value, jax.ShapeDtypeStruct):
      return _abstract_array(value.shape, target, sharding=value.sharding)
    if isinstance(value, (np.ndarray, np.generic)):
      return np.asarray(value).astype(target)
    return value.astype(target)

  return params.map(cast)


def cast_dtype(dtype: Any) -> Any:
  """`dtype` as a floating numpy dtype JAX can hold, or a clear error.

  Example:
    >>> import jax.numpy as jnp
    >>> cast_dtype('bfloat16') == jnp.bfloat16
    True
  """
  try:
    target = np.dtype(dtype)
  except TypeError as error:
    raise TypeError(f"astype: {dtype!r} is not a dtype ({error}).") from None
  if not is_floating_dtype(target):
    raise ValueError(
        f"astype casts the floating-point params to another floating-point dtype,"
        f" and {dtype_text(target)} is not one (integer, bool, complex and PRNG key"
        " params are never cast). Pass e.g. jnp.bfloat16 or jnp.float32; to"
        " change one param's dtype, create it anew (params.set keeps dtypes)."
    )
  if canonical_dtype(target) != target:
    raise ValueError(
        f"astype({dtype_text(target)}): JAX holds {dtype_text(target)} values only"
        " with 64-bit mode on; enable it first (jax.config.update("
        "'jax_enable_x64', True)) or cast to float32."
    )
  return target
