"""Choosing params by path: a regular expression or a predicate, never silently nothing.

`Params.freeze` and `Params.unfreeze` take `where`, one of:

- a string: a regular expression that must match the whole slash-joined path
  (`re.fullmatch`), so `'net/mlp/kernel'` is exactly that param,
  `'net/mlp/.*'` everything under `net/mlp`, `'.*/kernel'` every kernel and
  `'.*'` everything;
- a callable `where(path, param) -> bool`, as for `Params.split`.

A `where` that selects no param is an error naming it and some existing
paths: a misspelt pattern must not quietly change nothing.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({('net', 'w'): Param(jnp.ones(2)), ('net', 'b'): Param(jnp.ones(2))})
  >>> selected_positions(params, 'net/b', 'freeze')
  [1]
  >>> selected_positions(params, 'net/bias', 'freeze')
  Traceback (most recent call last):
  ...
  ValueError: freeze: the pattern 'net/bias' matches no param path; a pattern must match the whole slash-joined path (re.fullmatch), e.g. 'net/b' or 'net/.*'. Closest paths: 'net/b', 'net/w'.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from blox.params._param import Param
from blox.params._paths import Path

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["Where", "selected_positions"]

Where: TypeAlias = str | Callable[[Path, Param], Any]
"""What `freeze`/`unfreeze` select: a regular expression matched against the
whole slash-joined path, or a predicate `where(path, param) -> bool`."""

# How many existing paths an error lists when nothing is close to the pattern.
_SHOWN = 3


def selected_positions(params: Params, where: Where, what: str) -> list[int]:
  """The positions (in `params`' order) of the params `where` selects.

  Args:
    params: the params to choose from.
    where: a regular expression or a predicate (see the module docstring).
    what: the operation, for error messages (`'freeze'`).

  Raises:
    TypeError: `where` is neither a string nor callable.
    ValueError: `where` is not a valid regular expression, or selects no param.
  """
  s = params._structure
  joined = ["/".join(path) for path in s.paths]
  if isinstance(where, str):
    try:
      pattern = re.compile(where)
    except re.error as error:
      raise ValueError(
          f"{what}: {where!r} is not a valid regular expression ({error}); write"
          " the slash-joined path, e.g. 'net/mlp/kernel', or a pattern such as"
          " 'net/.*'."
      ) from None
    positions = [i for i, text in enumerate(joined) if pattern.fullmatch(text)]
    if not positions:
      close = difflib.get_close_matches(where, joined, n=_SHOWN, cutoff=0.5)
      example = (close or joined or ["net/mlp/kernel"])[0]
      raise ValueError(
          f"{what}: the pattern {where!r} matches no param path; a pattern must"
          " match the whole slash-joined path (re.fullmatch), e.g."
          f" {example!r} or {_parent_pattern(example)!r}."
          + (f" Closest paths: {', '.join(map(repr, close))}." if close else _listing(joined))
      )
    return positions
  if not callable(where):
    hint = ""
    if isinstance(where, tuple) and all(isinstance(part, str) for part in where):
      hint = f" For the one param at that path, pass {'/'.join(where)!r}."
    raise TypeError(
        f"{what}: where must be a regular expression (a str matched against"
        " the slash-joined path, e.g. 'net/mlp/kernel') or a callable"
        f" where(path, param) -> bool; got {type(where).__name__} {where!r}.{hint}"
    )
  positions = [
      i
      for i, (path, value, trainable, metadata) in enumerate(
          zip(s.paths, params._values, s.trainable, s.metadata)
      )
      if where(path, Param(value, trainable, metadata))
  ]
  if not positions:
    name = getattr(where, "__name__", repr(where))
    raise ValueError(f"{what}: the predicate {name} selects no param." + _listing(joined))
  return positions


def _parent_pattern(path_text: str) -> str:
  """`'net/mlp/.*'` for `'net/mlp/kernel'`: everything beside it."""
  parent, _, _ = path_text.rpartition("/")
  return f"{parent}/.*" if parent else ".*"


def _listing(joined: list[str]) -> str:
  """The first few paths, for errors where none is close to what was asked."""
  if not joined:
    return " The params are empty."
  shown = ", ".join(map(repr, joined[:_SHOWN]))
  more = f" and {len(joined) - _SHOWN} more" if len(joined) > _SHOWN else ""
  return f" The params hold {shown}{more}."
