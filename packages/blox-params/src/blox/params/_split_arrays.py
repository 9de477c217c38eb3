"""`split_arrays`: a call's array arguments apart from the rest, and back.

Transformations such as `jax.eval_shape` or `jax.jit` trace every leaf they
are given; a function's other arguments (sizes, flags, modules) must stay as
they are. `unused_params`, `blox.graph.tabulate` and `blox.parallel`'s
`init_sharded` / `abstract_params` all decide what to trace here.

Example:
  >>> import numpy as np
  >>> arrays, rebuild = split_arrays((np.ones(2), 'relu'))
  >>> len(arrays), rebuild([None])
  (1, ((None, 'relu'), {}))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from blox.params._array_kinds import is_value

__all__ = ["split_arrays"]


def split_arrays(
    args: Sequence[Any], kwargs: Mapping[str, Any] | None = None
) -> tuple[list[Any], Callable[[Sequence[Any]], tuple[tuple[Any, ...], dict[str, Any]]]]:
  """The array leaves (`is_value`) of a call's arguments, and how to put others back.

  Splits `(args, kwargs)` into the list of array leaves and a
  `rebuild(arrays)` that returns `(args, kwargs)` with those leaves replaced,
  e.g. by tracers.

  Example:
    >>> import numpy as np
    >>> arrays, rebuild = split_arrays((np.ones(2), 3), {'flag': True})
    >>> len(arrays), rebuild(['x'])
    (1, (('x', 3), {'flag': True}))
  """
  leaves, treedef = jax.tree.flatten((tuple(args), dict(kwargs or {})))
  positions = [i for i, leaf in enumerate(leaves) if is_value(leaf)]

  def rebuild(arrays: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    filled = list(leaves)
    for i, array in zip(positions, arrays, strict=True):
      filled[i] = array
    call_args, call_kwargs = jax.tree.unflatten(treedef, filled)
    return call_args, call_kwargs

  return [leaves[i] for i in positions], rebuild
