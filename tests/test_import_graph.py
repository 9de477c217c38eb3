"""How the repository's scripts import each other: no cycle, and each folder in its place.

The graph is built from the `import` and `from` statements of every module
under benchmarks/, examples/, scripts/ and tests/ (inside functions too),
read with `ast`, nothing imported. Its edges are the imports of modules in
those folders (`from benchmarks import lm` is an edge to `benchmarks.lm`).

- No cycle: every module can be read, and run, without the others it
  feeds.
- benchmarks/ never imports examples/: a benchmark measures its own model
  (benchmarks/lm.py), so that editing an example never moves a benchmark.
- scripts/ (the process harness and the multi-process checks) imports only
  scripts/: examples and tests use it, and it runs examples only as
  processes, by path.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.scripts import ROOT

FOLDERS = ("benchmarks", "examples", "scripts", "tests")

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path) -> str:
  """`benchmarks/lm.py` -> `benchmarks.lm`; a package's `__init__.py` -> the package.

  Example:
    >>> module_name(Path("/r/benchmarks/lm.py"), Path("/r"))
    'benchmarks.lm'
  """
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def imported_names(source: str, package: str) -> set[str]:
  """Every module name the source's imports name, and each `from m import x` as `m.x` too.

  Relative imports are resolved against `package`.

  Example:
    >>> sorted(imported_names("from benchmarks import lm, timing as t\\nimport os", "x"))
    ['benchmarks', 'benchmarks.lm', 'benchmarks.timing', 'os']
  """
  names: set[str] = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def import_graph(root: Path, folders: Iterable[str] = FOLDERS) -> Graph:
  """Module -> the modules of `folders` it imports."""
  files = {module_name(path, root): path for folder in folders for path in (root / folder).rglob("*.py")}
  graph: Graph = {}
  for name, path in files.items():
    package = name.rsplit(".", 1)[0]
    graph[name] = {
        target for target in imported_names(path.read_text(), package)
        if target in files and target != name
    }
  return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
  """A cycle of `graph` as `[a, b, ..., a]`, or None when it has none.

  Example:
    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    ['a', 'b', 'c', 'a']
    >>> find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    True
  """
  state: dict[str, str] = {}  # "open" while on the current path, then "done"

  def visit(node: str, path: list[str]) -> list[str] | None:
    state[node] = "open"
    for target in sorted(graph.get(node, ())):
      if state.get(target) == "open":  # on the path to `node`: back to where it started
        return [*path[path.index(target):], node, target]
      if target not in state:
        found = visit(target, [*path, node])
        if found:
          return found
    state[node] = "done"
    return None

  for start in sorted(graph):
    if start not in state:
      found = visit(start, [])
      if found:
        return found
  return None


def test_the_graph_sees_the_imports_it_should() -> None:
  graph = import_graph(ROOT)
  # Known edges: if these vanish, the parser missed them, and the checks
  # below would pass on an empty graph.
  assert "benchmarks.transformer" in graph["benchmarks.run"]
  assert "benchmarks.lm" in graph["benchmarks.transformer"]
  assert "examples.transformer_model" in graph["examples.fsdp_train"]
  assert "scripts.processes" in graph["tests.test_orbax_multihost"]


def test_no_import_cycle() -> None:
  cycle = find_cycle(import_graph(ROOT))
  assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_benchmarks_never_import_examples() -> None:
  graph = import_graph(ROOT)
  wrong = {
      name: sorted(t for t in targets if t.startswith("examples"))
      for name, targets in graph.items() if name.startswith("benchmarks.")
  }
  assert not {name: targets for name, targets in wrong.items() if targets}, (
      "benchmarks build their own models (benchmarks/lm.py); these import examples: "
      f"{wrong}"
  )


def test_scripts_import_only_scripts() -> None:
  graph = import_graph(ROOT)
  wrong = {
      name: sorted(t for t in targets if not t.startswith("scripts."))
      for name, targets in graph.items() if name.startswith("scripts.")
  }
  assert not {name: targets for name, targets in wrong.items() if targets}, wrong


def test_a_cycle_through_a_from_import_is_found(tmp_path: Path) -> None:
  (tmp_path / "benchmarks").mkdir()
  (tmp_path / "benchmarks" / "run.py").write_text("from benchmarks import transformer\n")
  (tmp_path / "benchmarks" / "transformer.py").write_text(
      "def main():\n  from benchmarks.run import machine\n"
  )
  cycle = find_cycle(import_graph(tmp_path, ["benchmarks"]))
  assert cycle is not None and set(cycle) == {"benchmarks.run", "benchmarks.transformer"}


def runtime_imports(source: str, package: str) -> set[str]:
  """`imported_names`, without the imports under `if TYPE_CHECKING:` (which
  never run, so they make no cycle).

  Example:
    >>> text = "from typing import TYPE_CHECKING\\nif TYPE_CHECKING:\\n  from a import b\\nimport c"
    >>> sorted(runtime_imports(text, "x"))
    ['c', 'typing', 'typing.TYPE_CHECKING']
  """
  tree = ast.parse(source)
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
      node.body = [ast.Pass()]
  return imported_names(ast.unparse(tree), package)


def package_graph(root: Path) -> Graph:
  """`blox.*` module -> the `blox.*` modules it imports when it runs."""
  files = {
      module_name(path, source): path
      for source in sorted((root / "packages").glob("*/src"))
      for path in source.rglob("*.py")
  }
  graph: Graph = {}
  for name, path in files.items():
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    graph[name] = {
        target for target in runtime_imports(path.read_text(), package)
        if target in files and target != name
    }
  return graph


def test_the_package_modules_import_one_way() -> None:
  graph = package_graph(ROOT)
  # Known edges, so that an empty graph cannot pass.
  assert "blox.params._checkpoint_read" in graph["blox.params._checkpoint_load"]
  assert "blox.graph._settings" in graph["blox.graph._module"]
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
