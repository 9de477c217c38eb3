"""A griffe extension: `Example:` sections render as examples.

blox docstrings head their doctests `Example:` (one example) as well as
`Examples:`. griffe's Google parser knows only `Examples:` and would render
`Example:` as an admonition, its `>>>` lines as plain Markdown; this renames
the section before the docstring is parsed. The text after the colon, if
any, stays the section's title.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:", flags=re.M)


class ExampleSections(griffe.Extension):
  """Renames `Example:` section headers to `Examples:`."""

  def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
    if obj.docstring is not None:
      obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
