"""The output sharding of a contraction on Explicit mesh axes.

On a mesh whose axes are `AxisType.Explicit` (what `jax.make_mesh` makes by
default), an array's sharding is part of its type, and a contraction whose
operands leave the output's sharding open (a sharded contracting dimension,
for one) must be told it: `out_sharding=`. `contract` asks this module.

The rule is the one a model's logical axis rules imply, read from the
operands' types (which the rules gave them: params are created sharded by
their metadata, activations by `blox.parallel.constrain`): each output
dimension keeps the sharding of the dimension it comes from, the inputs'
first and the weight's where the inputs' is not sharded; contracting
dimensions leave no trace (their partial sums are reduced). A mesh axis
shards one output dimension only: where the weight's would take one that the
inputs already use (a weight sharded over 'data' for FSDP, inputs split over
'data' by batch), the inputs keep it and that weight dimension is gathered,
as fully sharded data parallelism does. Embedding lookups follow the same
rule (`gather_out_sharding`).

Without an Explicit sharding in either operand's type (no mesh, Auto axes,
replicated operands) there is nothing to decide: `None`, and the
contraction runs exactly as it would without a mesh.

Example:
  >>> labels_of('...i,io->...o', 3, 2)
  (('#0', '#1', 'i'), ('i', 'o'), ('#0', '#1', 'o'))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = [
    "broadcast_like",
    "mesh_of",
    "conv_out_sharding",
    "einsum_out_sharding",
    "explicit_spec",
    "follow",
    "gather_out_sharding",
    "labels_of",
    "sharding_of",
]


# jax.sharding.reshard has no annotations either.
_reshard: Callable[[Any, Any], Any] = jax.sharding.reshard
# PartitionSpec's constructor has no annotations; calling it through this typed
# name keeps mypy's strict untyped-call check on.
_partition_spec: Callable[..., PartitionSpec] = PartitionSpec


def mesh_of(*arrays: Any) -> Any:
  """The (abstract) mesh in the first of `arrays` whose type holds one."""
  for x in arrays:
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    names = getattr(mesh, "axis_names", None)
    if mesh is not None and names:
      return mesh
  return None


def _named(spec: PartitionSpec, *arrays: Any) -> NamedSharding:
  """`spec` on the operands' mesh: a bare PartitionSpec would need the mesh
  set with `jax.set_mesh`, and the operands already say which mesh it is."""
  return NamedSharding(mesh_of(*arrays), spec)


def explicit_spec(x: Any) -> tuple[Any, ...] | None:
  """The Explicit mesh axes sharding each dimension of `x`, from its type;
  None when its type holds no Explicit sharding."""
  aval = jax.typeof(x)
  sharding = getattr(aval, "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or not getattr(mesh, "axis_names", ()):
    return None
  if not any(kind == AxisType.Explicit for kind in mesh.axis_types):
    return None
  spec = tuple(getattr(sharding, "spec", ()))
  entries = spec + (None,) * (aval.ndim - len(spec))
  return entries if any(entry is not None for entry in entries) else None


def labels_of(equation: str, *ranks: int) -> tuple[tuple[str, ...], ...]:
  """Each operand's and the output's labels, one per dimension, with the
  dimensions of `...` named `#0`, `#1`, ... from the right, as they broadcast."""
  inputs, output = equation.replace(" ", "").split("->")
  operands = inputs.split(",")
  widest = max(rank - len(term.replace("...", "")) for term, rank in zip(operands, ranks))

  def expand(term: str, ellipsis_dims: int) -> tuple[str, ...]:
    head, dots, tail = term.partition("...")
    if not dots:
      return tuple(term)
    named = tuple(f"#{widest - ellipsis_dims + i}" for i in range(ellipsis_dims))
    return (*head, *named, *tail)

  expanded = [expand(term, rank - len(term.replace("...", ""))) for term, rank in zip(operands, ranks)]
  return (*expanded, expand(output, widest))


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


class ShardingConflict(Exception):
  """A dimension both operands of a contraction keep (a batch or head axis
  of both) is split over different mesh axes: which one the output takes is
  ambiguous. `blox.nn.contract` turns it into an error naming the module,
  the weight and the logical axis."""

  def __init__(self, out_dim: int, weight_dim: int, inputs_axes: Any, weight_axes: Any) -> None:
    super().__init__(out_dim, weight_dim, inputs_axes, weight_axes)
    self.out_dim, self.weight_dim = out_dim, weight_dim
    self.inputs_axes, self.weight_axes = inputs_axes, weight_axes


def einsum_out_sharding(equation: str, inputs: Any, weight: Any) -> NamedSharding | None:
  """The `out_sharding` of `einsum(equation, inputs, weight)`, or None when
  neither operand carries an Explicit sharding (see the module docstring)."""
  specs = [explicit_spec(inputs), explicit_spec(weight)]
  if specs[0] is None and specs[1] is None:
    return None
  ranks = (jax.typeof(inputs).ndim, jax.typeof(weight).ndim)
  in_labels, w_labels, out_labels = labels_of(equation, *ranks)
  in_spec = specs[0] or (None,) * ranks[0]
  w_spec = specs[1] or (None,) * ranks[1]
  by_input = dict(zip(in_labels, in_spec))
  by_weight = dict(zip(w_labels, w_spec))
  for dim, label in enumerate(out_labels):
    mine, theirs = by_input.get(label), by_weight.get(label)
    if label in by_weight and mine is not None and theirs is not None and mine != theirs:
      raise ShardingConflict(dim, w_labels.index(label), mine, theirs)
  # The inputs' dimensions first: they keep their mesh axes.
  out: list[Any] = [by_input.get(label) for label in out_labels]
  used = {axis for entry in out for axis in _axes(entry)}
  for dim, label in enumerate(out_labels):
    if out[dim] is None:
      free = tuple(a for a in _axes(by_weight.get(label)) if a not in used)
      used.update(free)
      out[dim] = None if not free else free[0] if len(free) == 1 else free
  return _named(_partition_spec(*out), inputs, weight)


def conv_out_sharding(inputs: Any, kernel: Any) -> NamedSharding | None:
  """The `out_sharding` of a channels-last convolution: the inputs' batch
  sharding, unsharded spatial axes, the kernel's output-channel sharding
  unless the batch uses its axes; None without Explicit shardings."""
  in_spec, k_spec = explicit_spec(inputs), explicit_spec(kernel)
  if in_spec is None and k_spec is None:
    return None
  ndim = jax.typeof(inputs).ndim
  batch = None if in_spec is None else in_spec[0]
  channels = None if k_spec is None else k_spec[-1]
  if set(_axes(batch)) & set(_axes(channels)):
    channels = None
  return _named(_partition_spec(batch, *([None] * (ndim - 2)), channels), inputs, kernel)


def gather_out_sharding(table: Any, ids: Any) -> NamedSharding | None:
  """The `out_sharding` of `table[ids]` (rows of a 2-D table): the ids'
  sharding, then the table's feature sharding unless the ids use its axes;
  None without Explicit shardings."""
  t_spec, i_spec = explicit_spec(table), explicit_spec(ids)
  if t_spec is None and i_spec is None:
    return None
  leading = list(i_spec or (None,) * jax.typeof(ids).ndim)
  used = {axis for entry in leading for axis in _axes(entry)}
  feature = None if t_spec is None else t_spec[1]
  if set(_axes(feature)) & used:
    feature = None
  return _named(_partition_spec(*leading, feature), ids, table)


def follow(value: Any, like: Any) -> Any:
  """`value` laid out like the trailing dimensions of `like`, which it meets
  elementwise (a bias added to a layer's outputs, a norm's scale).

  On Explicit mesh axes both operands of an elementwise op must agree on
  their shardings; a param sharded otherwise (over 'data' for FSDP) is
  resharded, which gathers it. Without Explicit shardings `value` is
  returned as it is.
  """
  if value is None:
    return None
  own, theirs = explicit_spec(value), explicit_spec(like)
  if own is None and theirs is None:
    return value
  ndim = jax.typeof(value).ndim
  target = tuple(theirs[len(theirs) - ndim:]) if theirs is not None else (None,) * ndim
  # Size-1 dimensions broadcast, so they carry no sharding.
  target = tuple(None if size == 1 else entry for size, entry in zip(jax.typeof(value).shape, target))
  if (own or (None,) * ndim) == target:
    return value
  return _reshard(value, _named(_partition_spec(*target), like, value))


def sharding_of(x: Any) -> NamedSharding | None:
  """The Explicit sharding in `x`'s type, or None without one (the
  `out_sharding` that makes a new array, random bits say, laid out like `x`)."""
  spec = explicit_spec(x)
  return None if spec is None else _named(_partition_spec(*spec), x)


def broadcast_like(x: Any, like: Any) -> Any:
  """`x` broadcast to `like`'s shape and laid out like it, for an elementwise
  select (`jnp.where`) on Explicit mesh axes; `x` unchanged without them (the
  select broadcasts it)."""
  spec = sharding_of(like)
  if spec is None:
    return x
  return _reshard(jnp.broadcast_to(x, jnp.shape(like)), spec)
