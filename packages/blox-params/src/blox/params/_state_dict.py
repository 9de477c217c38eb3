"""Nested state dicts (`{'net': {'w': array}}`), for orbax or flax.serialization.

`Params.to_state_dict` and `Params.from_state_dict` are built on the three
functions here, which know nothing of `Params`: they turn paths and values
into nested dicts and back, and compare a state with a template's paths.

Example:
  >>> import numpy as np
  >>> state = nest([('net', 'w'), ('net', 'b')], [np.ones(2), np.zeros(2)])
  >>> sorted(state['net'])
  ['b', 'w']
  >>> list(flat(state))
  [('net', 'w'), ('net', 'b')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from blox.params._arrays import describe_value
from blox.params._paths import Path, path_text

__all__ = ["check_against", "flat", "nest"]


def nest(paths: Iterable[Path], values: Iterable[Any]) -> dict[str, Any]:
  """A nested dict with `values` at `paths`.

  Raises:
    ValueError: a path lies under another path (it cannot be nested).
  """
  nested: dict[str, Any] = {}
  for path, value in zip(paths, values):
    node = nested
    for part in path[:-1]:
      child = node.setdefault(part, {})
      if not isinstance(child, dict):
        raise ValueError(
            f"Path {path_text(path)} lies under another param's path; it cannot"
            " be nested."
        )
      node = child
    if path[-1] in node:
      raise ValueError(
          f"Path {path_text(path)} is a prefix of other paths; it cannot be nested."
      )
    node[path[-1]] = value
  return nested


def flat(state: Mapping[str, Any]) -> dict[Path, Any]:
  """The leaves of nested mappings by path, in the order of the mappings."""
  found: dict[Path, Any] = {}

  def walk(prefix: Path, node: Mapping[str, Any]) -> None:
    for name, child in node.items():
      if isinstance(child, Mapping):
        walk(prefix + (name,), child)
      else:
        found[prefix + (name,)] = child

  walk((), state)
  return found


def check_against(
    state: Mapping[Path, Any], paths: Sequence[Path], values: Sequence[Any]
) -> None:
  """Raises ValueError unless `state` has exactly `paths`, shaped like `values`."""
  missing = [p for p in paths if p not in state]
  known = set(paths)
  extra = [p for p in state if p not in known]
  mismatched = [
      f"{path_text(path)}: {describe_value(state[path])} where the template has"
      f" {describe_value(like)}"
      for path, like in zip(paths, values)
      if path in state
      and (
          tuple(getattr(state[path], "shape", ())) != tuple(like.shape)
          or getattr(state[path], "dtype", None) != like.dtype
      )
  ]
  if missing or extra or mismatched:
    raise ValueError(
        "The state dict does not match the template:"
        f" missing {missing}, unexpected {extra}, mismatched {mismatched}."
    )
