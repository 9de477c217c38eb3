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

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from blox.graph._graph import Graph
from blox.graph._inspect._capture import collecting, emit_stacked
from blox.graph._module import Module
from blox.graph._repeat_checks import (
    build_layer,
    changed_inside,
    changed_outside,
    check_make_layer,
    check_num_layers,
    check_remat_policy,
    check_same_kind,
    check_unroll,
    check_update,
    unpack_result,
)
from blox.graph._settings import setting
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

__all__ = ["LayerStep", "Repeat", "ScanPlan"]


class LayerStep(NamedTuple):
  """What one step of a repeat's scan hands out, per layer.

  `jax.lax.scan` stacks every field over the layers, so this is the one way
  results leave the traced body. A new kind of per-layer result (values a
  layer records, say) is one more field here, filled in by `Repeat._step`.
  """

  written: Params
  """The layer params the step created (initialisation) or replaced
  (runtime state), with one layer's metadata; weights merely read are left
  out, so they are not copied once per layer."""
  output: Any
  """The layer's own output with `repeat.scan`; None otherwise."""
  captured: Any
  """What the layer's calls recorded for an active `capture` (`{}` without)."""


class ScanPlan(NamedTuple):
  """What the scan body needs besides its carry and the layer's slice: the
  differences between creating params and running, as data."""

  args: tuple[Any, ...]
  kwargs: dict[str, Any]
  with_own: bool
  """`repeat.scan`: the layer takes its own input and returns its own output."""
  creating: bool
  """No layer params exist yet: the layer creates them."""
  locked: bool
  """The params the repeat was given are locked (creating is then an error)."""
  view_structure: object
  """The pytree structure of the layer's params as one layer sees them."""
  outside_structure: object
  """The pytree structure of the other params, which the layer may not change."""


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
  created values come out of the scan stacked. Params are thus created
  exactly as a Python loop over `num_layers` separately built layers would
  create them (the `Rng` counter advancing from layer to layer, so every
  layer gets different initial values), and the output equals that loop's.
  A param created outside the layer's node during that call is an error.

  Runtime. Otherwise the repeat is one `jax.lax.scan` over the stacked
  params, with the same body; the layer may change existing params
  (counters, statistics) but not create any. `remat_policy` wraps the
  scanned body with `jax.checkpoint`: None (no rematerialisation), `'full'`
  (save nothing), or the name of a `jax.checkpoint_policies` policy, e.g.
  `'dots_with_no_batch_dims_saveable'`. `unroll` is passed to `jax.lax.scan`.
  """

  make_layer: Callable[[Graph], Module] = setting(
      kw_only=False,
      check=check_make_layer,
      doc="builds the layer on the node it is given, called once: a function"
      " node -> Module such as `lambda node: Block(node, ...)`, or a module class"
      " that needs no other argument.",
  )
  num_layers: int = setting(
      kw_only=False, check=check_num_layers,
      doc="how many times the layer is applied, a positive int.",
  )
  remat_policy: str | None = setting(
      default=None, check=check_remat_policy,
      doc="None, `'full'`, or a `jax.checkpoint_policies` name.",
  )
  unroll: int | bool = setting(
      default=1, check=check_unroll,
      doc="layers per scan step, a positive int, or True to unroll the scan fully.",
  )

  def __post_init__(self) -> None:
    self.layer: Module = build_layer(self.make_layer, self.graph.child(LAYER), self.where())

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
    y, _, params = self._scan(params, x, None, args, kwargs, with_own=False)
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
    y, outputs, params = self._scan(params, x, per_layer, args, kwargs, with_own=True)
    return (y, outputs), params

  def _scan(
      self, params: Params, x: Any, per_layer: Any, args: tuple[Any, ...],
      kwargs: dict[str, Any], *, with_own: bool,
  ) -> tuple[Any, Any, Params]:
    """The one scan, creating the layer's params or running on them; see the
    class docstring. Returns `(x, per-layer outputs, params)`."""
    if not isinstance(params, Params):
      raise TypeError(
          f"{self.where()}: params must be a blox Params, got {type(params).__name__}."
      )
    # Through split, not params[path]: indexing counts as a read for
    # `unused_params`, and only the layer's own reads should.
    stacked, outside = params.split(self._owns)
    for path, param in stacked.items():
      check_stacked(path, param, self.num_layers, self.where())
    creating = not stacked
    if creating:  # the layer's first calls create its params
      stacked, outside = stacked.unlocked(), outside.unlocked()
    plan = ScanPlan(
        args=args, kwargs=kwargs, with_own=with_own, creating=creating,
        locked=params.is_locked,
        view_structure=jax.tree.structure(layer_view(stacked)),
        outside_structure=jax.tree.structure(outside),
    )
    (y, outside), steps = jax.lax.scan(
        self._checkpointed(functools.partial(self._step, plan)),
        (x, outside), (jax.tree.leaves(stacked), per_layer),
        length=self.num_layers, unroll=self.unroll,
    )
    emit_stacked(steps.captured)
    merged = outside.merge(self._restack(stacked, steps.written))
    return y, steps.output, merged.locked() if params.is_locked else merged

  def _step(
      self, plan: ScanPlan, carry: tuple[Any, Params], xs: tuple[list[Any], Any]
  ) -> tuple[tuple[Any, Params], LayerStep]:
    """The scan body: one layer on its slice of the stacked params.

    `carry` is `(x, the params outside the layer)`, `xs` the layer's param
    values (none while creating them) and its own input. Everything a layer
    gives out besides the carry is a field of the returned `LayerStep`.
    """
    h, outside = carry
    leaves, own = xs
    given = jax.tree.unflatten(plan.view_structure, leaves)
    own_input = (own,) if plan.with_own else ()
    with collecting() as inner:
      result = self.layer(outside.merge(given), h, *own_input, *plan.args, **plan.kwargs)
    new_h, output, new_params = unpack_result(self, result, plan.with_own)
    check_same_kind(self.layer.where(), h, new_h)
    mine, rest = new_params.split(self._owns)
    if jax.tree.structure(rest) != plan.outside_structure:
      raise ValueError(changed_outside(self, outside, rest))
    if plan.creating and mine and plan.locked:
      raise RuntimeError(
          f"{self.where()}: the params are locked but hold none of the repeated"
          f" layer's params (under {path_text(self.layer_path)}). Initialise"
          " them first by calling the model with unlocked params"
          " (params.unlocked()), then run with the params it returns."
      )
    if not plan.creating and jax.tree.structure(mine) != plan.view_structure:
      raise ValueError(changed_inside(self, given, mine))
    before = dict(zip(given, leaves))
    written, _ = mine.split(lambda path, param: param.value is not before.get(path))
    for path, param in written.items():
      if path in before:
        check_update(self, path, before[path], param.value)
    return (new_h, rest), LayerStep(written=written, output=output, captured=inner.values)

  def _checkpointed(self, body: Callable[..., Any]) -> Callable[..., Any]:
    if self.remat_policy is None:
      return body
    # lax.scan already keeps XLA from merging the recomputation with the
    # forward pass, so the checkpoint need not (jax.checkpoint's advice).
    if self.remat_policy == "full":
      return jax.checkpoint(body, prevent_cse=False)
    policy = getattr(jax.checkpoint_policies, self.remat_policy)
    return jax.checkpoint(body, prevent_cse=False, policy=policy)

  def _restack(self, stacked: Params, written: Params) -> Params:
    """The layer's stacked params after the scan, from what its steps wrote
    (each value stacked over the layers by the scan)."""
    if not stacked:  # created: the metadata gains the stacked axis
      for path, param in written.items():
        written = written.set(path, metadata=add_stacked(param.metadata, self.num_layers))
      return written
    for path, param in written.items():  # replaced: the stacked entry keeps its metadata
      stacked = stacked.set(path, param.value)
    return stacked
