"""The layout rules of the packages: what a reader can rely on in every one.

- Implementation lives in private modules; the public API is each package's
  `__init__` (public submodules are named here, with the reason).
- No source file is longer than 400 lines unless `LONG_FILES` below names it
  with the reason.
- No module imports another module's private name (`from m import _x`):
  what two modules share has a public name inside its private module.
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
    "blox-models": "blox/models",
    "blox": "blox",
}
# Public submodules, each a namespace of functions users import by module.
PUBLIC_SUBMODULES = {"blox/nn/initializers.py"}
MAX_LINES = 400
# Files allowed past MAX_LINES, each with its reason (relative to the root).
LONG_FILES: dict[str, str] = {}
# Where the private-name rule is checked: all the Python code of the repository.
CODE_FOLDERS = ("packages", "examples", "benchmarks", "tests", "scripts", "docs")


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
def test_source_files_stay_short_or_are_listed(package: str) -> None:
  too_long = []
  for path in _sources(package):
    lines = path.read_text().count("\n")
    name = str(path.relative_to(ROOT))
    if lines > MAX_LINES and name not in LONG_FILES:
      too_long.append(f"{name}: {lines} lines")
  assert not too_long, f"split these, or list them in LONG_FILES with the reason: {too_long}"


def test_long_files_listed_are_long_and_give_a_reason() -> None:
  for name, reason in LONG_FILES.items():
    path = ROOT / name
    assert path.is_file(), f"LONG_FILES names {name}, which does not exist"
    assert path.read_text().count("\n") > MAX_LINES, f"{name} is short now: drop it from LONG_FILES"
    assert len(reason.split()) >= 5, f"{name}: give the reason in words"


def private_imports(source: str) -> list[str]:
  """The names a module imports that start with one underscore.

  Example:
    >>> private_imports("from a._b import c, _d; from e import __version__")
    ['_d']
  """
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom):
      for alias in node.names:
        if alias.name.startswith("_") and not alias.name.startswith("__"):
          found.append(alias.name)
  return found


def test_no_module_imports_a_private_name() -> None:
  offenders = []
  for folder in CODE_FOLDERS:
    for path in sorted((ROOT / folder).rglob("*.py")):
      if any(part in {".venv", "build", "dist", "site"} for part in path.parts):
        continue
      names = private_imports(path.read_text())
      if names:
        offenders.append(f"{path.relative_to(ROOT)}: {', '.join(names)}")
  assert not offenders, "give these a public name in their private module:\n" + "\n".join(offenders)


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
