"""The layout rules of the packages: what a reader can rely on in every one.

- Implementation lives in private modules; the public API is each package's
  `__init__` (public submodules are named here, with the reason).
- No source file is longer than 450 lines unless its opening docstring says
  why it is long.
- Every package ships `py.typed`, a `CHANGELOG.md`, and one `__version__`,
  read from its `_version.py` by the build backend too.
"""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "blox-params": "blox/params",
    "blox-graph": "blox/graph",
    "blox-nn": "blox/nn",
    "blox-parallel": "blox/parallel",
    "blox": "blox",
}
# Public submodules, each a namespace of functions users import by module.
PUBLIC_SUBMODULES = {"blox/nn/initializers.py"}
MAX_LINES = 450


def _sources(package: str) -> list[Path]:
  folder = ROOT / "packages" / package / "src" / PACKAGES[package]
  pattern = "*.py" if package == "blox" else "**/*.py"
  return sorted(folder.glob(pattern))


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_implementation_modules_are_private(package: str) -> None:
  public = [
      str(path.relative_to(ROOT / "packages" / package / "src"))
      for path in _sources(package)
      if not path.name.startswith("_")
  ]
  assert set(public) <= PUBLIC_SUBMODULES, public


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_source_files_stay_short_or_say_why(package: str) -> None:
  for path in _sources(package):
    text = path.read_text()
    lines = text.count("\n")
    if lines > MAX_LINES:
      docstring = ast.get_docstring(ast.parse(text)) or ""
      assert re.search(r"\blong\b", docstring), f"{path}: {lines} lines, no reason given"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_one_version_per_package(package: str) -> None:
  base = ROOT / "packages" / package
  project = tomllib.loads((base / "pyproject.toml").read_text())
  assert "version" not in project["project"]
  assert project["project"]["dynamic"] == ["version"]
  version_file = base / project["tool"]["hatch"]["version"]["path"]
  match = re.search(r'^__version__ = "([^"]+)"$', version_file.read_text(), re.M)
  assert match is not None
  module = importlib.import_module(PACKAGES[package].replace("/", "."))
  assert module.__version__ == match.group(1)
  assert (base / "CHANGELOG.md").is_file()
  assert match.group(1) in (base / "CHANGELOG.md").read_text()
  assert (base / "src" / PACKAGES[package] / "py.typed").is_file()
