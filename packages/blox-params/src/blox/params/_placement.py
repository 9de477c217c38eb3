"""Where a param is born: the placement hook of `get_or_create`.

A placement is a function `(path, shape, metadata) -> sharding or None`.
While one is active (`placing(placement)`), every param created gets the
sharding it names from its init function itself
(`init(key, shape, dtype, out_sharding=sharding)`, the keyword jax's
initializers take), so a sharded param is never materialised whole, on
Explicit mesh axes too. An init function without the keyword is called as
usual and its result is laid out afterwards. blox.parallel's `init_sharded`
sets a placement from each param's sharding metadata and the logical axis
rules; blox.params itself knows nothing of meshes.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Params, placing
  >>> seen = []
  >>> def placement(path, shape, metadata):
  ...   seen.append((path, shape))
  ...   return None  # None: the init function's default layout
  >>> with placing(placement):
  ...   _, params = Params().get_or_create(('w',), (2, 3), init=jax.nn.initializers.zeros)
  >>> seen
  [(('w',), (2, 3))]
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.sharding import AxisType

from blox.params._metadata import Metadata
from blox.params._paths import Path

__all__ = ["Placement", "call_placed", "placement_for", "placing"]

# `(path, shape, metadata) -> a jax.sharding.Sharding, or None to leave it be`.
Placement = Callable[[Path, tuple[int, ...], Metadata], Any]

_PLACEMENT: contextvars.ContextVar[Placement | None] = contextvars.ContextVar(
    "blox_param_placement", default=None
)


@contextlib.contextmanager
def placing(placement: Placement | None) -> Iterator[None]:
  """Creates params where `placement` says while the `with` block runs (its
  function is traced inside it, e.g. under `jax.jit`); None: no placement."""
  token = _PLACEMENT.set(placement)
  try:
    yield
  finally:
    _PLACEMENT.reset(token)


def placement_for(path: Path, shape: tuple[int, ...], metadata: Metadata) -> Any:
  """The sharding the active placement gives a new param, or None."""
  placement = _PLACEMENT.get()
  return None if placement is None else placement(path, shape, metadata)


def _takes_out_sharding(init: Callable[..., Any]) -> bool:
  try:
    parameters = inspect.signature(init).parameters
  except (TypeError, ValueError):  # builtins and C functions may have none
    return False
  return "out_sharding" in parameters or any(
      p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


# The sharding functions below have no annotations; typed names keep mypy strict.
_reshard: Callable[[Any, Any], Any] = jax.sharding.reshard
_constrain: Callable[[Any, Any], Any] = jax.lax.with_sharding_constraint


def call_placed(init: Callable[..., Any], key: Any, shape: tuple[int, ...], dtype: Any, sharding: Any) -> Any:
  """`init(key, shape, dtype)` created with `sharding` (None: as `init` does)."""
  if sharding is None:
    return init(key, shape, dtype)
  if not _on_explicit_axes(sharding):
    # Auto axes: a constraint, which the partitioner carries back into the
    # init function's ops (they take no Auto axes in their out_sharding).
    return _constrain(init(key, shape, dtype), sharding)
  if _takes_out_sharding(init):
    return init(key, shape, dtype, out_sharding=sharding)
  return _reshard(init(key, shape, dtype), sharding)


def _on_explicit_axes(sharding: Any) -> bool:
  """Whether every mesh axis `sharding` names is an Explicit one."""
  mesh = getattr(sharding, "mesh", None)
  spec = getattr(sharding, "spec", None)
  if mesh is None or spec is None:
    return False
  kinds = dict(zip(mesh.axis_names, mesh.axis_types))
  named = [axis for entry in spec if entry is not None
           for axis in ((entry,) if isinstance(entry, str) else entry)]
  return bool(named) and all(kinds.get(axis) == AxisType.Explicit for axis in named)
