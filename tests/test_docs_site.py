"""The documentation site: the API reference cannot drift from the code.

Each reference page documents exactly the names in its package's `__all__`
(`::: package.name` blocks, or a table row for re-exported names), every page
is in the navigation, and `mkdocs build --strict` succeeds offline.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Package -> its reference page. The umbrella and the initializers re-export
# names defined elsewhere, so their pages list them in a table instead.
REFERENCE = {
    "blox": "reference/blox.md",
    "blox.params": "reference/params.md",
    "blox.graph": "reference/graph.md",
    "blox.nn": "reference/nn.md",
    "blox.nn.initializers": "reference/initializers.md",
    "blox.parallel": "reference/parallel.md",
    "blox.models": "reference/models.md",
}
TABLE_PREFIX = {"blox": "bx.", "blox.nn.initializers": ""}


def documented_names(package: str) -> list[str]:
  text = (DOCS / REFERENCE[package]).read_text()
  if package in TABLE_PREFIX:
    prefix = re.escape(TABLE_PREFIX[package])
    return re.findall(rf"^\| `{prefix}(\w+)` \|", text, flags=re.M)
  return re.findall(rf"^::: {re.escape(package)}\.(\w+)$", text, flags=re.M)


@pytest.mark.parametrize("package", sorted(REFERENCE))
def test_reference_lists_every_public_name(package: str) -> None:
  public = [name for name in importlib.import_module(package).__all__ if name != "__version__"]
  documented = documented_names(package)
  assert len(documented) == len(set(documented)), f"{REFERENCE[package]} lists a name twice"
  missing = sorted(set(public) - set(documented))
  extra = sorted(set(documented) - set(public))
  assert not missing, f"add {missing} to docs/{REFERENCE[package]} (they are in {package}.__all__)"
  assert not extra, f"docs/{REFERENCE[package]} documents {extra}, which {package}.__all__ lacks"


@pytest.mark.parametrize("package", sorted(REFERENCE))
def test_reference_mentions_the_version(package: str) -> None:
  if "__version__" in importlib.import_module(package).__all__:
    assert f"`{package}.__version__`" in (DOCS / REFERENCE[package]).read_text()


def test_every_page_is_in_the_navigation() -> None:
  config = (ROOT / "mkdocs.yml").read_text()
  nav = set(re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)$", config, flags=re.M))
  pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
  assert pages - nav == set(), "add these pages to the nav of mkdocs.yml"
  assert nav - pages == set(), "the nav of mkdocs.yml names pages that do not exist"


def test_site_builds_strictly_and_offline(tmp_path: Path) -> None:
  site = tmp_path / "site"
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
  )
  assert result.returncode == 0, result.stderr[-4000:]
  for page in site.rglob("*.html"):
    html = page.read_text()
    # The built site loads nothing from elsewhere: no web fonts, no CDN.
    assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page
    assert not re.search(r"<(?:script|link)[^>]+(?:src|href)=\"https?://", html), page
  for page in (site / "reference").rglob("*.html"):
    # Docstring examples render as code (docs/_ext/griffe_examples.py makes
    # `Example:` sections count), not as `>>>` quotes nested in Markdown.
    assert not re.search(r"<blockquote>\s*<blockquote>", page.read_text()), page
  assert (site / "reference" / "params" / "index.html").exists()
