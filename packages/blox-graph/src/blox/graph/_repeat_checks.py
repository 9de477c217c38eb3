"""The checks of `blox.graph.Repeat`: remat policy names, and what a layer returns.

Example:
  >>> 'dots_with_no_batch_dims_saveable' in remat_policy_names()
  True
  >>> import jax.numpy as jnp
  >>> check_same_kind("Dense 'net/layer'", jnp.ones(2), jnp.ones(3))
  Traceback (most recent call last):
  ...
  ValueError: Dense 'net/layer' returned x of shape (3,) and dtype float32, but received shape (2,) and dtype float32; a repeated layer feeds its output to the next layer, so it must return x of the shape and dtype it received (project or cast it inside the layer).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import jax

from blox.params import Params, Path, path_text

if TYPE_CHECKING:
  from blox.graph._repeat import Repeat

__all__ = [
    "changed_inside",
    "changed_outside",
    "check_same_kind",
    "check_update",
    "remat_policy_names",
]


def remat_policy_names() -> list[str]:
  """The names of `jax.checkpoint_policies` entries that are policies
  themselves (not factories such as `save_only_these_names`)."""
  names = []
  for name in dir(jax.checkpoint_policies):
    candidate = getattr(jax.checkpoint_policies, name)
    if name.startswith("_") or not callable(candidate):
      continue
    try:
      kinds = [p.kind for p in inspect.signature(candidate).parameters.values()]
    except (TypeError, ValueError):
      continue
    # A policy is called as policy(prim, *avals, **params).
    if inspect.Parameter.VAR_KEYWORD in kinds:
      names.append(name)
  return sorted(names)


def check_same_kind(where: str, before: Any, after: Any) -> None:
  """Raises unless `after` has the tree structure, shapes and dtypes of `before`."""
  before_structure: object = jax.tree.structure(before)
  if before_structure != jax.tree.structure(after):
    raise ValueError(
        f"{where} returned x with structure {jax.tree.structure(after)}, but"
        f" received {before_structure}; a repeated layer must return x of the"
        " structure, shapes and dtypes it received."
    )
  for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    a, b = jax.typeof(old), jax.typeof(new)
    dtype_changed = a.dtype != b.dtype and not (a.weak_type or b.weak_type)
    if a.shape != b.shape or dtype_changed:
      raise ValueError(
          f"{where} returned x of shape {b.shape} and dtype {b.dtype}, but"
          f" received shape {a.shape} and dtype {a.dtype}; a repeated layer"
          " feeds its output to the next layer, so it must return x of the"
          " shape and dtype it received (project or cast it inside the layer)."
      )


def check_update(repeat: Repeat, path: Path, old: Any, new: Any) -> None:
  """Raises unless a layer's update of a stacked param keeps its per-layer kind."""
  a, b = jax.typeof(old), jax.typeof(new)
  if a.shape != b.shape or a.dtype != b.dtype:
    raise ValueError(
        f"{repeat.where()}: the layer {repeat.layer.where()} set param"
        f" {path_text(path)} to shape {b.shape} and dtype {b.dtype}, but it holds"
        f" shape {a.shape} and dtype {a.dtype} per layer; keep its shape and dtype."
    )


def changed_outside(repeat: Repeat, old: Params, new: Params) -> str:
  """The error when the layer changed the structure of params outside its node."""
  created = [path_text(path) for path in new if path not in old]
  what = (
      f"created {', '.join(created)} outside its node" if created
      else "changed the trainable flags or metadata of params outside its node"
  )
  return (
      f"{repeat.where()}: the layer {repeat.layer.where()} {what}. Inside a repeat"
      " the layer may only create params under its own node (they are stacked)"
      " and update the values of others: create shared params (Rng streams,"
      " shared modules) before calling the repeat."
  )


def changed_inside(repeat: Repeat, old: Params, new: Params) -> str:
  """The error when the layer changed its own params' structure at runtime."""
  created = [path_text(path) for path in new if path not in old]
  what = (
      f"created {', '.join(created)}" if created
      else "changed the trainable flags or metadata of its params"
  )
  return (
      f"{repeat.where()}: the layer {repeat.layer.where()} {what} after its params"
      " were created. The scanned layer body cannot create params: create every"
      " param in the layer's first call (initialisation, unlocked params"
      " without the layer's params), and only change values afterwards."
  )
