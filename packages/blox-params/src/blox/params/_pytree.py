"""How `Params` is a JAX pytree: its values are the leaves, its structure the aux data.

Flattening hands JAX the tuple of values and the `Structure`; unflattening is
`build`. No per-param pytree nodes and no dict building: `jax.jit` flattens
every argument on every call, and sees what a plain tuple would cost.
`blox.params._container` calls `register` once, right after defining
`Params` (so the class is a pytree wherever it is imported from).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({('w',): Param(jnp.ones(2))})
  >>> leaves, treedef = jax.tree.flatten(params)
  >>> jax.tree.unflatten(treedef, leaves)[('w',)].value is leaves[0]
  True
  >>> jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(params)[0][0][0])
  "[('w',)]"
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import jax

from blox.params._structure import Structure

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["register"]

# Reads the two slots with a C-level getter (no Python frame per flatten).
_flatten: Callable[[Params], tuple[tuple[Any, ...], Structure]] = operator.attrgetter(
    "_values", "_structure"
)


def _flatten_with_keys(
    params: Params,
) -> tuple[tuple[tuple[jax.tree_util.DictKey, Any], ...], Structure]:
  s = params._structure
  return tuple(zip(s.key_entries(), params._values)), s


def register(cls: type[Params], build: Callable[[Structure, Iterable[Any]], Params]) -> None:
  """Registers `cls` (`Params`) with JAX; `build` is its unflatten function."""
  jax.tree_util.register_pytree_with_keys(
      cls, _flatten_with_keys, build, flatten_func=_flatten
  )
