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
  ...     w, params = self.get_param(params, 'w', x.shape[-1:], init=jax.nn.initializers.ones)
  ...     return x + w, params
  >>> blocks = Repeat(Graph('net').child('blocks'), Residual, num_layers=3)
  >>> y, params = blocks(Params(), jnp.zeros(2))
  >>> y.tolist(), params[('net', 'blocks', 'layer', 'w')]
  ([3.0, 3.0], Param(float32[3, 2], metadata={'stacked': (3,)}))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from blox.graph._graph import Graph
from blox.graph._module import Module
from blox.graph._repeat_checks import (
    changed_inside,
    changed_outside,
    check_same_kind,
    check_update,
    remat_policy_names,
)
from blox.graph._stacking import (
    LAYER,
    add_stacked,
    check_stacked,
    drop_stacked,
    layer_view,
    stack_params,
    unstack_params,
)
from blox.params import Param, Params, Path, path_text

__all__ = ["Repeat"]

# How a scan body calls the layer: `(params, x, own input) -> (x, own output, params)`.
LayerCall = Callable[[Params, Any, Any], tuple[Any, Any, Params]]


class Repeat(Module):
  """Applies one layer `num_layers` times, the output of one feeding the next.

  `make_layer(node) -> Module` is called once, with `node =
  graph.child('layer')`; the layer is `self.layer`. Calling
  `repeat(params, x, *args, **kwargs)` runs `layer(params, x, *args,
  **kwargs) -> (x, params)` for each layer in turn, with the same `args` and
  `kwargs` (keywords such as `is_training` are static); the layer must return
  `x` with the structure, shapes and dtypes it received. `repeat.scan(params,
  x, per_layer, ...)` also hands each layer its own slice of `per_layer` and
  stacks what each returns (one KV cache per layer, for instance).

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
      ...     s, params = self.get_param(params, 's', (), init=jax.nn.initializers.ones)
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
    def call(params: Params, h: Any, _: None) -> tuple[Any, None, Params]:
      h, params = self._apply_layer(params, h, args, kwargs)
      return h, None, params

    y, _, params = self._scan(params, x, None, call)
    return y, params

  def scan(
      self, params: Params, x: Any, per_layer: Any, *args: Any, **kwargs: Any
  ) -> tuple[tuple[Any, Any], Params]:
    """Like calling the repeat, with an input and an output of each layer's own.

    `per_layer` is a pytree whose leaves have a leading axis of size
    `num_layers` (e.g. one KV cache per layer, stacked); layer `i` runs as
    `layer(params, x, per_layer_i, *args, **kwargs) -> ((x, out_i), params)`,
    and the outputs come back stacked the same way.

    Returns:
      `((x, outputs), params)`, `outputs` stacked on a leading layer axis.

    Raises:
      ValueError: a leaf of `per_layer` lacks the leading layer axis; or see
        calling the repeat.

    Example:
      >>> import jax.numpy as jnp
      >>> from blox.params import Params
      >>> class AddOwn(Module):
      ...   def __call__(self, params, x, own):
      ...     return (x + own, x), params
      >>> blocks = Repeat(Graph('net').child('blocks'), AddOwn, 3)
      >>> (y, seen), _ = blocks.scan(Params(), jnp.zeros(()), jnp.array([1.0, 2.0, 3.0]))
      >>> float(y), seen.tolist()
      (6.0, [0.0, 1.0, 3.0])
    """
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(per_layer):
      shape = tuple(jax.typeof(leaf).shape)
      if not shape or shape[0] != self.num_layers:
        raise ValueError(
            f"{self.where()}: per_layer{jax.tree_util.keystr(key_path)} has shape"
            f" {shape}, but each per-layer input needs a leading axis of size"
            f" num_layers={self.num_layers} (stack one value per layer)."
        )

    def call(params: Params, h: Any, own: Any) -> tuple[Any, Any, Params]:
      result = self.layer(params, h, own, *args, **kwargs)
      if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Params)
              and isinstance(result[0], tuple) and len(result[0]) == 2):
        raise TypeError(
            f"{self.where()}: with repeat.scan, the layer {self.layer.where()} must"
            f" return ((x, output), params), got {type(result).__name__}."
        )
      (new_h, out), params = result
      check_same_kind(self.layer.where(), h, new_h)
      return new_h, out, params

    y, outputs, params = self._scan(params, x, per_layer, call)
    return (y, outputs), params

  def _scan(self, params: Params, x: Any, per_layer: Any, call: LayerCall) -> tuple[Any, Any, Params]:
    if not isinstance(params, Params):
      raise TypeError(
          f"{self.where()}: params must be a blox Params, got {type(params).__name__}."
      )
    # Through items(), not params[path]: indexing counts as a read for
    # `unused_params`, and only the layer's own reads should.
    owned = [(path, param) for path, param in params.items() if self._owns(path)]
    if not owned:
      return self._initialise(params, x, per_layer, call)
    for path, param in owned:
      check_stacked(path, param, self.num_layers, self.where())
    return self._run(params, x, per_layer, call)

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
    check_same_kind(self.layer.where(), x, y)
    return y, new_params

  def _initialise(
      self, params: Params, x: Any, per_layer: Any, call: LayerCall
  ) -> tuple[Any, Any, Params]:
    """Creates every layer's params in one scan; see the class docstring."""
    was_locked = params.is_locked
    outside = params.unlocked()
    outside_structure: object = jax.tree.structure(outside)
    created_structure: list[Any] = []

    def body(carry: tuple[Any, Params], own: Any) -> tuple[tuple[Any, Params], Any]:
      h, rest = carry
      h, out, new_params = call(rest, h, own)
      created, rest = new_params.split(self._owns)
      if jax.tree.structure(rest) != outside_structure:
        raise ValueError(changed_outside(self, carry[1], rest))
      if created and was_locked:
        raise RuntimeError(
            f"{self.where()}: the params are locked but hold none of the repeated"
            f" layer's params (under {path_text(self.layer_path)}). Initialise"
            " them first by calling the model with unlocked params"
            " (params.unlocked()), then run with the params it returns."
        )
      created_structure[:] = [jax.tree.structure(created)]
      return (h, rest), (jax.tree.leaves(created), out)

    (y, outside), (stacked, outputs) = jax.lax.scan(
        self._checkpointed(body), (x, outside), per_layer,
        length=self.num_layers, unroll=self.unroll,
    )
    created = jax.tree.unflatten(created_structure[0], stacked)
    for path, param in created.items():
      created = created.set(path, metadata=add_stacked(param.metadata, self.num_layers))
    merged = outside.merge(created)
    return y, outputs, merged.locked() if was_locked else merged

  def _run(
      self, params: Params, x: Any, per_layer: Any, call: LayerCall
  ) -> tuple[Any, Any, Params]:
    """The runtime scan over the stacked params; see the class docstring."""
    stacked, outside = params.split(self._owns)
    outside_structure: object = jax.tree.structure(outside)
    stacked_leaves, stacked_structure = jax.tree.flatten(stacked)
    view_structure: object = jax.tree.structure(layer_view(stacked))
    changed: list[int] = []

    def body(carry: tuple[Any, Params], xs: tuple[list[Any], Any]) -> tuple[tuple[Any, Params], Any]:
      h, rest = carry
      leaves, own = xs
      layer_params = jax.tree.unflatten(view_structure, leaves)
      h, out, new_params = call(rest.merge(layer_params), h, own)
      new_layer, rest = new_params.split(self._owns)
      if jax.tree.structure(rest) != outside_structure:
        raise ValueError(changed_outside(self, carry[1], rest))
      if jax.tree.structure(new_layer) != view_structure:
        raise ValueError(changed_inside(self, layer_params, new_layer))
      new_leaves = jax.tree.leaves(new_layer)
      # Only values the layer replaced (statistics, counters) leave the scan:
      # the weights it merely read are not copied out once per layer.
      changed[:] = [i for i, (old, new) in enumerate(zip(leaves, new_leaves)) if old is not new]
      paths = list(new_layer)
      for i in changed:
        check_update(self, paths[i], leaves[i], new_leaves[i])
      return (h, rest), ([new_leaves[i] for i in changed], out)

    (y, outside), (updates, outputs) = jax.lax.scan(
        self._checkpointed(body), (x, outside), (stacked_leaves, per_layer),
        length=self.num_layers, unroll=self.unroll,
    )
    for i, update in zip(changed, updates):
      stacked_leaves[i] = update
    stacked = jax.tree.unflatten(stacked_structure, stacked_leaves)
    return y, outputs, outside.merge(stacked)
