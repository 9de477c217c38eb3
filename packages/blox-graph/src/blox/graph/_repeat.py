"""`Repeat`: one layer applied `num_layers` times, its params stacked, run by one scan.

The layer is built once, on the node `graph.child('layer')`; its params are
stored once, at the paths the layer gives them, every value stacked along a
new leading axis of size `num_layers` and tagged `STACKED: (num_layers,)`.
Creating them and running them are each one `jax.lax.scan` over the layers,
so trace and compile time do not grow with `num_layers`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.graph import Graph, Module
  >>> from blox.params import Params
  >>> class Residual(Module):
  ...   def __call__(self, params, x):
  ...     w, params = self.get_param(params, 'w', x.shape[-1:], jax.nn.initializers.ones)
  ...     return x + w, params
  >>> blocks = Repeat(Graph('net').child('blocks'), Residual, num_layers=3)
  >>> y, params = blocks(Params(), jnp.zeros(2))
  >>> y.tolist(), params[('net', 'blocks', 'layer', 'w')]
  ([3.0, 3.0], Param(float32[3, 2], metadata={'stacked': (3,)}))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax

from blox.graph._graph import Graph
from blox.graph._module import Module
from blox.graph._stacking import (
    LAYER,
    abstract_array,
    add_stacked,
    check_stacked,
    drop_stacked,
    stack_params,
    unstack_params,
)
from blox.params import Param, Params, Path, path_text

__all__ = ["Repeat", "remat_policy_names"]


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


class Repeat(Module):
  """Applies one layer `num_layers` times, the output of one feeding the next.

  `make_layer(node) -> Module` is called once, with `node =
  graph.child('layer')`; the layer is `self.layer`. Calling
  `repeat(params, x, *args, **kwargs)` runs `layer(params, x, *args,
  **kwargs) -> (x, params)` for each layer in turn, with the same `args` and
  `kwargs` (keywords such as `is_training` are static); the layer must return
  `x` with the structure, shapes and dtypes it received.

  Params. Each param of the layer is stored once at its own path
  (`(*repeat_path, 'layer', ...)`), its value stacked along a new leading
  axis of size `num_layers` and its metadata extended by
  `blox.params.STACKED: (num_layers,)` (a Repeat inside a Repeat makes
  `(outer, inner)`). Other metadata, such as `SHARDING`, keeps describing
  one layer's dimensions. Params outside the layer, such as an `Rng`'s seed
  and counter, are not stacked: they travel through the layers, so dropout
  draws a different key in every layer and every call. State the layer
  updates (BatchNorm's running statistics) is updated layer by layer.

  Initialisation. Called with unlocked params that lack the layer's params,
  the repeat creates them in one `jax.lax.scan`: the layer's first call runs
  once per layer on that layer's real input, inside one traced body, and the
  created values are stacked. Params are thus created exactly as a Python
  loop over `num_layers` separately built layers would create them (the
  `Rng` counter advancing from layer to layer, so every layer gets different
  initial values), and the output equals that loop's. A param created
  outside the layer's node during that call is an error.

  Runtime. Otherwise the repeat is one `jax.lax.scan` over the stacked
  params; the layer may change existing params (counters, statistics) but
  not create any. `remat_policy` wraps the scanned body with
  `jax.checkpoint`: None (no rematerialisation), `'full'` (save nothing), or
  the name of a `jax.checkpoint_policies` policy, e.g.
  `'dots_with_no_batch_dims_saveable'`. `unroll` is passed to
  `jax.lax.scan`.

  Args:
    graph: the node this module binds to.
    make_layer: builds the layer on the node it is given.
    num_layers: how many times the layer is applied, a positive int.
    remat_policy: None, `'full'`, or a `jax.checkpoint_policies` name.
    unroll: a positive int, or True to unroll the scan fully.
  """

  def __init__(
      self,
      graph: Graph,
      make_layer: Callable[[Graph], Module],
      num_layers: int,
      *,
      remat_policy: str | None = None,
      unroll: int | bool = 1,
  ) -> None:
    super().__init__(graph)
    where = self.where()
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
      raise ValueError(f"{where}: num_layers must be a positive int, got {num_layers!r}.")
    if remat_policy is not None and remat_policy != "full":
      valid = remat_policy_names()
      if remat_policy not in valid:
        raise ValueError(
            f"{where}: remat_policy must be None, 'full' or the name of a"
            f" jax.checkpoint_policies policy ({', '.join(valid)}); got"
            f" {remat_policy!r}."
        )
    if not (unroll is True or (type(unroll) is int and unroll >= 1)):
      raise ValueError(
          f"{where}: unroll must be a positive int (layers per scan step) or True"
          f" (unroll fully); got {unroll!r}."
      )
    if not callable(make_layer):
      raise TypeError(
          f"{where}: make_layer must be a function node -> Module, got"
          f" {type(make_layer).__name__}."
      )
    self.make_layer = make_layer
    self.num_layers = num_layers
    self.remat_policy = remat_policy
    self.unroll = unroll
    node = graph.child(LAYER)
    layer = make_layer(node)
    if not isinstance(layer, Module) or layer.graph is not node:
      bound = f" bound to {'/'.join(layer.graph.path)!r}" if isinstance(layer, Module) else ""
      raise TypeError(
          f"{where}: make_layer(node) must return a Module built on the node it"
          f" is given ({'/'.join(node.path)!r}), got {type(layer).__name__}{bound}."
      )
    self.layer = layer

  @property
  def layer_path(self) -> Path:
    """The path under which the layer's (stacked) params live."""
    return self.param_path(LAYER)

  def _owns(self, path: Path, _: Any = None) -> bool:
    prefix = self.layer_path
    return path[: len(prefix)] == prefix

  def unstack(self, params: Params) -> Params:
    """One path per layer, for tools that want one leaf per layer.

    Each stacked param `(*repeat_path, 'layer', *rest)` becomes `num_layers`
    params `(*repeat_path, str(i), *rest)` holding layer `i`'s slice, with
    the outermost `STACKED` size dropped (the entry removed when none is
    left). Other params are kept as they are. `stack` is the exact inverse.
    The result is a new container: the per-layer params take the place of the
    first stacked one, layer by layer, and ranks are renumbered 0..n-1 in
    that order (as initialisation and `load` number them).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from blox.params import Params
      >>> class Scale(Module):
      ...   def __call__(self, params, x):
      ...     s, params = self.get_param(params, 's', (), jax.nn.initializers.ones)
      ...     return x * s, params
      >>> blocks = Repeat(Graph('net').child('blocks'), Scale, 2)
      >>> _, params = blocks(Params(), jnp.ones(1))
      >>> list(blocks.unstack(params))
      [('net', 'blocks', '0', 's'), ('net', 'blocks', '1', 's')]
      >>> again = blocks.stack(blocks.unstack(params))
      >>> jax.tree.structure(again) == jax.tree.structure(params)
      True
    """
    return unstack_params(params, self.graph.path, self.num_layers, self.where())

  def stack(self, params: Params) -> Params:
    """The inverse of `unstack`: per-layer params `(*repeat_path, str(i), ...)`
    stacked back into `(*repeat_path, 'layer', ...)`, ranks renumbered 0..n-1.

    Raises:
      ValueError: the layers hold different params (paths, shapes, dtypes,
        flags or metadata), or the params already hold stacked ones.
    """
    return stack_params(params, self.graph.path, self.num_layers, self.where())

  def layer_params(self, params: Params, index: int) -> Params:
    """The params layer `index` runs with: its slice of every stacked param at
    the layer's own paths (outermost `STACKED` size dropped), the other
    params as they are. `self.layer(repeat.layer_params(params, i), x)` is
    what the scan computes for layer `i` (without carrying state across)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_layers:
      raise ValueError(
          f"{self.where()}: layer index must be an int in [0, {self.num_layers}),"
          f" got {index!r}."
      )
    entries = {
        path: (
            Param(param.value[index], param.trainable, drop_stacked(param.metadata))
            if self._owns(path) else param
        )
        for path, param in params.items()
    }
    return Params(entries, locked=params.is_locked)

  def __call__(self, params: Params, x: Any, *args: Any, **kwargs: Any) -> tuple[Any, Params]:
    """Applies the layer `num_layers` times; returns `(x, params)`.

    Raises:
      RuntimeError: the params are locked and lack the layer's params.
      ValueError: a stacked param does not have `num_layers` layers; the
        layer returned `x` of another structure, shape or dtype; created a
        param outside its node during initialisation, or any param at
        runtime.
    """
    if not isinstance(params, Params):
      raise TypeError(
          f"{self.where()}: params must be a blox Params, got {type(params).__name__}."
      )
    owned = [path for path in params if self._owns(path)]
    if not owned:
      return self._initialise(params, x, args, kwargs)
    for path in owned:
      check_stacked(path, params[path], self.num_layers, self.where())
    return self._run(params, x, args, kwargs)

  # Both scans.

  def _checkpointed(self, body: Callable[..., Any]) -> Callable[..., Any]:
    if self.remat_policy is None:
      return body
    # lax.scan already keeps XLA from merging the recomputation with the
    # forward pass, so the checkpoint need not (jax.checkpoint's advice).
    if self.remat_policy == "full":
      return jax.checkpoint(body, prevent_cse=False)
    policy = getattr(jax.checkpoint_policies, self.remat_policy)
    return jax.checkpoint(body, prevent_cse=False, policy=policy)

  def _apply_layer(self, params: Params, x: Any, args: Any, kwargs: Any) -> tuple[Any, Params]:
    result = self.layer(params, x, *args, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Params)):
      raise TypeError(
          f"{self.where()}: the layer {self.layer.where()} must return (x, params),"
          f" got {type(result).__name__}."
      )
    y, new_params = result
    _check_same_kind(self.layer.where(), x, y)
    return y, new_params

  def _initialise(
      self, params: Params, x: Any, args: Any, kwargs: Any
  ) -> tuple[Any, Params]:
    """Creates every layer's params in one scan; see the class docstring."""
    was_locked = params.is_locked
    outside = params.unlocked()
    outside_structure: object = jax.tree.structure(outside)
    created_structure: list[Any] = []

    def body(carry: tuple[Any, Params], _: None) -> tuple[tuple[Any, Params], list[Any]]:
      h, rest = carry
      h, new_params = self._apply_layer(rest, h, args, kwargs)
      created, rest = new_params.split(self._owns)
      if jax.tree.structure(rest) != outside_structure:
        raise ValueError(self._changed_outside(carry[1], rest))
      if created and was_locked:
        raise RuntimeError(
            f"{self.where()}: the params are locked but hold none of the repeated"
            f" layer's params (under {path_text(self.layer_path)}). Initialise"
            " them first by calling the model with unlocked params"
            " (params.unlocked()), then run with the params it returns."
        )
      created_structure[:] = [jax.tree.structure(created)]
      return (h, rest), jax.tree.leaves(created)

    (y, outside), stacked = jax.lax.scan(
        self._checkpointed(body), (x, outside), None,
        length=self.num_layers, unroll=self.unroll,
    )
    created = jax.tree.unflatten(created_structure[0], stacked)
    for path in created:
      created = created.set(path, metadata=add_stacked(created[path].metadata, self.num_layers))
    merged = outside.merge(created)
    return y, merged.locked() if was_locked else merged

  def _run(self, params: Params, x: Any, args: Any, kwargs: Any) -> tuple[Any, Params]:
    """The runtime scan over the stacked params; see the class docstring."""
    stacked, outside = params.split(self._owns)
    outside_structure: object = jax.tree.structure(outside)
    stacked_leaves, stacked_structure = jax.tree.flatten(stacked)
    view_structure: object = jax.tree.structure(_layer_view(stacked))
    changed: list[int] = []

    def body(carry: tuple[Any, Params], leaves: list[Any]) -> tuple[tuple[Any, Params], list[Any]]:
      h, rest = carry
      layer_params = jax.tree.unflatten(view_structure, leaves)
      h, new_params = self._apply_layer(rest.merge(layer_params), h, args, kwargs)
      new_layer, rest = new_params.split(self._owns)
      if jax.tree.structure(rest) != outside_structure:
        raise ValueError(self._changed_outside(carry[1], rest))
      if jax.tree.structure(new_layer) != view_structure:
        raise ValueError(self._changed_inside(layer_params, new_layer))
      new_leaves = jax.tree.leaves(new_layer)
      # Only values the layer replaced (statistics, counters) leave the scan:
      # the weights it merely read are not copied out once per layer.
      changed[:] = [i for i, (old, new) in enumerate(zip(leaves, new_leaves)) if old is not new]
      paths = list(new_layer)
      for i in changed:
        self._check_update(paths[i], leaves[i], new_leaves[i])
      return (h, rest), [new_leaves[i] for i in changed]

    (y, outside), updates = jax.lax.scan(
        self._checkpointed(body), (x, outside), stacked_leaves, unroll=self.unroll
    )
    for i, update in zip(changed, updates):
      stacked_leaves[i] = update
    stacked = jax.tree.unflatten(stacked_structure, stacked_leaves)
    return y, outside.merge(stacked)

  def _check_update(self, path: Path, old: Any, new: Any) -> None:
    a, b = jax.typeof(old), jax.typeof(new)
    if a.shape != b.shape or a.dtype != b.dtype:
      raise ValueError(
          f"{self.where()}: the layer {self.layer.where()} set param"
          f" {path_text(path)} to shape {b.shape} and dtype {b.dtype}, but it holds"
          f" shape {a.shape} and dtype {a.dtype} per layer; keep its shape and dtype."
      )

  def _changed_outside(self, old: Params, new: Params) -> str:
    created = [path_text(path) for path in new if path not in old]
    what = (
        f"created {', '.join(created)} outside its node" if created
        else "changed the trainable flags or metadata of params outside its node"
    )
    return (
        f"{self.where()}: the layer {self.layer.where()} {what}. Inside a repeat"
        " the layer may only create params under its own node (they are stacked)"
        " and update the values of others: create shared params (Rng streams,"
        " shared modules) before calling the repeat."
    )

  def _changed_inside(self, old: Params, new: Params) -> str:
    created = [path_text(path) for path in new if path not in old]
    what = (
        f"created {', '.join(created)}" if created
        else "changed the trainable flags or metadata of its params"
    )
    return (
        f"{self.where()}: the layer {self.layer.where()} {what} after its params"
        " were created. The scanned layer body cannot create params: create every"
        " param in the layer's first call (initialisation, unlocked params"
        " without the layer's params), and only change values afterwards."
    )


def _layer_view(stacked: Params) -> Params:
  """The stacked params as one layer sees them: values one layer's shape,
  the outermost `STACKED` size dropped; ranks kept, so that merging the view
  with the other params gives back their order."""
  view = stacked.unlocked()
  for path, param in stacked.items():
    value = param.value
    view[path] = Param(
        abstract_array(tuple(value.shape[1:]), value.dtype),
        param.trainable,
        drop_stacked(param.metadata),
    )
  return view.locked() if stacked.is_locked else view


def _check_same_kind(where: str, before: Any, after: Any) -> None:
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
