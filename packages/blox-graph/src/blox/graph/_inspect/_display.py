"""`Table`: the text of a table (a `str`) that Jupyter shows as an HTML table.

`summary` and `tabulate` return one. It is the plain-text table itself, so
printing it, comparing it or writing it to a file work as with any string;
it also keeps the rows it was made of, unclipped, and its `_repr_html_`
renders them as an HTML table, each piece of text escaped with
`html.escape`. A row's depth indents its first cell.

Example:
  >>> table = Table('w  [2]', ('param', 'shape'), ((0, ('w', '[2]')),), ('1 param',))
  >>> print(table)
  w  [2]
  >>> table._repr_html_()  # doctest: +ELLIPSIS
  '<table><caption>1 param</caption><thead><tr><th>param</th><th>shape</th></tr>...'
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["Table"]

Row = tuple[int, tuple[str, ...]]


class Table(str):
  """A table's text, with its rows kept for the HTML display (`_repr_html_`).

  Attributes:
    headings: the column headings.
    rows: `(depth, cells)` per row, in order; the cells are unclipped.
    notes: lines said above the table (the first is the caption) and below.
    footer: `(depth, cells)` rows of totals, after the body.
  """

  headings: tuple[str, ...]
  rows: tuple[Row, ...]
  notes: tuple[str, ...]
  footer: tuple[Row, ...]

  def __new__(
      cls,
      text: str,
      headings: Sequence[str],
      rows: Sequence[Row],
      notes: Sequence[str] = (),
      footer: Sequence[Row] = (),
  ) -> Table:
    table = super().__new__(cls, text)
    table.headings = tuple(headings)
    table.rows = tuple((depth, tuple(cells)) for depth, cells in rows)
    table.notes = tuple(notes)
    table.footer = tuple((depth, tuple(cells)) for depth, cells in footer)
    return table

  def _repr_html_(self) -> str:
    def row(depth: int, cells: Sequence[str], tag: str = "td") -> str:
      out = []
      for i, cell in enumerate(cells):
        style = f' style="padding-left:{depth * 1.5 + 0.3:g}em"' if i == 0 and depth else ""
        align = ' align="right"' if _numeric(cell) else ""
        out.append(f"<{tag}{style}{align}>{html.escape(cell)}</{tag}>")
      return "<tr>" + "".join(out) + "</tr>"

    caption = f"<caption>{html.escape(self.notes[0])}</caption>" if self.notes else ""
    after = "".join(f"<p>{html.escape(note)}</p>" for note in self.notes[1:])
    return (
        f"<table>{caption}"
        f"<thead>{row(0, self.headings, 'th')}</thead>"
        f"<tbody>{''.join(row(d, c) for d, c in self.rows)}</tbody>"
        f"<tfoot>{''.join(row(d, c) for d, c in self.footer)}</tfoot></table>{after}"
    )

  def __reduce__(self) -> tuple[object, ...]:
    # Pickled and copied as the table it is, rows and all.
    return (Table, (str(self), self.headings, self.rows, self.notes, self.footer))


def _numeric(cell: str) -> bool:
  return bool(cell) and cell.replace(",", "").replace(" ", "").replace("x", "").isdigit()
