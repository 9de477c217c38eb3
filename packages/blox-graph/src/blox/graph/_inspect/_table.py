"""The one table renderer of `summary` and `tabulate`: rows of cells as fixed-width text.

A table is `Column`s and `Row`s. A column is text (left-aligned, cut or
wrapped to fit) or numbers (right-aligned, never cut: a clipped count would
be a wrong count). A row holds one unclipped cell per column (what the HTML
display shows), indented by its depth in the first column; or a `Label`
spanning the text columns before the first number column (a module line of
`summary`, a total). When the lines are too long, text columns give up
characters down to their floor: columns of a lower `rank` first, and among
columns of one rank the one with the most room above its floor (its room
times its `weight`). A cut cell ends in `...`; a column whose `lines` is
more than one wraps its cells first (after spaces, commas, slashes and
opening brackets) onto at most that many lines.

Example:
  >>> columns = (Column('name', floor=4), Column('count', numeric=True))
  >>> table = render(columns, '2 rows', [Row(0, ('a_rather_long_name', '1,234')),
  ...                                    Row(1, ('b', '5'))],
  ...                [Row(0, ('total', '1,239'), Label('total'))], width=14)
  >>> print(table)
  2 rows
  name     count
  --------------
  a_ra...  1,234
    b          5
  --------------
  total    1,239
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from blox.graph._inspect._display import Table

__all__ = [
    "ELLIPSIS", "GAP", "INDENT", "Column", "Label", "Row", "clip", "clip_left", "human_bytes",
    "number", "render", "wrap",
]

GAP = "  "  # between columns
INDENT = "  "  # per depth level, and for the continuation lines of a wrapped cell
ELLIPSIS = "..."


@dataclass(frozen=True)
class Column:
  """One column: its heading and how it may be fitted.

  Attributes:
    heading: the column's heading.
    numeric: numbers: right-aligned and never cut.
    floor: the narrowest a text column may be cut to; None: never cut.
    rank: text columns of a lower rank are cut first.
    weight: how a column's room above its floor counts against the other
      columns of its rank (0.5: cut it half as eagerly).
    lines: how many lines a cell may wrap onto; 1 cuts it at the end.
  """

  heading: str
  numeric: bool = False
  floor: int | None = None
  rank: int = 0
  weight: float = 1.0
  lines: int = 1


@dataclass(frozen=True)
class Label:
  """The text of a row spanning the text columns: `head` (a path) first, cut
  at its start, as the end of a path says most; then `tail` (a short tag)
  whole or not at all; `body` (a configuration) between them, cut at its end
  to fill the room left."""

  head: str
  body: str | None = None
  tail: str | None = None

  @property
  def text(self) -> str:
    """The whole label, unclipped."""
    return GAP.join(part for part in (self.head, self.body, self.tail) if part is not None)

  def fit(self, width: int) -> str:
    """The label cut to `width` characters, the head kept first."""
    head = clip_left(self.head, width)
    room = width - len(head) - len(GAP)
    tail = ""
    if self.tail is not None:
      if room < len(self.tail):
        return head
      room -= len(self.tail) + len(GAP)
      tail = f"{GAP}{self.tail}"
    if self.body is None or room <= len(ELLIPSIS):
      return f"{head}{tail}"
    return f"{head}{GAP}{clip(self.body, room)}{tail}"


@dataclass(frozen=True)
class Row:
  """One row: `cells` unclipped, one per column; with `label`, the label is
  shown across the text columns before the first number column instead of
  their cells (which then hold the label's text and blanks)."""

  depth: int
  cells: tuple[str, ...]
  label: Label | None = None


def number(value: int | None) -> str:
  """A count with thousands separators; `?` when unknown."""
  return "?" if value is None else f"{value:,}"


def human_bytes(nbytes: int) -> str:
  """Bytes in binary units, e.g. `4.0 MiB`."""
  size = float(nbytes)
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if size < 1024 or unit == "TiB":
      return f"{nbytes} B" if unit == "B" else f"{size:.1f} {unit}"
    size /= 1024
  raise AssertionError("unreachable")


def clip(text: str, width: int) -> str:
  """`text`, cut at the end to `width` characters with a visible ellipsis."""
  if len(text) <= width:
    return text
  if width <= len(ELLIPSIS):
    return text[:width]
  return text[: width - len(ELLIPSIS)] + ELLIPSIS


def clip_left(text: str, width: int) -> str:
  """`text`, cut at the start to `width` characters with a visible ellipsis."""
  if len(text) <= width:
    return text
  if width <= len(ELLIPSIS):
    return text[len(text) - width :]
  return ELLIPSIS + text[len(text) - width + len(ELLIPSIS) :]


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


def wrap(text: str, width: int, indent: str = "", lines: int = 1) -> list[str]:
  """`indent + text` in at most `lines` lines of at most `width`.

  One line: cut at the end. More: broken after spaces, commas, slashes and
  opening brackets (a longer piece is cut), continuation lines indented
  further; what does not fit ends in `...`.
  """
  room = width - len(indent)
  if lines <= 1 or room < 8:
    return [clip(indent + text, width)]
  out: list[str] = []
  current = ""
  for piece in _pieces(text):
    limit = room if not out else room - len(INDENT)
    if current and len(current) + len(piece.rstrip()) > limit:
      out.append(current.rstrip())
      current = ""
      limit = room - len(INDENT)
    current += piece
    while len(current.rstrip()) > limit:
      out.append(current[:limit])
      current = current[limit:]
      limit = room - len(INDENT)
  if current.strip() or not out:
    out.append(current.rstrip())
  if len(out) > lines:
    last, limit = out[lines - 1], room - len(INDENT)
    fits = len(last) + 1 + len(ELLIPSIS) <= limit
    cut = f"{last} {ELLIPSIS}" if fits else last[: limit - len(ELLIPSIS)] + ELLIPSIS
    out = out[: lines - 1] + [cut]
  return [indent + (line if i == 0 else INDENT + line) for i, line in enumerate(out)]


def _fit(columns: Sequence[Column], widths: list[int], width: int) -> list[int]:
  """`widths` with text columns cut, by rank, until the lines fit `width`."""
  excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
  for rank in sorted({c.rank for c in columns if c.floor is not None}):
    group = [i for i, c in enumerate(columns) if c.floor is not None and c.rank == rank]
    while excess > 0:
      room = {i: widths[i] - (columns[i].floor or 0) for i in group}
      widest = max(group, key=lambda i: room[i] * columns[i].weight)
      if room[widest] <= 0:
        break
      widths[widest] -= 1
      excess -= 1
  return widths


def _widths(columns: Sequence[Column], rows: Sequence[Row], span: int, width: int) -> list[int]:
  """The width of each column, the first grown so that labels fit their span."""
  widths = [len(c.heading) for c in columns]
  for row in rows:
    for i, cell in enumerate(row.cells):
      if row.label is None or i >= span:
        extra = len(INDENT) * row.depth if i == 0 else 0
        widths[i] = max(widths[i], len(cell) + extra)
  spanned = sum(widths[1:span]) + len(GAP) * (span - 1)
  labels = [len(row.label.text) for row in rows if row.label is not None]
  widths[0] = max([widths[0]] + [n - spanned for n in labels])
  return _fit(columns, widths, width)


def _layout(columns: Sequence[Column], widths: list[int], span: int, row: Row) -> list[str]:
  """The text lines of one row."""
  def aligned(i: int, cell: str) -> str:
    return f"{cell:>{widths[i]}}" if columns[i].numeric else f"{cell:<{widths[i]}}"

  if row.label is not None:
    room = sum(widths[:span]) + len(GAP) * (span - 1)
    rest = [aligned(i, row.cells[i] if columns[i].numeric else clip(row.cells[i], widths[i]))
            for i in range(span, len(columns))]
    return [GAP.join([f"{row.label.fit(room):<{room}}", *rest]).rstrip()]
  pieces = [
      [cell] if column.numeric
      else wrap(cell, widths[i], INDENT * row.depth if i == 0 else "", column.lines)
      for i, (column, cell) in enumerate(zip(columns, row.cells))
  ]
  height = max(len(piece) for piece in pieces)
  return [
      GAP.join(aligned(i, piece[k] if k < len(piece) else "") for i, piece in enumerate(pieces)).rstrip()
      for k in range(height)
  ]


def render(
    columns: Sequence[Column],
    title: str,
    body: Sequence[Row],
    footer: Sequence[Row],
    width: int,
    *,
    after: Sequence[str] = (),
) -> Table:
  """The table, each line at most `width` long where the numbers allow.

  Args:
    columns: the columns, at least one text column first.
    title: the line above the headings (cut to `width`).
    body: the rows, in order.
    footer: the rows of totals, below the body's closing rule.
    width: the longest line allowed, in characters.
    after: lines below the table (cut to `width`).

  Returns:
    The text as a `Table`, keeping the unclipped cells for its HTML display;
    its notes are `title` and `after`.
  """
  span = next((i for i, c in enumerate(columns) if c.numeric), len(columns))
  headings = Row(0, tuple(c.heading for c in columns))
  widths = _widths(columns, [headings, *body, *footer], span, width)
  rule = "-" * (sum(widths) + len(GAP) * (len(widths) - 1))
  lines = [clip(title, width), *_layout(columns, widths, span, headings), rule]
  for row in body:
    lines.extend(_layout(columns, widths, span, row))
  lines.append(rule)
  for row in footer:
    lines.extend(_layout(columns, widths, span, row))
  lines.extend(clip(line, width) for line in after)
  return Table(
      "\n".join(lines),
      headings.cells,
      [(row.depth, row.cells) for row in body],
      (title, *after),
      [(row.depth, row.cells) for row in footer],
  )
