"""Nested state dicts (`{'net': {'w': array}}`), for orbax or flax.serialization.

`Params.to_state_dict` and `Params.from_state_dict` are the two functions
`to_state_dict` and `from_state_dict` here, which `Params` takes as its
methods. Flags, metadata and the locked flag are not in a state dict; a
template gives them back. Useful with serialisers such as orbax or
`flax.serialization` that work on nested dicts.

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
from typing import TYPE_CHECKING, Any

from blox.params._measure import describe_value
from blox.params._param import Param
from blox.params._paths import Path, path_text

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["check_against", "flat", "from_state_dict", "nest", "to_state_dict"]


def to_state_dict(params: Params) -> dict[str, Any]:
  """A nested dict of the values keyed by path parts, e.g. `{'net': {'w': ...}}`.

  Flags, metadata and the locked flag are not included; pass a template to
  `Params.from_state_dict` to get them back.

  Raises:
    ValueError: a path lies under another path (it cannot be nested).

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import Param, Params
    >>> Params({('net', 'w'): Param(jnp.ones(1))}).to_state_dict()
    {'net': {'w': Array([1.], dtype=float32)}}
  """
  return nest(params._structure.paths, params._values)


def from_state_dict(
    cls: type[Params], state: Mapping[str, Any], template: Params | None = None
) -> Params:
  """Builds params from a nested dict made by `to_state_dict`.

  Args:
    state: nested mappings whose leaves are arrays.
    template: params whose structure (order, ranks, trainable flags, metadata
      and locked flag) is reused; its paths must equal those of `state`.
      Without a template the paths are listed in the order of `state` (ranks
      0..n-1), every param trainable, without metadata, and unlocked.

  Raises:
    ValueError: `state` does not match `template` (missing, unexpected and
      mismatched paths are all listed).

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.params import Params
    >>> params = Params.from_state_dict({'net': {'w': jnp.ones(1), 'b': jnp.ones(1)}})
    >>> list(params)
    [('net', 'w'), ('net', 'b')]
    >>> Params.from_state_dict(params.to_state_dict(), template=params.locked()).is_locked
    True
  """
  values = flat(state)
  if template is None:
    return cls({path: Param(value) for path, value in values.items()})
  check_against(values, template._structure.paths, template._values)
  return template.map(lambda path, _: values[path])


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
