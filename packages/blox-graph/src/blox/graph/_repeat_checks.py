"""The checks of `blox.graph.Repeat`: its settings, its layer, and what the layer returns.

Example:
  >>> 'dots_with_no_batch_dims_saveable' in remat_policy_names()
  True
  >>> check_num_layers(0, 'num_layers', "Repeat 'net/blocks'")
  Traceback (most recent call last):
  ...
  ValueError: Repeat 'net/blocks': num_layers must be a positive int, got 0.
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

from blox.graph._graph import Graph
from blox.graph._module import Module
from blox.params import Params, Path, path_text

if TYPE_CHECKING:
  from blox.graph._repeat import Repeat

__all__ = [
    "build_layer",
    "changed_inside",
    "changed_outside",
    "check_make_layer",
    "check_num_layers",
    "check_remat_policy",
    "check_same_kind",
    "check_unroll",
    "check_update",
    "remat_policy_names",
    "unpack_result",
]

# How the errors spell a correct make_layer.
_FACTORY = "make_layer must be a function node -> Module"


def check_num_layers(value: Any, name: str, where: str) -> int:
  """The `num_layers` setting: a positive int (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{where}: {name} must be a positive int, got {value!r}.")
  return value


def check_remat_policy(value: Any, name: str, where: str) -> str | None:
  """The `remat_policy` setting: None, 'full' or a `jax.checkpoint_policies` name."""
  if value is None or value == "full":
    return None if value is None else "full"
  valid = remat_policy_names()
  if value not in valid:
    raise ValueError(
        f"{where}: {name} must be None, 'full' or the name of a"
        f" jax.checkpoint_policies policy ({', '.join(valid)}); got {value!r}."
    )
  return str(value)


def check_unroll(value: Any, name: str, where: str) -> int | bool:
  """The `unroll` setting: a positive int, or True."""
  if not (value is True or (type(value) is int and value >= 1)):
    raise ValueError(
        f"{where}: {name} must be a positive int (layers per scan step) or True"
        f" (unroll fully); got {value!r}."
    )
  return True if value is True else int(value)


def check_make_layer(value: Any, name: str, where: str) -> Any:
  """The `make_layer` setting: a function called once as `make_layer(node)`.

  Catches, before anything is built, what users pass instead: a module
  already built (it is callable too, but with params), something not
  callable, and a function or module class that cannot be called with the
  node alone.

  Example:
    >>> class Scale(Module):
    ...   def __call__(self, params, x):
    ...     return x, params
    >>> check_make_layer(Scale(Graph('net').child('scale')), 'make_layer', "Repeat 'net/blocks'")
    Traceback (most recent call last):
    ...
    TypeError: Repeat 'net/blocks': make_layer must be a function node -> Module (e.g. lambda node: Scale(node, ...)); got a Scale instance, already built on 'net/scale'. The repeat builds its layer itself, on its own node: pass a function that builds it, not the built module.
  """
  if isinstance(value, Module):
    kind = type(value).__name__
    raise TypeError(
        f"{where}: {_FACTORY} (e.g. lambda node: {kind}(node, ...)); got a {kind}"
        f" instance, already built on {'/'.join(value.graph.path)!r}. The repeat"
        " builds its layer itself, on its own node: pass a function that builds"
        " it, not the built module."
    )
  if not callable(value):
    raise TypeError(
        f"{where}: {_FACTORY} (e.g. lambda node: Block(node, ...)); got"
        f" {type(value).__name__} {value!r}."
    )
  try:
    signature = inspect.signature(value)
  except (TypeError, ValueError):  # a builtin without a signature: try it as it is
    return value
  try:
    signature.bind(None)  # the one argument the repeat passes: the node
  except TypeError as error:
    label = getattr(value, "__name__", type(value).__name__)
    if isinstance(value, type):
      raise TypeError(
          f"{where}: {name} is the class {label}, which the repeat calls as"
          f" {label}(node), but {label}{signature} cannot be called so ({error});"
          f" pass a function that gives the other arguments, e.g."
          f" lambda node: {label}(node, ...)."
      ) from None
    raise TypeError(
        f"{where}: {_FACTORY}, called with the node alone (e.g. lambda node:"
        f" Block(node, ...)); {label}{signature} cannot be called so ({error})."
    ) from None
  return value


def build_layer(make_layer: Any, node: Graph, where: str) -> Module:
  """Calls `make_layer(node)`; raises unless it built a Module on `node`."""
  layer = make_layer(node)
  if not isinstance(layer, Module) or layer.graph is not node:
    bound = f" bound to {'/'.join(layer.graph.path)!r}" if isinstance(layer, Module) else ""
    raise TypeError(
        f"{where}: make_layer(node) must return a Module built on the node it"
        f" is given ({'/'.join(node.path)!r}), got {type(layer).__name__}{bound};"
        " build the layer inside make_layer, on its argument (lambda node:"
        " Block(node, ...))."
    )
  return layer


def unpack_result(repeat: Repeat, result: Any, with_own: bool) -> tuple[Any, Any, Params]:
  """`(x, own output, params)` from what the layer returned: `(x, params)`,
  or with `repeat.scan` (`with_own`) `((x, output), params)`."""
  if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Params):
    if not with_own:
      return result[0], None, result[1]
    if isinstance(result[0], tuple) and len(result[0]) == 2:
      return result[0][0], result[0][1], result[1]
  if with_own:
    raise TypeError(
        f"{repeat.where()}: with repeat.scan, the layer {repeat.layer.where()} must"
        f" return ((x, output), params), got {type(result).__name__}."
    )
  raise TypeError(
      f"{repeat.where()}: the layer {repeat.layer.where()} must return (x, params),"
      f" got {type(result).__name__}."
  )


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
