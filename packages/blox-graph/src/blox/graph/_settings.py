"""Settings: a module's configuration, declared once on its class.

A setting is an annotated class attribute of a `Module` subclass, usually
with `setting(...)` as its value:

  class Linear(Module):
    output_size: int = setting(kw_only=False, doc="the size of the last output axis.")
    use_bias: bool = setting(default=True, doc="whether to add a bias.")

From these declarations the module class gets, all at once: its constructor
(`graph`, then the positional settings, then `*` and every other setting by
keyword), its `inspect.signature`, `config` and `repr`, the argument column
of `summary`, and the `Args:` section of its docstring. At runtime a setting
is a plain instance attribute: modules stay mutable Python objects.

Type checkers see the same constructor: `Module`'s metaclass is marked with
`typing.dataclass_transform` (PEP 681), which is why the spelling is the
dataclass one: `kw_only=False` for a positional argument, `default=` by
keyword; a bare annotation is a required keyword-only setting.

Example:
  >>> s = setting(default=2, doc="how many.")
  >>> s.default, s.positional, s.doc
  (2, False, 'how many.')
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

__all__ = [
    "MISSING",
    "Setting",
    "collect_settings",
    "config_of",
    "document_settings",
    "is_default",
    "make_init",
    "setting",
]


class _Missing:
  """The marker of a setting without a default (a required argument)."""

  def __repr__(self) -> str:
    return "MISSING"


MISSING: Any = _Missing()

# Checks of one setting's value: `(value, name, where) -> value to store`.
Check = Callable[[Any, str, str], Any]


class Setting:
  """One declared setting: its name, default, kind and documentation.

  Made by `setting(...)`; the module metaclass fills in `name` and
  `annotation` from the class body.
  """

  __slots__ = ("name", "annotation", "default", "positional", "doc", "check")

  def __init__(self, default: Any, positional: bool, doc: str, check: Check | None) -> None:
    self.name = ""
    self.annotation: Any = None
    self.default = default
    self.positional = positional
    self.doc = doc
    self.check = check

  @property
  def required(self) -> bool:
    return self.default is MISSING

  def __repr__(self) -> str:
    kind = "positional" if self.positional else "keyword"
    return f"Setting({self.name!r}, {kind}, default={self.default!r})"


def setting(
    *,
    default: Any = MISSING,
    kw_only: bool = True,
    doc: str = "",
    check: Check | None = None,
) -> Any:
  """Declares a module setting (the value of an annotated class attribute).

  Args:
    default: the value when the argument is not given; none makes the
      argument required.
    kw_only: False for an argument that may be passed by position (sizes
      are); otherwise it is keyword-only.
    doc: one line for the docstring's `Args:` section.
    check: `(value, name, where) -> value`, run by the constructor: it raises
      an error naming the module (`where`) for a bad value and returns the
      value to store (for instance normalised).

  Returns:
    The declaration (typed `Any`, so `size: int = setting(...)` type-checks).

  Example:
    >>> setting(kw_only=False, doc='the width.').positional
    True
  """
  return Setting(default, not kw_only, doc, check)


def _annotations(namespace: Mapping[str, Any]) -> dict[str, Any]:
  annotations = namespace.get("__annotations__")
  if annotations is None:
    # Python 3.14 evaluates annotations lazily; they are read through this.
    annotate = namespace.get("__annotate__")
    annotations = annotate(2) if callable(annotate) else {}  # 2: annotationlib.Format.FORWARDREF
  return dict(annotations)


def _is_class_var(annotation: Any) -> bool:
  text = annotation if isinstance(annotation, str) else repr(annotation)
  return annotation is ClassVar or text.startswith(("ClassVar", "typing.ClassVar"))


def collect_settings(
    name: str, bases: tuple[type, ...], namespace: dict[str, Any]
) -> tuple[dict[str, Setting], list[str]]:
  """The settings of a class being made: its own and its bases'.

  Returns `(settings, own)`: all settings by name, and the names the class
  body declares itself. Every annotated attribute that is not a `ClassVar`
  is a setting, as a type checker reads it; a plain value is its default.
  The order is that of the constructor: positional settings as dataclasses
  order fields (bases first, a redeclared one in its old place), then the
  keyword-only ones, the class's own first, so that a layer's own options
  come before those it shares with others (`param_dtype`, `dtype`). Removes
  the `setting(...)` markers from `namespace` so that an instance attribute
  is the only place a setting's value lives.
  """
  inherited: dict[str, Setting] = {}
  for base in bases:
    for key, item in getattr(base, "__blox_settings__", {}).items():
      inherited.setdefault(key, item)
  declared: dict[str, Setting] = {}
  for attribute, annotation in _annotations(namespace).items():
    # `graph` is every module's first argument, declared on Module for type
    # checkers only.
    if _is_class_var(annotation) or attribute.startswith("__") or attribute == "graph":
      continue
    value = namespace.pop(attribute, MISSING)
    item = value if isinstance(value, Setting) else Setting(value, False, "", None)
    item.name, item.annotation = attribute, annotation
    declared[attribute] = item
  for value in namespace.values():
    if isinstance(value, Setting):
      raise TypeError(f"{name}: setting(...) needs an annotation, as in `size: int = setting(...)`.")
  merged = {**inherited, **declared}  # a redeclared setting keeps its place
  positional = [item for item in merged.values() if item.positional]
  keywords = [item for item in declared.values() if not item.positional] + [
      item for key, item in inherited.items() if key not in declared and not item.positional
  ]
  settings = {item.name: item for item in positional + keywords}
  _check_order(name, settings)
  return settings, list(declared)


def _check_order(name: str, settings: Mapping[str, Setting]) -> None:
  seen_default = ""
  for item in settings.values():
    if not item.positional:
      continue
    if item.required and seen_default:
      raise TypeError(
          f"{name}: the positional setting {item.name!r} has no default but follows"
          f" {seen_default!r}, which has one; reorder them or make one keyword-only."
      )
    if not item.required:
      seen_default = item.name


def make_init(cls: type, settings: Mapping[str, Setting]) -> Callable[..., None]:
  """The constructor `(self, graph, *positional, **keywords)` of `cls`.

  It binds the module to `graph`, checks and stores every setting under its
  own name, then runs `__post_init__()` when the class has one (checks that
  involve several settings, private derived state).
  """
  graph_parameter = inspect.Parameter("graph", inspect.Parameter.POSITIONAL_OR_KEYWORD)
  parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), graph_parameter]
  ordered = [s for s in settings.values() if s.positional] + [
      s for s in settings.values() if not s.positional
  ]
  for item in ordered:
    kind = (
        inspect.Parameter.POSITIONAL_OR_KEYWORD if item.positional
        else inspect.Parameter.KEYWORD_ONLY
    )
    default = inspect.Parameter.empty if item.required else item.default
    parameters.append(inspect.Parameter(item.name, kind, default=default))
  signature = inspect.Signature(parameters)
  module_base = cls.__mro__[-2]  # `Module`, the class right below `object`

  def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
    try:
      bound = signature.bind(self, *args, **kwargs)
    except TypeError as error:
      positional = ", ".join(["graph", *(s.name for s in ordered if s.positional)])
      raise TypeError(
          f"{type(self).__name__}(...): {error}; it takes ({positional}) by position"
          " and every other argument by keyword."
      ) from None
    arguments = bound.arguments
    vars(module_base)["__init__"](self, arguments["graph"])
    where = self.where()
    for item in ordered:
      value = arguments.get(item.name, item.default)
      if item.check is not None:
        value = item.check(value, item.name, where)
      setattr(self, item.name, value)
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
      post_init()

  __init__.__signature__ = signature  # type: ignore[attr-defined]  # what inspect.signature shows
  __init__.__qualname__ = f"{cls.__qualname__}.__init__"
  # The constructor belongs to the class's module, as a written one would
  # (documentation tools resolve it there).
  __init__.__module__ = cls.__module__
  __init__.__doc__ = f"Makes a `{cls.__name__}`; see the class docstring for its arguments."
  return __init__


def document_settings(doc: str | None, settings: Mapping[str, Setting]) -> str | None:
  """`doc` with an `Args:` section listing `graph` and every documented setting.

  A docstring that has its own `Args:` section is left as it is.
  """
  if doc is None or "\nArgs:" in inspect.cleandoc("\n" + doc):
    return doc
  lines = ["Args:", "  graph: the node this module binds to."]
  for item in settings.values():
    if item.doc:
      lines.append(textwrap.fill(
          f"{item.name}: {item.doc}", width=78, initial_indent="  ", subsequent_indent="    "))
  text = inspect.cleandoc(doc)
  # Before a trailing Example section, as Google style orders them.
  head, marker, tail = text.partition("\nExample")
  args = "\n".join(lines)
  if marker:
    return f"{head.rstrip()}\n\n{args}\n{marker}{tail}"
  return f"{text}\n\n{args}\n"


def is_default(value: Any, default: Any) -> bool:
  """Whether `value` is the default `default` (never for a required setting).

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
  if default is MISSING or type(value) is not type(default):
    return False
  try:
    equal = value == default
  except Exception:  # An arbitrary __eq__ may raise anything; then it is no default.
    return False
  return equal is True


def config_of(module: object, settings: Mapping[str, Setting]) -> dict[str, Any]:
  """`module`'s configuration: each setting whose value differs from its default.

  A module class that declares no settings (a hand-written `__init__` that
  stores attributes) shows its public instance attributes instead, in the
  order they were set.
  """
  if not settings:
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}
  config: dict[str, Any] = {}
  for name, item in settings.items():
    value = getattr(module, name, MISSING)
    if value is not MISSING and not is_default(value, item.default):
      config[name] = value
  return config
