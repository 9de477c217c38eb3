"""A griffe extension: a blox module class is documented as Python builds it.

A `Module` subclass declares its settings as annotated class attributes
(`blox.graph.setting`); its metaclass makes the constructor and the `Args:`
section of its docstring from them when the class is created. Reading the
source, as griffe does, sees neither: it would show `Linear(graph)` without
arguments. This extension imports each module class it meets and gives it
the docstring and the constructor parameters the class has at runtime.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import griffe

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _runtime_class(cls: griffe.Class) -> Any:
  try:
    return getattr(importlib.import_module(cls.module.path), cls.name, None)
  except Exception:  # A module that cannot be imported here is left as read.
    return None


def _annotation(value: Any) -> str:
  """An annotation as text (declarations are strings under postponed evaluation)."""
  if value is inspect.Parameter.empty or value is None:
    return "Any"
  return value if isinstance(value, str) else getattr(value, "__name__", repr(value))


def _text(value: Any) -> str:
  if inspect.isfunction(value) or inspect.isclass(value):
    return value.__name__
  return repr(value)


class ModuleSettings(griffe.Extension):
  """Docstring and constructor of blox module classes, taken from the class itself."""

  def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
    runtime = _runtime_class(cls)
    if runtime is None or not hasattr(runtime, "__blox_settings__"):
      return
    if runtime.__doc__:
      cls.docstring = griffe.Docstring(inspect.cleandoc(runtime.__doc__), parent=cls)
    signature = inspect.signature(runtime)
    settings = runtime.__blox_settings__
    parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    for parameter in signature.parameters.values():
      default = None if parameter.default is inspect.Parameter.empty else _text(parameter.default)
      declared = settings.get(parameter.name)
      annotation = (
          "Graph" if parameter.name == "graph"
          else _annotation(declared.annotation if declared is not None else parameter.annotation)
      )
      parameters.append(griffe.Parameter(
          parameter.name, kind=_KINDS[parameter.kind], default=default, annotation=annotation))
    init = griffe.Function("__init__", parameters=griffe.Parameters(*parameters), parent=cls)
    cls.set_member("__init__", init)
