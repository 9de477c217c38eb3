"""The Python blocks of the READMEs and docs run as written.

Blocks of one document run in order in one namespace (later blocks use what
earlier ones defined), in a temporary folder so that files they write vanish.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    "README.md",
    "docs/optax.md",
    "docs/guides/checkpointing.md",
    "packages/blox/README.md",
    "packages/blox-params/README.md",
    "packages/blox-graph/README.md",
    "packages/blox-nn/README.md",
    "packages/blox-parallel/README.md",
]


def python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_blocks_run(document: str, tmp_path: Path) -> None:
  blocks = python_blocks((ROOT / document).read_text())
  assert blocks, f"{document} has no runnable python block"
  namespace: dict[str, object] = {"__name__": "__docs__"}
  previous = os.getcwd()
  os.chdir(tmp_path)
  try:
    for number, block in enumerate(blocks, 1):
      with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, f"{document}[block {number}]", "exec"), namespace)
  finally:
    os.chdir(previous)
