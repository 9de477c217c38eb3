"""The rows of a params summary: each param measured, grouped under its module.

`collect_groups` turns params (and optionally the graph that made them) into
`ModuleGroup`s, one per module in the params' creation order, each holding a
`ParamRow` per param. With a graph, a param belongs to the module bound at the
longest graph path that is a prefix of its path, and its row is named by the
rest of its path (`'query/kernel'` under an attention module); otherwise, and
for params no module owns, a param belongs to `path[:-1]` and its row is named
`path[-1]`. A layer stack (a `Repeat`) gets a line of its own, found from
the params' `STACKED` metadata (see `collect_groups`). `summary` lays the
groups out as a table.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({('net', 'mha', 'query', 'kernel'): Param(jnp.zeros((3, 4)))})
  >>> [(g.path, [r.name for r in g.members]) for g in collect_groups(params)]
  [(('net', 'mha', 'query'), ['kernel'])]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from blox.graph._graph import Graph
from blox.graph._module import Module
from blox.graph._stacking import LAYER, stacked_sizes
from blox.params import SHARDING, Param, Params, Path, is_prng_key, measure, path_text

__all__ = [
    "ModuleGroup", "ParamRow", "collect_groups", "compute_dtype_name", "sharding_text", "total",
]


@dataclass(frozen=True)
class ParamRow:
  """What the table shows of one param; `name` is its path below its module;
  `stacked`, the sizes of its leading layer axes (its `STACKED` metadata)."""

  name: str
  shape: str
  dtype: str
  trainable: bool
  count: int
  nbytes: int
  sharding: str = ""
  stacked: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModuleGroup:
  """A module's line of the table: its path, its label, and its params' rows.

  `label` is the module's `repr` (type and configuration) when a graph binds
  a module at `path`, else None. `subtotal`, when set, is the line's
  `(count, bytes)` instead of its members' sum: a layer stack owns no rows
  itself, its line sums the stacked params of the groups below it.
  `compute` is the name of the module's compute dtype when it is known (see
  `compute_dtype_name`) and it has floating-point params, else None.
  """

  path: Path
  label: str | None
  members: tuple[ParamRow, ...]
  subtotal: tuple[int, int] | None = None
  compute: str | None = None


def compute_dtype_name(module: Module) -> str | None:
  """The name of the dtype `module` computes in, when its configuration says.

  The module's own `dtype` attribute when it holds a numpy dtype (as the
  blox.nn layers store their `dtype` argument), else the `compute_dtype` of
  its effective policy (`Module.policy()`), else None: then the dtype
  follows the inputs, which params alone cannot tell.
  """
  own = getattr(module, "dtype", None)
  if isinstance(own, np.dtype):
    return own.name
  compute = module.policy().compute_dtype
  return None if compute is None else str(compute.name)


def total(rows: Iterable[ParamRow]) -> tuple[int, int]:
  """`(element count, bytes)` summed over `rows`."""
  count = nbytes = 0
  for row in rows:
    count += row.count
    nbytes += row.nbytes
  return count, nbytes


def _axes_text(entries: Any) -> str:
  """Sharding entries as `embed,mlp`: `-` for None, `(data,model)` for a tuple."""
  def one(entry: Any) -> str:
    if entry is None:
      return "-"
    if isinstance(entry, (tuple, list)):
      return f"({','.join(one(e) for e in entry)})"
    return str(entry)
  return ",".join(one(e) for e in entries)


def sharding_text(param: Param, spec: Any = None) -> str:
  """A param's sharding for the table: its `SHARDING` metadata, and the mesh
  axes it resolved to when `spec` (a `PartitionSpec`) is given.

  `embed,mlp -> data,model`; `''` for a param without metadata that is
  replicated (or whose spec is unknown); a spec with no entries is
  `replicated`.

  Example:
    >>> import numpy as np
    >>> from jax.sharding import PartitionSpec
    >>> param = Param(np.zeros((2, 4)), metadata={SHARDING: ('embed', 'mlp')})
    >>> sharding_text(param), sharding_text(param, PartitionSpec(None, 'model'))
    ('embed,mlp', 'embed,mlp -> -,model')
  """
  meta = _axes_text(param.sharding) if param.metadata.get(SHARDING) is not None else ""
  if spec is None:
    return meta
  resolved = _axes_text(tuple(spec)) or "replicated"
  if not meta and resolved == "replicated":
    return ""
  return f"{meta} -> {resolved}" if meta else f"-> {resolved}"


def _spec_of(shardings: Params | None, path: Path) -> Any:
  """The `PartitionSpec` that `shardings` holds for `path`, or None without shardings."""
  if shardings is None:
    return None
  if path not in shardings:
    raise ValueError(
        f"summary(params, shardings=...): shardings has no entry for the param"
        f" {path_text(path)}; pass the tree that param_shardings(params, mesh, rules)"
        " returns for these same params."
    )
  sharding = shardings[path].value
  spec = getattr(sharding, "spec", None)
  if spec is None:
    raise ValueError(
        f"summary(params, shardings=...): the entry for the param {path_text(path)} is"
        f" {type(sharding).__name__}, not a NamedSharding; pass the tree that"
        " param_shardings(params, mesh, rules) returns."
    )
  return spec


def _owner(path: Path, modules: dict[Path, Module]) -> Path | None:
  """The longest proper prefix of `path` at which a module is bound, or None."""
  for end in range(len(path) - 1, 0, -1):
    if path[:end] in modules:
      return path[:end]
  return None


def collect_groups(
    params: Params, graph: Graph | None = None, shardings: Params | None = None
) -> list[ModuleGroup]:
  """One `ModuleGroup` per module of `params`, in the params' creation order.

  Args:
    params: concrete or abstract params (e.g. `jax.eval_shape` output).
    graph: a graph node (usually the root) whose modules (`graph.walk()`)
      own and label the groups; None groups by `path[:-1]`.
    shardings: a `Params`-shaped tree of `NamedSharding`s for `params`;
      each row's `sharding` then shows the resolved mesh axes too.
  """
  modules = dict(graph.walk()) if graph is not None else {}
  members: dict[Path, list[ParamRow]] = {}
  # A module with floating-point params only computes with them; a key
  # source's keys and counters say nothing of a compute dtype.
  computes: set[Path] = set()
  for path, param in params.items():
    owner = _owner(path, modules)
    group = path[:-1] if owner is None else owner
    shape, dtype, count, nbytes = measure(param.value)
    if not is_prng_key(dtype) and np.issubdtype(dtype, np.inexact):
      computes.add(group)
    members.setdefault(group, []).append(ParamRow(
        name="/".join(path[len(group):]),
        shape=f"[{', '.join(map(str, shape))}]",
        dtype=str(dtype),
        trainable=param.trainable,
        count=count,
        nbytes=nbytes,
        sharding=sharding_text(param, _spec_of(shardings, path)),
        stacked=stacked_sizes(param.metadata),
    ))
  groups = [
      ModuleGroup(
          group, repr(modules[group]), tuple(rows),
          compute=compute_dtype_name(modules[group]) if group in computes else None,
      )
      if group in modules else ModuleGroup(group, None, tuple(rows))
      for group, rows in members.items()
  ]
  return _with_stack_lines(groups, modules)


def _with_stack_lines(groups: list[ModuleGroup], modules: dict[Path, Module]) -> list[ModuleGroup]:
  """`groups` with a line for each layer stack, before the first group below
  it: its subtotal, and the count of one layer (`4 layers x 1,234`).

  A stack is read from the metadata, not from the module's type: a module
  whose `layer` child (where `Repeat` builds its layer) holds params with
  more `STACKED` axes than the stacks around the module add. Outer stacks
  come first, so a stack inside a stack's layer counts one axis more.
  """
  stacks: list[Path] = []
  for path in sorted(modules, key=len):
    layer = (*path, LAYER)
    below = [i for i, g in enumerate(groups) if g.path[: len(layer)] == layer]
    around = sum(1 for outer in stacks if path[: len(outer)] == outer)
    sizes = next((row.stacked for i in below for row in groups[i].members
                  if len(row.stacked) > around), None)
    if sizes is None:
      continue
    stacks.append(path)
    count, nbytes = total(row for i in below for row in groups[i].members)
    # The params of a stack inside a stack are stacked for every enclosing one.
    layers = math.prod(sizes[: around + 1])
    label = f"{modules[path]!r}  {sizes[around]} layers x {count // layers:,}"
    groups.insert(below[0], ModuleGroup(path, label, (), (count, nbytes)))
  return groups
