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
dimensions leave no trace (their partial sums are reduced). A mesh axis that
would shard two output dimensions is ambiguous: an error names the module,
the weight and its logical axis, and the two ways out.

Without an Explicit sharding in either operand's type (no mesh, Auto axes,
replicated operands) there is nothing to decide: `None`, and the
contraction runs exactly as it would without a mesh.

Example:
  >>> labels_of('...i,io->...o', 3, 2)
  (('#0', '#1', 'i'), ('i', 'o'), ('#0', '#1', 'o'))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, PartitionSpec

__all__ = [
    "AmbiguousShardingError",
    "conv_out_sharding",
    "einsum_out_sharding",
    "explicit_spec",
    "labels_of",
]


# PartitionSpec's constructor has no annotations; calling it through this typed
# name keeps mypy's strict untyped-call check on.
_partition_spec: Callable[..., PartitionSpec] = PartitionSpec


class AmbiguousShardingError(ValueError):
  """Two output dimensions of a contraction would be sharded over one mesh axis."""


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


def einsum_out_sharding(
    equation: str,
    inputs: Any,
    weight: Any,
    *,
    where: str,
    weight_text: str,
    logical_axes: Sequence[Any] | None,
) -> PartitionSpec | None:
  """The `out_sharding` of `einsum(equation, inputs, weight)`, or None when
  neither operand carries an Explicit sharding (see the module docstring).

  Args:
    equation: the einsum equation, two operands.
    inputs, weight: the operands (traced or concrete).
    where: how errors name the module (`Linear 'net/out'`).
    weight_text: how errors name the weight (its param path, or 'keys').
    logical_axes: the weight's logical axis per dimension (its sharding
      metadata), for the error; None when unknown.

  Raises:
    AmbiguousShardingError: two output dimensions would use one mesh axis.
  """
  specs = [explicit_spec(inputs), explicit_spec(weight)]
  if specs[0] is None and specs[1] is None:
    return None
  ranks = (jax.typeof(inputs).ndim, jax.typeof(weight).ndim)
  in_labels, w_labels, out_labels = labels_of(equation, *ranks)
  in_spec = specs[0] or (None,) * ranks[0]
  w_spec = specs[1] or (None,) * ranks[1]
  by_input = dict(zip(in_labels, in_spec))
  by_weight = dict(zip(w_labels, w_spec))
  owner: dict[str, str] = {}
  out: list[Any] = []
  for dim, label in enumerate(out_labels):
    entry, source = by_input.get(label), "inputs"
    if entry is None:
      entry, source = by_weight.get(label), "weights"
    for axis in _axes(entry):
      if axis in owner:
        raise AmbiguousShardingError(_ambiguity(
            where, weight_text, logical_axes, w_labels, label, axis, owner[axis], dim))
      kind = "batch dimension" if label.startswith("#") else f"dimension {label!r}"
      owner[axis] = f"{source}' {kind} (output dimension {dim})"
    out.append(entry)
  return _partition_spec(*out)


def _ambiguity(
    where: str, weight_text: str, logical_axes: Sequence[Any] | None,
    w_labels: tuple[str, ...], label: str, axis: str, first: str, dim: int,
) -> str:
  logical = None
  if logical_axes is not None and label in w_labels:
    index = w_labels.index(label)
    logical = logical_axes[index] if index < len(logical_axes) else None
  named = "" if logical is None else f" (the weight's logical axis {logical!r})"
  fix = (
      "change the logical axis rules or the sharding metadata" if logical is None
      else f"change the rule for {logical!r} (e.g. ({logical!r}, None) leaves it unsharded)"
  )
  return (
      f"{where}: the output of the product with {weight_text} would be sharded over"
      f" the mesh axis {axis!r} twice: by the {first} and by output dimension {dim}"
      f" {label!r}{named}. Shard one of them over another mesh axis: {fix}; or"
      " reshard the inputs first (jax.sharding.reshard)."
  )


def conv_out_sharding(
    inputs: Any, kernel: Any, *, where: str, weight_text: str,
    logical_axes: Sequence[Any] | None,
) -> PartitionSpec | None:
  """The `out_sharding` of a channels-last convolution: the inputs' batch
  sharding, unsharded spatial axes, the kernel's output-channel sharding;
  None without Explicit shardings."""
  in_spec, k_spec = explicit_spec(inputs), explicit_spec(kernel)
  if in_spec is None and k_spec is None:
    return None
  ndim = jax.typeof(inputs).ndim
  batch = None if in_spec is None else in_spec[0]
  channels = None if k_spec is None else k_spec[-1]
  clash = set(_axes(batch)) & set(_axes(channels))
  if clash:
    k_labels = tuple("s" * (jax.typeof(kernel).ndim - 1)) + ("o",)
    raise AmbiguousShardingError(_ambiguity(
        where, weight_text, logical_axes, k_labels, "o", sorted(clash)[0],
        "inputs' batch dimension", ndim - 1))
  return _partition_spec(batch, *([None] * (ndim - 2)), channels)
