"""`summary`: a table of a model's params, grouped by module, with totals.

One row per param (name, shape, dtype, trainable or not, element count,
bytes) under a line per module: the module path, and with a graph the module's
type and configuration, plus the module's subtotals. Totals for the
trainable and the non-trainable state close the table. It reads shapes and
dtypes only, so abstract params (from `jax.eval_shape`) work too.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> params = Params({
  ...     ('net', 'dense', 'kernel'): Param(jnp.zeros((3, 4))),
  ...     ('net', 'dense', 'bias'): Param(jnp.zeros(4)),
  ...     ('net', 'norm', 'mean'): Param(jnp.zeros(4), trainable=False),
  ... })
  >>> print(summary(params))  # doctest: +NORMALIZE_WHITESPACE
  3 params in 2 modules, unlocked
  module / param  shape   dtype    train  count  bytes
  ----------------------------------------------------
  net/dense                                  16     64
    kernel        [3, 4]  float32  yes       12     48
    bias          [4]     float32  yes        4     16
  net/norm                                    4     16
    mean          [4]     float32  no         4     16
  ----------------------------------------------------
  trainable                                  16     64
  non-trainable                               4     16
  total                                      20     80
  size: 80 B (trainable 64 B, non-trainable 16 B)
"""

from __future__ import annotations

from collections.abc import Sequence

from blox.graph._graph import Graph
from blox.graph._inspect._display import Table
from blox.graph._inspect._summary_rows import ModuleGroup, ParamRow, collect_groups, total
from blox.graph._inspect._table import Column, Label, Row, human_bytes, number, render
from blox.params import Params

__all__ = ["summary"]


def summary(
    params: Params,
    graph: Graph | None = None,
    *,
    width: int = 100,
    shardings: Params | None = None,
) -> Table:
  """A table of `params`: one row per param, grouped by module, with totals.

  Without `graph`, rows are grouped by `path[:-1]`. With `graph`, each param
  belongs to the module bound at the longest graph path (from `graph.walk()`)
  that is a prefix of its path, and its row is named by the rest of its path
  joined by '/' (attention's `('net', 'mha', 'query', 'kernel')` is row
  `query/kernel` of the module at `('net', 'mha')`); params that no module
  owns group by `path[:-1]`. Groups come in the params' creation order. Each
  module line shows the module path and the subtotals (element count and
  bytes) of all its params; with `graph` it also shows the module's `repr`
  (type and configuration) and, for a module with floating-point params whose
  compute dtype is known, `compute <dtype>`: the module's own `dtype`
  attribute (the blox.nn layers' `dtype` argument), else its policy's
  `compute_dtype` (`Module.policy()`); without either the dtype follows the
  inputs, which params cannot tell, and nothing is shown. Counts use thousands separators. Typed PRNG keys
  are counted by their key data (e.g. 2 uint32 words per threefry key). Long
  paths, shapes and arguments are cut with `...` so that lines fit in
  `width` (numbers are never cut, so a very small `width` can still be
  exceeded).

  A param with sharding metadata (`blox.params.SHARDING`, mesh or logical
  axis names) shows it in a last `sharding` column (`embed,mlp`; `-` is an
  unsharded dim, `(a,b)` a dim over several axes). With `shardings`, the
  `Params`-shaped tree of `NamedSharding`s that
  `blox.parallel.param_shardings(params, mesh, rules)` returns, the column
  also shows the mesh axes each param resolved to (`embed,mlp -> data,model`;
  a stacked param's leading layer axes show as `-`). Tables of params without
  sharding metadata (and without `shardings`) have no such column.

  Args:
    params: concrete or abstract params (e.g. `jax.eval_shape` output).
    graph: a graph node (usually the root) whose modules own and label the
      groups.
    width: the longest line allowed, in characters.
    shardings: the params' `NamedSharding`s, shaped like `params`, to show
      the resolved mesh axes.

  Returns:
    The table as one string, without a trailing newline: a `Table`, a `str`
    that Jupyter displays as an HTML table of the same rows (unclipped).

  Raises:
    TypeError: `params` or `shardings` is not a `Params`, or `graph` is not a
      `Graph`.
    ValueError: `shardings` lacks a param of `params` or holds something
      other than a `NamedSharding` for one.
  """
  if not isinstance(params, Params):
    raise TypeError(
        f"summary() takes Params, got {type(params).__name__}; wrap the arrays in"
        " a blox Params first."
    )
  if graph is not None and not isinstance(graph, Graph):
    raise TypeError(
        f"summary(params, graph): graph must be a Graph node, got"
        f" {type(graph).__name__}; pass the root Graph the modules were built on."
    )
  if shardings is not None and not isinstance(shardings, Params):
    raise TypeError(
        f"summary(params, shardings=...): shardings must be a Params of NamedShardings,"
        f" got {type(shardings).__name__}; pass what"
        " blox.parallel.param_shardings(params, mesh, rules) returns."
    )
  groups = collect_groups(params, graph, shardings)
  return _table(groups, width, is_locked=params.is_locked)


# The text columns are cut in this order, each down to its floor: name,
# sharding, shape, dtype; the train column and the numbers never are.
_COLUMNS = (
    Column("module / param", floor=12, rank=0),
    Column("shape", floor=8, rank=2),
    Column("dtype", floor=7, rank=3),
    Column("train"),
    Column("count", numeric=True),
    Column("bytes", numeric=True),
)
# Shown last, only when some param has sharding metadata (or a resolved spec).
_SHARDING = Column("sharding", floor=12, rank=1)


def _table(groups: Sequence[ModuleGroup], width: int, *, is_locked: bool) -> Table:
  """The summary table of `groups`: a line per module (path, label, compute
  dtype when known, subtotals), its param rows below it, then the totals."""
  members = [row for group in groups for row in group.members]
  sharded = any(row.sharding for row in members)
  columns = (*_COLUMNS, _SHARDING) if sharded else _COLUMNS
  extra: tuple[str, ...] = ("",) if sharded else ()

  def spanning(label: Label, sizes: tuple[int, int]) -> Row:
    return Row(0, (label.text, "", "", "", number(sizes[0]), number(sizes[1]), *extra), label)

  def param_row(row: ParamRow) -> Row:
    return Row(1, (
        row.name, row.shape, row.dtype, "yes" if row.trainable else "no",
        number(row.count), number(row.nbytes), *((row.sharding,) if sharded else ()),
    ))

  body: list[Row] = []
  for group in groups:
    where = "/".join(group.path) if group.path else "(top level)"
    tag = None if group.compute is None else f"compute {group.compute}"
    subtotal = group.subtotal if group.subtotal is not None else total(group.members)
    body.append(spanning(Label(where, group.label, tag), subtotal))
    body.extend(param_row(row) for row in group.members)
  totals = {
      "trainable": total(r for r in members if r.trainable),
      "non-trainable": total(r for r in members if not r.trainable),
      "total": total(members),
  }
  footer = [spanning(Label(name), sizes) for name, sizes in totals.items()]
  state = "locked" if is_locked else "unlocked"
  size = (
      f"size: {human_bytes(totals['total'][1])} (trainable {human_bytes(totals['trainable'][1])},"
      f" non-trainable {human_bytes(totals['non-trainable'][1])})"
  )
  title = f"{len(members):,} params in {len(groups):,} modules, {state}"
  return render(columns, title, body, footer, width, after=(size,))
