"""Logical axis rules: from the axis names a model uses to the axes of a mesh.

A sharding entry names, per dimension, either mesh axes directly
(`('data', 'model')`) or logical axes (`('embed', 'mlp')`) that `rules` map to
mesh axes, as Flax's `logical_axis_rules` do: a sequence of
`(logical_name, mesh_axes)` pairs, where `mesh_axes` is a mesh axis name, a
tuple of them, or None (replicated). The first rule for a name wins. A name
with no rule that is a mesh axis of the mesh is taken as that axis, so
metadata written with mesh axis names keeps working with rules too; any other
name without a rule is an error (Flax would silently replicate it: a typo
would then cost memory without a word).

Example:
  >>> import jax
  >>> mesh = jax.make_mesh((1, 1), ('data', 'model'))
  >>> rules = (('batch', 'data'), ('embed', None), ('mlp', 'model'))
  >>> resolve(('batch', 'embed', 'mlp'), (8, 4, 2), rules, mesh, 'x')
  ('data', None, 'model')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from jax.sharding import Mesh

__all__ = ["Rules", "check_rules", "resolve"]

# One (logical name, mesh axis / tuple of mesh axes / None) pair per rule.
Rules = Sequence[tuple[str, "str | tuple[str, ...] | None"]]


def check_rules(rules: Any, where: str) -> tuple[tuple[str, tuple[str, ...] | None, Any], ...]:
  """`rules` as `(name, mesh axes tuple or None, the rule as written)` triples.

  Raises:
    ValueError: `rules` is not a sequence of `(name, mesh_axes)` pairs.
  """
  if rules is None:
    return ()
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise ValueError(
        f"{where}: rules must be a sequence of (logical_name, mesh_axes) pairs, got"
        f" {rules!r}; write e.g. (('batch', 'data'), ('mlp', 'model'), ('embed', None))."
    )
  checked = []
  for rule in rules:
    axes: tuple[str, ...] | None = None
    ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
    if ok and rule[1] is not None:
      target = (rule[1],) if isinstance(rule[1], str) else rule[1]
      ok = isinstance(target, tuple) and bool(target) and all(isinstance(a, str) for a in target)
      axes = target if ok else None
    if not ok:
      raise ValueError(
          f"{where}: the rule {rule!r} is not a (logical_name, mesh_axes) pair; each rule"
          " is a logical axis name and a mesh axis name, a tuple of them, or None,"
          " e.g. ('mlp', 'model')."
      )
    checked.append((rule[0], axes, tuple(rule)))
  return tuple(checked)


def resolve(
    entries: tuple[Any, ...],
    shape: tuple[int, ...],
    rules: Any,
    mesh: Mesh,
    where: str,
    offset: int = 0,
) -> tuple[Any, ...]:
  """The mesh axes for each of `entries`, which describe the dims `shape[offset:]`.

  Each entry is None, a name or a tuple of names; a name is looked up in
  `rules` (first rule wins), else taken as a mesh axis. Returns one entry per
  input entry: None, a mesh axis name, or a tuple of them (a tuple entry or a
  rule to several axes). `where` starts every error message (the param path
  or the array being constrained).

  Raises:
    ValueError: malformed rules, a name that has no rule and is no mesh axis,
      a rule to an axis the mesh lacks, a mesh axis used for two dims, or a
      dim that the mesh axes' sizes do not divide.
  """
  table: dict[str, tuple[tuple[str, ...] | None, Any]] = {}
  for name, axes, rule in check_rules(rules, where):
    table.setdefault(name, (axes, rule))
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  used: dict[str, str] = {}
  resolved: list[Any] = []
  for dim, entry in enumerate(entries):
    if entry is None:
      resolved.append(None)
      continue
    names = entry if isinstance(entry, tuple) else (entry,)
    axes_here: list[str] = []
    via = []
    for name in names:
      if isinstance(name, str) and name in table:
        axes, rule = table[name]
        via.append(f"logical axis {name!r}, rule {rule!r}")
        for axis in axes or ():
          if axis not in sizes:
            raise ValueError(
                f"{where}: the logical axis {name!r} maps through the rule {rule!r} to the"
                f" mesh axis {axis!r}, but the mesh has axes {tuple(mesh.axis_names)}."
                " Fix the rule or build the mesh with that axis."
            )
        axes_here.extend(axes or ())
      elif isinstance(name, str) and name in sizes:
        axes_here.append(name)
      else:
        known = f" or a rule in {tuple(table)}" if table else " (no rules were given)"
        raise ValueError(
            f"{where} naming the axis {name!r}, which is not a mesh axis of the mesh"
            f" (axes {tuple(mesh.axis_names)}){known}. Rename the axis in the metadata,"
            f" add a rule ({name!r}, <mesh axis or None>), or build the mesh with that axis."
        )
    how = f" ({'; '.join(via)})" if via else ""
    for axis in axes_here:
      if axis in used:
        raise ValueError(
            f"{where} that uses the mesh axis {axis!r} twice (for {used[axis]} and for"
            f" {entry!r}{how}); each mesh axis may shard one dimension. Change the"
            " rules or the metadata."
        )
      used[axis] = repr(entry)
    if not axes_here:
      resolved.append(None)
      continue
    parts = math.prod(sizes[axis] for axis in axes_here)
    target = axes_here[0] if len(axes_here) == 1 and not isinstance(entry, tuple) else tuple(axes_here)
    if shape[offset + dim] % parts:
      raise ValueError(
          f"{where}, shape {shape}: dimension {offset + dim} (size {shape[offset + dim]}) cannot be split over mesh axis"
          f" {target!r}{how} into {parts} equal parts. Change the size, the mesh, the"
          " rules or the sharding metadata."
      )
    resolved.append(target)
  return tuple(resolved)

