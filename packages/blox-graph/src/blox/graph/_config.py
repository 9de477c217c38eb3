"""A module's configuration, read from its attributes by constructor signature.

The attributes a module stores are the one source of truth for its
configuration: for each parameter of the class's `__init__` (after `graph`),
the attribute of the same name, when the module has one, is part of the
configuration unless it equals the parameter's default. `Module.config`,
`repr(module)` and the argument column of `summary` all read it here, so they
show what the module computes with, also after an attribute was changed.

Example:
  >>> class Scale:
  ...   def __init__(self, graph, size, label='scale', rate=0.5):
  ...     self.size, self.label = size, label  # `rate` is not stored
  >>> scale = Scale(None, 4)
  >>> init_config(scale)
  {'size': 4}
  >>> scale.label = 'other'
  >>> init_config(scale)
  {'size': 4, 'label': 'other'}
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["init_config", "is_default"]

_MISSING = object()
_SKIPPED = ("self", "graph")
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _init_parameters(cls: type) -> tuple[inspect.Parameter, ...]:
  """The named parameters of `cls.__init__`, without `self` and `graph`."""
  signature = inspect.signature(cls.__init__)  # type: ignore[misc]  # reads the unbound initialiser
  return tuple(
      parameter
      for parameter in signature.parameters.values()
      if parameter.name not in _SKIPPED and parameter.kind not in _VARIADIC
  )


def is_default(value: Any, default: Any) -> bool:
  """Whether `value` is the parameter default `default`.

  Identity, or `==` between values of one type when that gives a plain bool:
  arrays (whose `==` is elementwise) and values whose `==` raises are never
  taken for a default, so they are always shown.

  Example:
    >>> import numpy as np
    >>> is_default(0.5, 0.5), is_default(np.ones(2), np.ones(2)), is_default(1, None)
    (True, False, False)
  """
  if value is default:
    return True
  if default is inspect.Parameter.empty or type(value) is not type(default):
    return False
  try:
    equal = value == default
  except Exception:  # An arbitrary __eq__ may raise anything; then it is no default.
    return False
  return equal is True


def init_config(module: object) -> dict[str, Any]:
  """The constructor parameters that `module` stores and that differ from
  their defaults, by name, in signature order."""
  config: dict[str, Any] = {}
  for parameter in _init_parameters(type(module)):
    value = getattr(module, parameter.name, _MISSING)
    if value is _MISSING:
      continue
    # A method of the same name is behaviour, not a stored argument.
    if inspect.ismethod(value) and value.__self__ is module:
      continue
    if not is_default(value, parameter.default):
      config[parameter.name] = value
  return config
