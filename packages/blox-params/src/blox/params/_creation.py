"""`get_or_create` and `set`: the primitives every module's params are made with.

`Params` takes both as its methods (`set_param` is `Params.set`). `get_or_create`
runs as named steps: find the path; if it exists, check the requested
shape and dtype against it and return it; otherwise refuse while locked,
draw a key, call the init function (adding a note naming the param if it
fails), check what it returned, and insert it (rank max+1, see
`blox.params._structure`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Params
  >>> w, params = get_or_create(Params(), ('w',), (2,), init=jax.nn.initializers.ones)
  >>> get_or_create(params, ('w',), (3,))
  Traceback (most recent call last):
  ...
  ValueError: Param ('w',) exists with shape (2,), but shape (3,) was requested: dimension 0 is 3, it was 2 when the param was created. If the module's input (for a layer, the input's last axis) or its configuration changed, re-initialise the params (or use another name for a genuinely different param).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from blox.params._array_kinds import is_value
from blox.params._dtypes import canonical_dtype, dtype_text, same_dtype
from blox.params._initializer import Initializer
from blox.params._key_source import KeySource
from blox.params._metadata import as_metadata
from blox.params._param import check_replacement
from blox.params._placement import call_placed, placement_for
from blox.params._paths import Path, check_path, closest_hint, path_text
from blox.params._unused import READS

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["get_or_create", "set_param"]

_REINITIALISE = (
    " If the module's input (for a layer, the input's last axis) or its"
    " configuration changed, re-initialise the params (or use another name for"
    " a genuinely different param)."
)


def get_or_create(
    params: Params,
    path: Path,
    shape: Sequence[int] | None = None,
    *,
    init: Initializer | None = None,
    param_dtype: Any = None,
    trainable: bool = True,
    metadata: Mapping[str, Any] | None = None,
    rng: KeySource | None = None,
) -> tuple[Any, Params]:
  """Returns the value at `path`, creating it first if it is missing.

  `Params.get_or_create`: these params are the first argument. An existing
  value is checked against `shape` and `param_dtype` when they are given;
  `init`, `trainable`, `metadata` and `rng` only matter for creation.
  Creating calls `init(key, shape, param_dtype)` (`param_dtype` defaults to
  float32; a requested dtype means what JAX makes of it, e.g. float32 for
  float64 while 64-bit mode is off), where `key` is drawn from the key source
  `rng` (exactly one draw) or is None without one. An exception from `init`
  gets a note naming the param. A created param is appended (rank max+1).
  Everything after `shape` is keyword-only.

  Returns:
    `(value, params)`: params are these params, or a new container that also
    holds the created param (and the key source's advanced state).

  Raises:
    ValueError: the existing value has another shape or dtype (the message
      names the changed dimension); or a creation lacks `shape` or `init`,
      or `init` returns another shape or dtype.
    RuntimeError: creating while locked.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from blox.params import Params
    >>> w, params = Params().get_or_create(('w',), (2,), init=jax.nn.initializers.zeros)
    >>> params.get_or_create(('w',), (2,))[0] is w
    True
  """
  position = params._structure.index().get(check_path(path))
  dtype = _requested_dtype(path, param_dtype)
  if position is not None:
    value = params._values[position]
    _check_existing(path, value, shape, dtype)
    reads = READS.get()
    if reads is not None:
      reads.add(path)
    return value, params
  _refuse_while_locked(params, path)
  if shape is None or init is None:
    raise ValueError(
        f"Param {path_text(path)} does not exist yet; creating it needs both a"
        f" shape and an init function (got shape={shape!r}, init={init!r})."
    )
  shape = tuple(int(d) for d in shape)
  dtype = jnp.float32 if dtype is None else dtype
  key, params = _draw_key(params, rng)
  metadata = as_metadata(metadata)
  sharding = placement_for(path, shape, metadata)
  value = _call_init(path, init, key, shape, dtype, sharding)
  _check_created(path, value, shape, dtype)
  return value, params._inserted(path, value, trainable, metadata)


def set_param(
    params: Params,
    path: Path,
    value: Any = None,
    *,
    trainable: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Params:
  """Returns params with the existing param at `path` changed (rank kept).

  `Params.set`: these params are the first argument. Works on locked params
  too (runtime state such as counters changes there).

  Args:
    path: an existing path.
    value: a new array of the same shape and dtype, or None to keep it.
    trainable: a new flag, or None to keep it.
    metadata: entries merged over the existing metadata, or None.

  Raises:
    KeyError: no param at `path`.
    TypeError: `value` is not an array.
    ValueError: `value` has another shape or dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from blox.params import Param, Params
    >>> params = Params({('n',): Param(jnp.zeros(()))})
    >>> params.set(('n',), jnp.ones(()), trainable=False)[('n',)]
    Param(float32[], trainable=False)
  """
  i = params._position(check_path(path))
  s = params._structure
  old = params._values[i]
  if value is None:
    value = old
  else:
    check_replacement(path, old, value)
  if trainable is not None and not isinstance(trainable, bool):
    raise TypeError(f"trainable must be a bool, got {type(trainable).__name__}.")
  new_trainable = s.trainable[i] if trainable is None else trainable
  new_metadata = s.metadata[i] if metadata is None else s.metadata[i].merged(metadata)
  return params._changed(i, value, new_trainable, new_metadata)


def _requested_dtype(path: Path, dtype: Any) -> Any:
  """The dtype JAX really makes of `dtype` (None stays None).

  With 64-bit mode off, float64 becomes float32 in every initializer, so
  both the check and the creation use what JAX makes.
  """
  if dtype is None:
    return None
  try:
    return canonical_dtype(dtype)
  except TypeError as error:
    raise TypeError(
        f"Param {path_text(path)}: {dtype!r} is not a dtype ({error})."
    ) from None


def _check_existing(path: Path, value: Any, shape: Sequence[int] | None, dtype: Any) -> None:
  """Raises ValueError, naming the changed dimension, unless `value` fits."""
  if shape is not None and tuple(value.shape) != tuple(shape):
    old, new = tuple(value.shape), tuple(int(d) for d in shape)
    raise ValueError(
        f"Param {path_text(path)} exists with shape {old}, but shape {new} was"
        f" requested: {_shape_change(old, new)} when the param was created."
        + _REINITIALISE
    )
  if dtype is not None and not same_dtype(value.dtype, dtype):
    raise ValueError(
        f"Param {path_text(path)} exists with dtype {dtype_text(value.dtype)}, but"
        f" dtype {dtype_text(dtype)} was requested. Cast the params to the"
        f" module's param dtype (params.astype({dtype_text(dtype)}) casts every"
        " floating-point param) or build the module with"
        f" param_dtype={dtype_text(value.dtype)}; params loaded from a checkpoint"
        " keep the dtype they were saved with."
    )


def _shape_change(old: tuple[int, ...], new: tuple[int, ...]) -> str:
  """`dimension 0 is 5, it was 3` for each dimension that differs."""
  if len(old) != len(new):
    return f"it has {len(new)} dimensions now, it had {len(old)}"
  return "; ".join(
      f"dimension {axis} is {now}, it was {before}"
      for axis, (before, now) in enumerate(zip(old, new))
      if before != now
  )


def _refuse_while_locked(params: Params, path: Path) -> None:
  if params.is_locked:
    raise RuntimeError(
        f"Params is locked: cannot create the new param {path_text(path)}. Call"
        " params.unlocked() to add params (initialisation), or check the name"
        f" for a typo.{closest_hint(path, params._structure.paths)}"
    )


def _draw_key(params: Params, rng: KeySource | None) -> tuple[Any, Params]:
  """Exactly one draw from `rng` (even if init ignores it), or None."""
  if rng is None:
    return None, params
  return rng(params)


def _call_init(
    path: Path, init: Initializer, key: Any, shape: tuple[int, ...], dtype: Any, sharding: Any
) -> Any:
  """`init(key, shape, dtype)`, placed by the active placement (see
  `_placement`); a failure gets a note naming the param."""
  try:
    return call_placed(init, key, shape, dtype, sharding)
  except Exception as error:
    note = (
        f"While creating param {path_text(path)} by calling its init function as"
        f" init(key, shape={shape}, dtype={dtype_text(dtype)})."
    )
    if key is None:
      note += (
          " No key source (rng) was given, so key is None: give the module,"
          " get_param or get_or_create an rng if this init function draws"
          " random numbers."
      )
    error.add_note(note)
    raise


def _check_created(path: Path, value: Any, shape: tuple[int, ...], dtype: Any) -> None:
  """The init function must return one array of the requested shape and dtype."""
  if not is_value(value):
    raise TypeError(
        f"The init function for {path_text(path)} returned"
        f" {type(value).__name__}, not an array."
    )
  if tuple(value.shape) != shape:
    raise ValueError(
        f"The init function for {path_text(path)} returned shape"
        f" {tuple(value.shape)}, but shape {shape} was requested."
    )
  if not same_dtype(value.dtype, dtype):
    raise ValueError(
        f"The init function for {path_text(path)} returned dtype {value.dtype},"
        f" but dtype {dtype_text(dtype)} was requested; make it honour its dtype"
        " argument."
    )
