"""`Params` as an HTML table, for Jupyter's rich display (`Params._repr_html_`).

One row per param: path, shape, dtype, trainable, element count, bytes, and
the `SHARDING` metadata when any param has some; never a value. Every piece
of text is escaped with `html.escape`. The plain-text `repr` is unchanged.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.params import Param, Params
  >>> page = Params({('net', 'w'): Param(jnp.full((2, 3), 7.0))})._repr_html_()
  >>> '<td>net/w</td>' in page, '7.0' in page
  (True, False)
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

from blox.params._measure import measure
from blox.params._metadata import SHARDING

if TYPE_CHECKING:
  from blox.params._container import Params

__all__ = ["params_html"]


def _row(cells: Sequence[str], tag: str = "td") -> str:
  return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def params_html(params: Params) -> str:
  """The HTML table of `params`' paths, shapes, dtypes, flags and sizes."""
  entries = list(params.items())
  sharded = any(param.metadata.get(SHARDING) is not None for _, param in entries)
  headings = ["path", "shape", "dtype", "trainable", "count", "bytes"]
  if sharded:
    headings.append("sharding")
  rows = []
  total_count = total_bytes = 0
  for path, param in entries:
    shape, dtype, count, nbytes = measure(param.value)
    total_count += count
    total_bytes += nbytes
    cells = [
        "/".join(path), f"[{', '.join(map(str, shape))}]", str(dtype),
        "yes" if param.trainable else "no", f"{count:,}", f"{nbytes:,}",
    ]
    if sharded:
      spec = param.metadata.get(SHARDING)
      cells.append("" if spec is None else ",".join("-" if a is None else str(a) for a in param.sharding))
    rows.append(_row(cells))
  state = "locked" if params.is_locked else "unlocked"
  caption = f"Params: {len(entries):,} params, {state}"
  footer = ["total", "", "", "", f"{total_count:,}", f"{total_bytes:,}"] + ([""] if sharded else [])
  return (
      f"<table><caption>{html.escape(caption)}</caption>"
      f"<thead>{_row(headings, 'th')}</thead>"
      f"<tbody>{''.join(rows)}</tbody>"
      f"<tfoot>{_row(footer)}</tfoot></table>"
  )
