"""The Python blocks of the READMEs and docs run as written.

Blocks of one document run in order in one namespace (later blocks use what
earlier ones defined), in a temporary folder so that files they write vanish.
Every page under docs/ is picked up; each README and each guide must hold at
least one block.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = [
    "README.md",
    "packages/blox/README.md",
    "packages/blox-params/README.md",
    "packages/blox-graph/README.md",
    "packages/blox-nn/README.md",
    "packages/blox-parallel/README.md",
    "packages/blox-models/README.md",
]
PAGES = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").rglob("*.md"))
DOCUMENTS = READMES + PAGES
# A guide another change has yet to write holds only this line.
STUB = "This page is being written."


def python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def must_have_blocks(document: str, text: str) -> bool:
  """READMEs and guides teach by example; the home page and reference need not."""
  if document in READMES:
    return True
  return document.startswith("docs/guides/") and text.strip() != STUB


def test_docs_pages_are_found() -> None:
  assert "docs/guides/optax.md" in PAGES
  assert "docs/guides/getting-started.md" in PAGES


@pytest.mark.slow  # every guide and README, end to end: `pytest -m slow`
@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_blocks_run(document: str, tmp_path: Path) -> None:
  text = (ROOT / document).read_text()
  blocks = python_blocks(text)
  if not blocks:
    assert not must_have_blocks(document, text), f"{document} has no runnable python block"
    return
  namespace: dict[str, object] = {"__name__": "__docs__"}
  previous = os.getcwd()
  os.chdir(tmp_path)
  try:
    # A page may set a mesh for the rest of itself (`jax.set_mesh(mesh)` as a
    # global setter); it ends with the page, as it would with the program.
    with jax.set_mesh(None):
      for number, block in enumerate(blocks, 1):
        with contextlib.redirect_stdout(io.StringIO()):
          exec(compile(block, f"{document}[block {number}]", "exec"), namespace)
  finally:
    os.chdir(previous)
