"""The umbrella re-exports every portion's public API lazily, defining nothing itself."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys

import pytest

import blox as bx

_PORTIONS = ("blox.params", "blox.graph", "blox.nn", "blox.parallel")


def test_umbrella_exports_the_core_names() -> None:
  required = {
      "Graph", "Module", "Param", "Params", "Rng", "Linear", "Dropout", "LSTM",
      "LSTMState", "static_scan", "dynamic_scan", "SequenceBase", "RecurrenceBase",
      "save", "load", "summary", "parallel", "Initializer", "SHARDING", "unused_params",
      "__version__",
  }
  assert required <= set(bx.__all__)


def test_every_umbrella_name_is_the_object_of_exactly_one_portion() -> None:
  portions = [importlib.import_module(name) for name in _PORTIONS]
  for name in bx.__all__:
    if name == "__version__":
      continue
    if name == "parallel":
      assert bx.parallel is importlib.import_module("blox.parallel")
      continue
    if name == "models":
      check_models_portion()
      continue
    owners = [p.__name__ for p in portions if name in getattr(p, "__all__", ())]
    assert len(owners) == 1, (name, owners)
    assert getattr(bx, name) is getattr(importlib.import_module(owners[0]), name)


def check_models_portion() -> None:
  """`bx.models` is blox.models where blox-models is installed, else an
  ImportError naming the distribution (the umbrella does not depend on it)."""
  if importlib.util.find_spec("blox.models") is None:
    with pytest.raises(ImportError, match="pip install blox-models"):
      bx.models  # noqa: B018
  else:
    assert bx.models is importlib.import_module("blox.models")


def test_from_import_and_dir() -> None:
  from blox import Linear, Params

  assert Linear is importlib.import_module("blox.nn").Linear
  assert Params is importlib.import_module("blox.params").Params
  assert dir(bx) == list(bx.__all__)


def test_an_unknown_name_raises_attribute_error_naming_it() -> None:
  with pytest.raises(AttributeError, match=r"no attribute 'Lineer'.*blox.__all__"):
    bx.Lineer  # type: ignore[attr-defined]  # the misspelling under test


def test_version_is_the_installed_distribution_version() -> None:
  assert bx.__version__ == importlib.metadata.version("blox")
  assert bx.__version__.startswith("0.2.")


def test_portions_are_found_through_the_extended_package_path() -> None:
  # Installed as wheels the portions share one folder; installed editable
  # (the workspace) each has its own, which extend_path adds to __path__.
  for name in _PORTIONS:
    assert importlib.import_module(name).__name__ == name


_LAZY_PROBE = """
import sys
portions = ('blox.params', 'blox.graph', 'blox.nn', 'blox.parallel')
def loaded():
  return sorted(name for name in portions if name in sys.modules)
import blox
print('import blox:', loaded())
blox.__version__, blox.__all__, dir(blox)
print('metadata:', loaded())
blox.Params
print('Params:', loaded())
blox.Linear
print('Linear:', loaded())
blox.parallel
print('parallel:', loaded())
"""

_PARAMS_PROBE = """
import sys
import blox.params
print(sorted(name for name in sys.modules if name.startswith('blox.')))
"""


def _run(probe: str) -> list[str]:
  result = subprocess.run(
      [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
  )
  return result.stdout.splitlines()


def test_import_blox_loads_a_portion_only_when_a_name_is_used() -> None:
  assert _run(_LAZY_PROBE) == [
      "import blox: []",
      "metadata: []",
      "Params: ['blox.params']",
      # blox.nn needs graph and params; parallel stays unloaded.
      "Linear: ['blox.graph', 'blox.nn', 'blox.params']",
      "parallel: ['blox.graph', 'blox.nn', 'blox.parallel', 'blox.params']",
  ]


def test_import_blox_params_loads_no_other_portion() -> None:
  (line,) = _run(_PARAMS_PROBE)
  loaded = set(ast.literal_eval(line))
  assert "blox.params" in loaded
  assert not loaded & {"blox.nn", "blox.graph", "blox.parallel"}, loaded


def test_the_type_checking_imports_list_exactly_the_exported_names() -> None:
  # The names are declared twice, for the lazy import and for type checkers;
  # this keeps the two lists from drifting apart.
  import ast
  from pathlib import Path

  source = Path(bx.__file__).read_text()
  imported = {
      alias.asname or alias.name
      for node in ast.walk(ast.parse(source))
      if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
      for statement in node.body
      if isinstance(statement, (ast.Import, ast.ImportFrom))
      for alias in statement.names
  }
  imported = {name.split(".")[-1] for name in imported}
  assert imported == set(bx.__all__) - {"__version__"}
