"""Small helpers shared by the modules of blox.parallel: axis names, a typed `PartitionSpec`.

Example:
  >>> axis_names(('data', 'model'))
  ('data', 'model')
  >>> axis_names('') is None
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax.sharding import PartitionSpec

__all__ = ["axis_names", "spec"]

# PartitionSpec's constructor has no annotations; calling it through this
# typed name keeps mypy's strict untyped-call check on everywhere else.
spec: Callable[..., PartitionSpec] = PartitionSpec


def axis_names(axis: Any) -> tuple[str, ...] | None:
  """`axis` (a name or a sequence of names) as a tuple of names.

  Returns None, for the caller to raise its own error, unless `axis` is a
  non-empty string or a non-empty sequence of them.
  """
  if isinstance(axis, str):
    names: tuple[Any, ...] = (axis,)
  elif isinstance(axis, (tuple, list)):
    names = tuple(axis)
  else:
    return None
  if not names or not all(isinstance(name, str) and name for name in names):
    return None
  return names

