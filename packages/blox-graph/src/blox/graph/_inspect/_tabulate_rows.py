"""Rendering `tabulate`'s rows: module calls, nested, as a fixed-width text table.

A `CallLine` per call (indented by its depth, its param lines below it) in
seven columns: call or param (`kernel (read)`, `kernel (new)`), inputs or
shape, outputs or sharding, compute dtype, element count, bytes, FLOPs. The
headings and text columns
wrap (at most a few lines, then `...`) so that every line fits the width;
numbers are never cut. `summary`'s renderer (`blox.graph._table`) supplies
the clipping and the byte units.

Example:
  >>> line = CallLine(0, 'net', 'Dense()', None, 'f32[2]', 'f32[3]', 'f32', 6, 24, 12,
  ...                 (ParamLine('w', 'f32[2,3]', '', 'read', 6, 24),))
  >>> print(render_calls([line], 80, used=1, totals=(6, 24, 12), whole=12))
  1 module calls; 1 params used, 6 (24 B)
  call / param  in / shape  out / sharding  compute  params  bytes  flops
  -----------------------------------------------------------------------
  net  Dense()  f32[2]      f32[3]          f32           6     24     12
    w (read)    f32[2,3]                                  6     24
  -----------------------------------------------------------------------
  module calls (Repeat layers x their count)              6     24     12
  whole function, compiled (XLA)                                       12
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from blox.graph._display import Table
from blox.graph._table import _ELLIPSIS, _clip, _human

__all__ = ["CallLine", "ParamLine", "render_calls"]

_GAP = "  "
_INDENT = "  "
_HEADINGS = ("call / param", "in / shape", "out / sharding", "compute", "params", "bytes", "flops")
# The narrowest each wrapped text column gets: call, inputs, outputs.
_FLOORS = (16, 10, 10)
# How many lines a wrapped cell may take before it is cut with '...'.
_MAX_LINES = 3
_TOTAL = "module calls (Repeat layers x their count)"
_WHOLE = "whole function, compiled (XLA)"


@dataclass(frozen=True)
class ParamLine:
  """A param a call read or created: its name below the module, shape, sharding."""

  name: str
  shape: str
  sharding: str
  use: str
  count: int
  nbytes: int


@dataclass(frozen=True)
class CallLine:
  """One module call: `repeat` is N for a `Repeat`'s layer (shown `x N`)."""

  depth: int
  name: str
  label: str
  repeat: int | None
  inputs: str
  outputs: str
  compute: str
  count: int
  nbytes: int
  flops: int | None
  params: tuple[ParamLine, ...] = ()


def _number(value: int | None) -> str:
  return "?" if value is None else f"{value:,}"


def _call_cells(line: CallLine) -> tuple[str, ...]:
  repeat = f" x{line.repeat}" if line.repeat is not None else ""
  return (
      f"{line.name}{repeat}{_GAP}{line.label}", line.inputs, line.outputs, line.compute,
      f"{line.count:,}", f"{line.nbytes:,}", _number(line.flops),
  )


def _param_cells(param: ParamLine) -> tuple[str, ...]:
  return (f"{param.name} ({param.use})", param.shape, param.sharding, "",
          f"{param.count:,}", f"{param.nbytes:,}", "")


# Where a line may break: after a space, a comma, a slash or an opening bracket.
_PIECES = re.compile(r"[^\s,/(\[{]*[,/(\[{]?\s*")


def _pieces(text: str) -> list[str]:
  """The unbreakable pieces of `text`; a closing ` (read)` stays with its word."""
  if not (text.endswith(")") and " (" in text):
    return [p for p in _PIECES.findall(text) if p]
  head, tail = text.rsplit(" (", 1)
  pieces = [p for p in _PIECES.findall(head) if p] or [""]
  pieces[-1] += f" ({tail}"
  return pieces


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
  """`text` in at most `_MAX_LINES` lines of at most `width`, broken after
  spaces, commas, slashes and opening brackets (a longer piece is cut), continuation
  lines indented further; what does not fit ends in `...`."""
  room = width - len(indent)
  if room < 8:
    return [_clip(indent + text, width)]
  lines: list[str] = []
  current = ""
  for piece in _pieces(text):
    limit = room if not lines else room - len(_INDENT)
    if current and len(current) + len(piece.rstrip()) > limit:
      lines.append(current.rstrip())
      current = ""
      limit = room - len(_INDENT)
    current += piece
    while len(current.rstrip()) > limit:
      lines.append(current[:limit])
      current = current[limit:]
      limit = room - len(_INDENT)
  if current.strip() or not lines:
    lines.append(current.rstrip())
  if len(lines) > _MAX_LINES:
    last, limit = lines[_MAX_LINES - 1], room - len(_INDENT)
    fits = len(last) + 1 + len(_ELLIPSIS) <= limit
    cut = f"{last} {_ELLIPSIS}" if fits else last[: limit - len(_ELLIPSIS)] + _ELLIPSIS
    lines = lines[: _MAX_LINES - 1] + [cut]
  return [indent + (line if i == 0 else _INDENT + line) for i, line in enumerate(lines)]


def _widths(rows: Sequence[tuple[int, tuple[str, ...]]], numbers: Sequence[str], width: int) -> list[int]:
  widths = [len(h) for h in _HEADINGS]
  for depth, cells in rows:
    for i, cell in enumerate(cells):
      extra = len(_INDENT) * depth if i == 0 else 0
      widths[i] = max(widths[i], len(cell) + extra)
  widths[4] = max([widths[4]] + [len(n) for n in numbers[0::3]])
  widths[5] = max([widths[5]] + [len(n) for n in numbers[1::3]])
  widths[6] = max([widths[6]] + [len(n) for n in numbers[2::3]])
  widths[0] = max(widths[0], len(_TOTAL) - sum(widths[1:4]) - 3 * len(_GAP))
  excess = sum(widths) + len(_GAP) * (len(widths) - 1) - width
  # One column at a time, the one with most room above its floor; the call
  # column's room counts half, as its paths and names wrap worst.
  while excess > 0:
    room = [widths[i] - _FLOORS[i] for i in range(3)]
    widest = max(range(3), key=lambda i: room[i] / 2 if i == 0 else room[i])
    if room[widest] <= 0:
      break
    widths[widest] -= 1
    excess -= 1
  return widths


def render_calls(
    lines: Sequence[CallLine],
    width: int,
    *,
    used: int,
    totals: tuple[int, int, int | None],
    whole: int | None,
) -> Table:
  """The table of `lines`, each text line at most `width` long where numbers allow.

  Args:
    lines: the calls, in order, each with its params.
    width: the longest line allowed, in characters.
    used: how many params the calls read or created.
    totals: `(count, bytes, FLOPs)` of the outermost calls together.
    whole: the whole function's FLOPs, compiled.
  """
  rows: list[tuple[int, tuple[str, ...]]] = []
  for line in lines:
    rows.append((line.depth, _call_cells(line)))
    rows.extend((line.depth + 1, _param_cells(p)) for p in line.params)
  count, nbytes, flops = totals
  footer = [
      (0, (_TOTAL, "", "", "", f"{count:,}", f"{nbytes:,}", _number(flops))),
      (0, (_WHOLE, "", "", "", "", "", _number(whole))),
  ]
  numbers = [cell for _, cells in rows + footer for cell in cells[4:7]]
  widths = _widths(rows, numbers, width)
  span = sum(widths[:4]) + 3 * len(_GAP)

  def layout(depth: int, cells: tuple[str, ...]) -> list[str]:
    columns = [_wrap(cells[0], widths[0], _INDENT * depth)]
    columns += [_wrap(cell, widths[i]) for i, cell in enumerate(cells[1:4], 1)]
    height = max(len(c) for c in columns)
    out = []
    for k in range(height):
      left = [f"{(c[k] if k < len(c) else ''):<{w}}" for c, w in zip(columns, widths)]
      right = [f"{(cells[i] if k == 0 else ''):>{widths[i]}}" for i in range(4, 7)]
      out.append(_GAP.join(left + right).rstrip())
    return out

  title = f"{len(lines):,} module calls; {used:,} params used, {count:,} ({_human(nbytes)})"
  rule = "-" * (sum(widths) + len(_GAP) * (len(widths) - 1))
  text = [_clip(title, width), *layout(0, _HEADINGS), rule]
  for depth, cells in rows:
    text.extend(layout(depth, cells))
  text.append(rule)
  for _, cells in footer:
    numbers_text = _GAP.join(f"{cells[i]:>{widths[i]}}" for i in range(4, 7))
    text.append(f"{_clip(cells[0], span):<{span}}{_GAP}{numbers_text}".rstrip())
  return Table("\n".join(text), _HEADINGS, rows, (title,), footer)
