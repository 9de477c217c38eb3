"""`summary`: a table of a model's params, grouped by module, with totals.

One row per param (name, shape, dtype, trainable or not, element count,
bytes) under a line per module: the module path, and with a graph the module's
type and constructor arguments, plus the module's subtotals. Totals for the
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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.graph.graph import Graph
from blox.params import Params, Path

__all__ = ["summary"]

_GAP = "  "  # between columns
_INDENT = "  "  # param rows under their module line
_ELLIPSIS = "..."


@dataclass(frozen=True)
class _Row:
  """What the table shows of one param."""

  path: Path
  shape: str
  dtype: str
  trainable: bool
  count: int
  nbytes: int


def _measure(value: Any) -> tuple[tuple[int, ...], Any, int, int]:
  """`(shape, dtype, element count, bytes)` of an array or abstract array.

  A typed PRNG key array counts its key data: a threefry key is one key but
  two uint32 words, and the words are what occupies memory.
  """
  shape = tuple(int(d) for d in getattr(value, "shape", np.shape(value)))
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    dtype = np.asarray(value).dtype
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    # Key arrays always carry shape and dtype, and eval_shape takes concrete
    # and abstract ones alike.
    data = jax.eval_shape(jax.random.key_data, value)
    count = math.prod(data.shape)
    return shape, dtype, count, count * np.dtype(data.dtype).itemsize
  count = math.prod(shape)
  return shape, dtype, count, count * np.dtype(dtype).itemsize


def _total(rows: Iterable[_Row]) -> tuple[int, int]:
  """`(element count, bytes)` summed over `rows`."""
  count = nbytes = 0
  for row in rows:
    count += row.count
    nbytes += row.nbytes
  return count, nbytes


def _clip(text: str, width: int) -> str:
  """`text`, cut at the end to `width` characters with a visible ellipsis."""
  if len(text) <= width:
    return text
  if width <= len(_ELLIPSIS):
    return text[:width]
  return text[: width - len(_ELLIPSIS)] + _ELLIPSIS


def _clip_left(text: str, width: int) -> str:
  """`text`, cut at the start: the end of a path says most about it."""
  if len(text) <= width:
    return text
  if width <= len(_ELLIPSIS):
    return text[len(text) - width :]
  return _ELLIPSIS + text[len(text) - width + len(_ELLIPSIS) :]


def _human(nbytes: int) -> str:
  """Bytes in binary units, e.g. `4.0 MiB`."""
  size = float(nbytes)
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if size < 1024 or unit == "TiB":
      return f"{nbytes} B" if unit == "B" else f"{size:.1f} {unit}"
    size /= 1024
  raise AssertionError("unreachable")


def _module_labels(graph: Graph | None) -> dict[Path, str]:
  """Module path to `Type(arguments)`, for every module under `graph`."""
  if graph is None:
    return {}
  return {path: repr(module) for path, module in graph.walk()}


def _module_text(module_path: Path, label: str | None, width: int | None = None) -> str:
  """`path  Type(arguments)`, cut to `width`: the path first, then the label."""
  where = "/".join(module_path) if module_path else "(top level)"
  if width is None:
    return where if label is None else f"{where}{_GAP}{label}"
  where = _clip_left(where, width)
  room = width - len(where) - len(_GAP)
  if label is None or room <= len(_ELLIPSIS):
    return where
  return f"{where}{_GAP}{_clip(label, room)}"


def _fit(widths: list[int], width: int) -> list[int]:
  """Shrinks the name, then the shape, then the dtype column to fit `width`.

  The numeric columns are never cut: a clipped count would be a wrong count.
  """
  floors = [12, 8, 7]  # name, shape, dtype
  widths = list(widths)
  excess = sum(widths) + len(_GAP) * (len(widths) - 1) - width
  for column, floor in enumerate(floors):
    if excess <= 0:
      break
    cut = min(excess, max(widths[column] - floor, 0))
    widths[column] -= cut
    excess -= cut
  return widths


def summary(params: Params, graph: Graph | None = None, *, width: int = 100) -> str:
  """A table of `params`: one row per param, grouped by module, with totals.

  Rows are grouped by module path (`path[:-1]`), in the params' creation
  order. Each module line shows the module path and the module's subtotals
  (element count and bytes); with `graph` it also shows the module's type and
  constructor arguments, found by `graph.walk()`. Counts use thousands
  separators. Typed PRNG keys are counted by their key data (e.g. 2 uint32
  words per threefry key). Long paths, shapes and arguments are cut with
  `...` so that lines fit in `width` (numbers are never cut, so a very small
  `width` can still be exceeded).

  Args:
    params: concrete or abstract params (e.g. `jax.eval_shape` output).
    graph: a graph node (usually the root) whose modules label the groups.
    width: the longest line allowed, in characters.

  Returns:
    The table as one string, without a trailing newline.
  """
  if not isinstance(params, Params):
    raise TypeError(f"summary() takes Params, got {type(params).__name__}.")
  if graph is not None and not isinstance(graph, Graph):
    raise TypeError(
        f"summary(params, graph): graph must be a Graph node, got {type(graph).__name__}."
    )
  rows: list[_Row] = []
  for path, param in params.items():
    shape, dtype, count, nbytes = _measure(param.value)
    rows.append(
        _Row(path, f"[{', '.join(map(str, shape))}]", str(dtype), param.trainable, count, nbytes)
    )
  groups: dict[Path, list[_Row]] = {}
  for row in rows:
    groups.setdefault(row.path[:-1], []).append(row)
  labels = _module_labels(graph)

  totals = {
      "trainable": _total(r for r in rows if r.trainable),
      "non-trainable": _total(r for r in rows if not r.trainable),
      "total": _total(rows),
  }
  counts = [r.count for r in rows] + [t[0] for t in totals.values()]
  sizes = [r.nbytes for r in rows] + [t[1] for t in totals.values()]
  headings = ["module / param", "shape", "dtype", "train", "count", "bytes"]
  widths = [
      max([len(h) for h in (headings[0], *totals)] + [len(_INDENT + r.path[-1]) for r in rows]),
      max([len(headings[1])] + [len(r.shape) for r in rows]),
      max([len(headings[2])] + [len(r.dtype) for r in rows]),
      len(headings[3]),
      max(len(headings[4]), *(len(f"{n:,}") for n in counts)),
      max(len(headings[5]), *(len(f"{n:,}") for n in sizes)),
  ]
  # A module line spans the text columns (name to train), then the numbers;
  # the name column grows (up to `width`) to give module lines room.
  spanned = sum(widths[1:4]) + 3 * len(_GAP)
  wanted = max(len(_module_text(path, labels.get(path))) for path in groups) if groups else 0
  widths[0] = max(widths[0], wanted - spanned)
  widths = _fit(widths, width)
  label_width = widths[0] + spanned

  def numbers(count: int, nbytes: int) -> str:
    return f"{count:>{widths[4]},}{_GAP}{nbytes:>{widths[5]},}"

  def line(cells: Sequence[str]) -> str:
    left = [f"{cell:<{w}}" for cell, w in zip(cells[:4], widths[:4])]
    right = [f"{cell:>{w}}" for cell, w in zip(cells[4:], widths[4:])]
    return _GAP.join(left + right)

  def module_line(module_path: Path, count: int, nbytes: int) -> str:
    text = _module_text(module_path, labels.get(module_path), label_width)
    return f"{text:<{label_width}}{_GAP}{numbers(count, nbytes)}"

  rule = "-" * (sum(widths) + len(_GAP) * (len(widths) - 1))
  state = "locked" if params.is_locked else "unlocked"
  lines = [
      _clip(f"{len(rows):,} params in {len(groups):,} modules, {state}", width),
      line(headings),
      rule,
  ]
  for module_path, members in groups.items():
    lines.append(module_line(module_path, *_total(members)))
    for r in members:
      lines.append(line([
          _clip(_INDENT + r.path[-1], widths[0]), _clip(r.shape, widths[1]),
          _clip(r.dtype, widths[2]), "yes" if r.trainable else "no",
          f"{r.count:,}", f"{r.nbytes:,}",
      ]))
  lines.append(rule)
  for name, (count, nbytes) in totals.items():
    lines.append(f"{name:<{label_width}}{_GAP}{numbers(count, nbytes)}")
  lines.append(_clip(
      f"size: {_human(totals['total'][1])} (trainable {_human(totals['trainable'][1])},"
      f" non-trainable {_human(totals['non-trainable'][1])})",
      width,
  ))
  return "\n".join(l.rstrip() for l in lines)
