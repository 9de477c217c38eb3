"""Shardings from param metadata, and initialisation straight onto devices.

A param says how it is laid out with a `blox.params.SHARDING` (`'sharding'`)
metadata entry: one
entry per dimension, each a mesh axis name, a logical axis name that
`rules` map to mesh axes (`blox.parallel._rules`), a tuple of names, or None
(not sharded); a single name `v` means `(v,)`. Missing entries at the end
mean None; no entry at all means replicated. Write a tuple, not a
`PartitionSpec`. A param stacked for a layer stack (`blox.graph.Repeat`,
metadata `blox.params.STACKED`) has one leading axis per stacked size; its
sharding metadata describes the dims after those, and the stacked axes get
no mesh axis. `param_shardings` turns that into a `Params`-shaped pytree of
`NamedSharding`s for `jax.jit(in_shardings=..., out_shardings=...)`, and
`init_sharded` runs an init function so that every param is born on its
devices.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.params import SHARDING, Param, Params
  >>> mesh = jax.make_mesh((1,), ('model',))
  >>> params = Params({('w',): Param(jnp.ones((2, 4)), metadata={SHARDING: (None, 'model')})})
  >>> param_shardings(params, mesh)[('w',)].value.spec
  P(None, 'model')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from blox.params import SHARDING, STACKED, Metadata, Param, Params, Path, path_text, placing, split_arrays
from blox.parallel._rules import Rules, check_rules, resolve
from blox.parallel._util import spec

__all__ = ["abstract_params", "init_sharded", "param_shardings", "partition_spec"]

T = TypeVar("T")

# jax.ShapeDtypeStruct's constructor has no annotations; calling it through a
# typed alias keeps strict mypy on without an ignore at every call.
abstract_array: Callable[..., jax.ShapeDtypeStruct] = jax.ShapeDtypeStruct


def partition_spec(path: Path, param: Param, mesh: Mesh, *, rules: Rules | None = None) -> PartitionSpec:
  """The `PartitionSpec` that `param`'s `SHARDING` metadata asks for.

  The metadata is read as `Param.sharding` reads it: a tuple gives one entry
  per dimension, any other value `v` means `(v,)`, and no entry (or None)
  means replicated. For a stacked param (metadata `STACKED: (n, ...)`, from
  `blox.graph.Repeat`) the entries describe the dims after the stacked ones,
  and the spec starts with one None per stacked axis.

  Args:
    path: the param's path, used in error messages.
    param: the param; its value may be an array or a `jax.ShapeDtypeStruct`.
    mesh: the mesh whose axis names the metadata (or the rules) refer to.
    rules: logical axis rules, `(logical_name, mesh_axes)` pairs (see
      `blox.parallel` `constrain`): metadata entries that name a logical
      axis map to the first rule's mesh axes (None: replicated); a name
      with no rule that is a mesh axis is taken as is.

  Raises:
    TypeError: the metadata is a `PartitionSpec` rather than a tuple.
    ValueError: the metadata names an axis that is neither a mesh axis nor
      has a rule, a rule names an axis the mesh lacks, the rules are not
      pairs, one mesh axis is used twice after resolution, the metadata
      has more entries than the value has (per-layer) dimensions, splits a
      dimension into a number of parts that does not divide it, or its
      `STACKED` entry is not a tuple of sizes matching the leading dims.
  """
  value = param.value
  shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
  stacked = _stacked_axes(path, param, shape)
  raw = param.metadata.get(SHARDING)
  if raw is None:
    return spec()
  if isinstance(raw, PartitionSpec):
    raise TypeError(
        f"Param {path_text(path)} has sharding metadata {raw!r}, a PartitionSpec;"
        f" use a tuple like {tuple(raw)!r}, not a PartitionSpec (partition_spec"
        " builds the PartitionSpec from it)."
    )
  entries = param.sharding
  layer_shape = shape[stacked:]
  if len(entries) > len(layer_shape):
    layers = (
        f" of which the first {stacked} are stacked layer axes ({STACKED!r}"
        f" metadata {param.metadata[STACKED]!r}), so one layer has rank"
        f" {len(layer_shape)}" if stacked else ""
    )
    raise ValueError(
        f"Param {path_text(path)} has sharding metadata {raw!r} with {len(entries)}"
        f" entries, but its value has rank {len(shape)} (shape {shape}){layers}; give"
        " at most one mesh axis (or None) per dimension."
    )
  where = f"Param {path_text(path)} has sharding metadata {raw!r}"
  resolved = resolve(entries, shape, rules, mesh, where, offset=stacked)
  return spec(*([None] * stacked), *resolved)


def _stacked_axes(path: Path, param: Param, shape: tuple[int, ...]) -> int:
  """How many leading dims of the param are stacked layer axes (`STACKED`)."""
  sizes = param.metadata.get(STACKED)
  if sizes is None:
    return 0
  if (
      not isinstance(sizes, tuple)
      or not all(isinstance(n, int) and not isinstance(n, bool) for n in sizes)
      or tuple(shape[: len(sizes)]) != sizes
  ):
    raise ValueError(
        f"Param {path_text(path)} has {STACKED!r} metadata {sizes!r}, but its shape is"
        f" {shape}; the entry must be a tuple of the sizes of its leading stacked"
        " (layer) axes, as blox.graph.Repeat writes it."
    )
  return len(sizes)


def param_shardings(params: Params, mesh: Mesh, rules: Rules | None = None) -> Params:
  """A `Params`-shaped pytree of `NamedSharding`s built from sharding metadata.

  Works on concrete params and on the abstract ones from `jax.eval_shape`. The
  result has the same pytree structure as `params` (paths, flags, metadata,
  locked flag), so it can be passed to `jax.jit` as `in_shardings` or
  `out_shardings` for those params, or to `jax.device_put`.

  Example:
    >>> mesh = jax.make_mesh((1,), ('data',))
    >>> shardings = param_shardings(Params({('b',): Param(np.zeros(3))}), mesh)
    >>> shardings[('b',)].value.spec
    P()

  Raises:
    TypeError: `params` is not a `Params`, or see `partition_spec`.
    ValueError: see `partition_spec`.
  """
  if not isinstance(params, Params):
    raise TypeError(
        f"param_shardings takes a blox Params, got {type(params).__name__}; for"
        " other pytrees build NamedShardings with jax.sharding directly."
    )
  check_rules(rules, "param_shardings")
  return params.map(lambda path, param: NamedSharding(mesh, partition_spec(path, param, mesh, rules=rules)))


def _tree_shardings(tree: Any, mesh: Mesh, rules: Rules | None) -> Any:
  """Shardings for an init function's output: Params by metadata, the rest replicated."""
  replicated = NamedSharding(mesh, spec())
  return jax.tree.map(
      lambda node: param_shardings(node, mesh, rules) if isinstance(node, Params) else replicated,
      tree,
      is_leaf=lambda node: isinstance(node, Params),
  )


def _with_traced_arrays(init_fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[Callable[..., T], list[Any]]:
  """`init_fn` as a function of the array leaves of `args` only (see `split_arrays`)."""
  arrays, rebuild = split_arrays(args)

  def run(*traced: Any) -> T:
    call_args, _ = rebuild(traced)
    return init_fn(*call_args)

  return run, arrays


def init_sharded(init_fn: Callable[..., T], mesh: Mesh, *args: Any, rules: Rules | None = None) -> T:
  """Runs `init_fn(*args)` so that every param is created on its devices.

  The output's shapes come from `jax.eval_shape` (nothing is computed), then
  `init_fn` runs under `jax.jit(out_shardings=...)` with shardings from each
  param's metadata (`param_shardings`): no device ever holds a full copy of a
  sharded param. The values equal those of an unsharded `init_fn(*args)`.

  `init_fn` may return `Params` or any pytree holding them (e.g.
  `(params, state)`); leaves outside a `Params` are replicated. Array
  arguments are traced; other arguments (ints, strings, modules) are passed
  as they are. With several processes, every process calls this with the
  same arguments, like any other jitted function.

  Example:
    >>> from blox.params import SHARDING, Param, Params
    >>> mesh = jax.make_mesh((1,), ('model',))
    >>> def init(x):
    ...   return Params({('w',): Param(x * 2, metadata={SHARDING: ('model',)})})
    >>> init_sharded(init, mesh, np.ones(4))[('w',)].value.sharding.spec
    P('model',)
  """
  jitted, arrays = sharded_init_function(init_fn, mesh, *args, rules=rules)
  # The mesh asked for is the current one while the params are created,
  # whatever mesh the caller has set (an Auto mesh's constraints would fail
  # as assertions under an Explicit one).
  with jax.set_mesh(mesh):
    return jitted(*arrays)  # type: ignore[no-any-return]  # jit erases the return type


def sharded_init_function(
    init_fn: Callable[..., Any], mesh: Mesh, *args: Any, rules: Rules | None = None
) -> tuple[Any, list[Any]]:
  """`(jitted, arrays)`: what `init_sharded` runs, `jitted(*arrays)`, for a
  look at its compiled form (`jitted.lower(*arrays).compile()`)."""
  run, arrays = _with_traced_arrays(init_fn, args)
  shardings = _tree_shardings(jax.eval_shape(run, *arrays), mesh, rules)

  def placed(path: Path, shape: tuple[int, ...], metadata: Metadata) -> NamedSharding | None:
    spec = partition_spec(path, Param(abstract_array(shape, np.float32), metadata=metadata), mesh, rules=rules)
    return None if all(entry is None for entry in spec) else NamedSharding(mesh, spec)

  def run_placed(*traced: Any) -> Any:
    # Each param is created with its sharding (the initializer's
    # out_sharding), so none is materialised whole, also on Explicit axes.
    with placing(placed):
      return run(*traced)

  return jax.jit(run_placed, out_shardings=shardings), arrays


def abstract_params(init_fn: Callable[..., T], mesh: Mesh, *args: Any, rules: Rules | None = None) -> T:
  """What `init_sharded(init_fn, mesh, *args)` would return, without computing it.

  Every array leaf of the result is a `jax.ShapeDtypeStruct` carrying the
  shape, dtype and `NamedSharding` the real value would have (`Params` laid
  out by their metadata and `rules`, other leaves replicated); `Params`
  keep their paths, flags and metadata. Nothing is allocated: this is the
  target tree that orbax's `StandardRestore` (or `jax.device_put` of a
  loaded checkpoint) fills in, on whatever mesh this process runs.

  Example:
    >>> from blox.params import SHARDING, Param, Params
    >>> mesh = jax.make_mesh((1,), ('model',))
    >>> def init():
    ...   return Params({('w',): Param(np.ones((2, 4)), metadata={SHARDING: (None, 'model')})})
    >>> target = abstract_params(init, mesh)[('w',)].value
    >>> target.shape, target.sharding.spec
    ((2, 4), P(None, 'model'))
  """
  run, arrays = _with_traced_arrays(init_fn, args)
  abstract = jax.eval_shape(run, *arrays)
  shardings = _tree_shardings(abstract, mesh, rules)
  return jax.tree.map(  # type: ignore[no-any-return]  # tree.map erases the return type
      lambda leaf, sharding: abstract_array(leaf.shape, leaf.dtype, sharding=sharding),
      abstract,
      shardings,
  )
