"""Param paths: what a path is, and the one way errors write one.

A path is a non-empty tuple of strings, such as `('net', 'mlp', 'kernel')`.
Every error message in blox writes a param path as that tuple (`path_text`),
which is exactly what a user types to index `Params`. Modules are named
differently, by type and graph node (`Linear 'net/out'`, see
`blox.graph.Module.where`), because a node is not a key of `Params`.

Example:
  >>> path_text(('net', 'kernel'))
  "('net', 'kernel')"
  >>> closest_hint(('net', 'kernal'), [('net', 'kernel'), ('opt', 'step')])
  " Closest existing paths: ('net', 'kernel')."
  >>> check_path(['net'])
  Traceback (most recent call last):
  ...
  TypeError: A param path is a non-empty tuple of strings, like ('net', 'kernel'); got ['net'].
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TypeGuard

__all__ = ["Path", "check_path", "closest_hint", "is_path", "path_text"]

Path = tuple[str, ...]
"""A param's path: a non-empty tuple of names, outermost first, e.g. `('net', 'out', 'kernel')`."""


def is_path(path: object) -> TypeGuard[Path]:
  """Whether `path` is a non-empty tuple of strings."""
  return (
      isinstance(path, tuple)
      and bool(path)
      and all(isinstance(part, str) for part in path)
  )


def check_path(path: object) -> Path:
  """Returns `path` unchanged, or raises TypeError unless it is a valid path."""
  if not is_path(path):
    raise TypeError(
        f"A param path is a non-empty tuple of strings, like ('net', 'kernel');"
        f" got {path!r}."
    )
  return path


def path_text(path: tuple[object, ...]) -> str:
  """How every blox error writes a param path: the tuple, as it is typed."""
  return repr(tuple(path))


def closest_hint(path: object, known: Sequence[Path]) -> str:
  """A sentence for errors about a missing `path`: the closest of `known`."""
  by_text = {"/".join(p): p for p in known}
  wanted = "/".join(str(part) for part in path) if isinstance(path, tuple) else str(path)
  close = difflib.get_close_matches(wanted, list(by_text), n=3, cutoff=0.5)
  if close:
    hint = f" Closest existing paths: {', '.join(path_text(by_text[c]) for c in close)}."
  else:
    hint = f" The params hold {len(known)} paths."
  if not is_path(path):
    hint += " A param path is a non-empty tuple of strings, like ('net', 'kernel')."
  return hint
