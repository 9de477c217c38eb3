"""Rendering a params summary: module groups as a fixed-width text table.

`render_table` lays out the `ModuleGroup`s of `blox.graph._summary_rows`: a
heading, a line per module (path, label, compute dtype when known,
subtotals) with its param rows indented below, and the trainable,
non-trainable and overall totals. When any param row has a sharding text
(`ParamRow.sharding`), a last `sharding` column shows it; otherwise the table
has no such column. Text columns are cut with `...` to fit the width; numbers
never are.

Example:
  >>> from blox.graph._summary_rows import ModuleGroup, ParamRow
  >>> rows = (ParamRow('w', '[2]', 'float32', True, 2, 8),)
  >>> print(render_table([ModuleGroup(('net',), None, rows)], 60, is_locked=True))
  ... # doctest: +NORMALIZE_WHITESPACE
  1 params in 1 modules, locked
  module / param  shape  dtype    train  count  bytes
  ---------------------------------------------------
  net                                        2      8
    w             [2]    float32  yes        2      8
  ---------------------------------------------------
  trainable                                  2      8
  non-trainable                              0      0
  total                                      2      8
  size: 8 B (trainable 8 B, non-trainable 0 B)
"""

from __future__ import annotations

from collections.abc import Sequence

from blox.graph._summary_rows import ModuleGroup, ParamRow, total
from blox.params import Path

__all__ = ["render_table", "table_cells"]

_GAP = "  "  # between columns
_INDENT = "  "  # param rows under their module line
_ELLIPSIS = "..."
_HEADINGS = ("module / param", "shape", "dtype", "train", "count", "bytes")
# Shown last, only when some param has sharding metadata (or a resolved spec).
_SHARDING = "sharding"
# The columns cut to fit the width, in this order, and the narrowest each
# gets: name, sharding, shape, dtype.
_FLOORS = ((0, 12), (6, 12), (1, 8), (2, 7))


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


def _module_text(
    path: Path, label: str | None, width: int | None = None, compute: str | None = None
) -> str:
  """`path  Type(arguments)  compute bfloat16`, cut to `width`.

  The path is kept first, then the compute dtype, then as much of the label
  as fits between them.
  """
  where = "/".join(path) if path else "(top level)"
  tag = None if compute is None else f"compute {compute}"
  if width is None:
    return _GAP.join(part for part in (where, label, tag) if part is not None)
  where = _clip_left(where, width)
  room = width - len(where) - len(_GAP)
  if tag is not None:
    if room < len(tag):
      return where
    room -= len(tag) + len(_GAP)
    tail = f"{_GAP}{tag}"
  else:
    tail = ""
  if label is None or room <= len(_ELLIPSIS):
    return f"{where}{tail}"
  return f"{where}{_GAP}{_clip(label, room)}{tail}"


def _fit(widths: list[int], width: int) -> list[int]:
  """Shrinks the name, then the sharding, shape and dtype columns to fit `width`.

  The numeric columns are never cut: a clipped count would be a wrong count.
  """
  widths = list(widths)
  excess = sum(widths) + len(_GAP) * (len(widths) - 1) - width
  for column, floor in _FLOORS:
    if excess <= 0:
      break
    if column >= len(widths):
      continue
    cut = min(excess, max(widths[column] - floor, 0))
    widths[column] -= cut
    excess -= cut
  return widths


def _column_widths(
    groups: Sequence[ModuleGroup], totals: dict[str, tuple[int, int]], width: int
) -> list[int]:
  """The width of each column, the name column grown to give module lines room."""
  rows = [row for group in groups for row in group.members]
  counts = [r.count for r in rows] + [count for count, _ in totals.values()]
  sizes = [r.nbytes for r in rows] + [nbytes for _, nbytes in totals.values()]
  widths = [
      max([len(h) for h in (_HEADINGS[0], *totals)] + [len(_INDENT + r.name) for r in rows]),
      max([len(_HEADINGS[1])] + [len(r.shape) for r in rows]),
      max([len(_HEADINGS[2])] + [len(r.dtype) for r in rows]),
      len(_HEADINGS[3]),
      max(len(_HEADINGS[4]), *(len(f"{n:,}") for n in counts)),
      max(len(_HEADINGS[5]), *(len(f"{n:,}") for n in sizes)),
  ]
  if any(r.sharding for r in rows):
    widths.append(max([len(_SHARDING)] + [len(r.sharding) for r in rows]))
  # A module line spans the text columns (name to train), then the numbers.
  spanned = sum(widths[1:4]) + 3 * len(_GAP)
  wanted = max(
      (len(_module_text(g.path, g.label, compute=g.compute)) for g in groups), default=0
  )
  widths[0] = max(widths[0], wanted - spanned)
  return _fit(widths, width)


def render_table(groups: Sequence[ModuleGroup], width: int, *, is_locked: bool) -> str:
  """The summary table of `groups`, lines at most `width` long where the
  numbers allow, without a trailing newline.

  Args:
    groups: the module groups, in the order to show them.
    width: the longest line allowed, in characters.
    is_locked: whether the params are locked, said in the first line.
  """
  rows = [row for group in groups for row in group.members]
  totals = {
      "trainable": total(r for r in rows if r.trainable),
      "non-trainable": total(r for r in rows if not r.trainable),
      "total": total(rows),
  }
  widths = _column_widths(groups, totals, width)
  sharded = len(widths) > len(_HEADINGS)
  label_width = sum(widths[:4]) + 3 * len(_GAP)

  def numbers(count: int, nbytes: int) -> str:
    return f"{count:>{widths[4]},}{_GAP}{nbytes:>{widths[5]},}"

  def line(cells: Sequence[str]) -> str:
    left = [f"{cell:<{w}}" for cell, w in zip(cells[:4], widths[:4])]
    right = [f"{cell:>{w}}" for cell, w in zip(cells[4:6], widths[4:6])]
    last = [f"{cell:<{w}}" for cell, w in zip(cells[6:], widths[6:])]
    return _GAP.join(left + right + last)

  def param_line(row: ParamRow) -> str:
    return line([
        _clip(_INDENT + row.name, widths[0]), _clip(row.shape, widths[1]),
        _clip(row.dtype, widths[2]), "yes" if row.trainable else "no",
        f"{row.count:,}", f"{row.nbytes:,}", *([_clip(row.sharding, widths[6])] if sharded else []),
    ])

  rule = "-" * (sum(widths) + len(_GAP) * (len(widths) - 1))
  state = "locked" if is_locked else "unlocked"
  lines = [
      _clip(f"{len(rows):,} params in {len(groups):,} modules, {state}", width),
      line((*_HEADINGS, _SHARDING) if sharded else _HEADINGS),
      rule,
  ]
  for group in groups:
    text = _module_text(group.path, group.label, label_width, group.compute)
    subtotal = group.subtotal if group.subtotal is not None else total(group.members)
    lines.append(f"{text:<{label_width}}{_GAP}{numbers(*subtotal)}")
    lines.extend(param_line(row) for row in group.members)
  lines.append(rule)
  for name, (count, nbytes) in totals.items():
    lines.append(f"{name:<{label_width}}{_GAP}{numbers(count, nbytes)}")
  lines.append(_clip(
      f"size: {_human(totals['total'][1])} (trainable {_human(totals['trainable'][1])},"
      f" non-trainable {_human(totals['non-trainable'][1])})",
      width,
  ))
  return "\n".join(l.rstrip() for l in lines)


def table_cells(
    groups: Sequence[ModuleGroup],
) -> tuple[tuple[str, ...], list[tuple[int, tuple[str, ...]]], list[tuple[int, tuple[str, ...]]]]:
  """The rows `render_table` lays out, unclipped, for the HTML display:
  `(headings, rows, footer)`, each row `(depth, cells)`."""
  rows = [row for group in groups for row in group.members]
  sharded = any(r.sharding for r in rows)
  headings = (*_HEADINGS, _SHARDING) if sharded else _HEADINGS
  extra: tuple[str, ...] = ("",) if sharded else ()
  body: list[tuple[int, tuple[str, ...]]] = []
  for group in groups:
    count, nbytes = group.subtotal if group.subtotal is not None else total(group.members)
    body.append((0, (_module_text(group.path, group.label, compute=group.compute),
                     "", "", "", f"{count:,}", f"{nbytes:,}", *extra)))
    body.extend((1, (
        row.name, row.shape, row.dtype, "yes" if row.trainable else "no",
        f"{row.count:,}", f"{row.nbytes:,}", *((row.sharding,) if sharded else ()),
    )) for row in group.members)
  footer = [
      (0, (name, "", "", "", f"{count:,}", f"{nbytes:,}", *extra))
      for name, (count, nbytes) in (
          ("trainable", total(r for r in rows if r.trainable)),
          ("non-trainable", total(r for r in rows if not r.trainable)),
          ("total", total(rows)),
      )
  ]
  return headings, body, footer
