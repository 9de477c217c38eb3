"""Smoke test: the package imports."""

import blox.graph


def test_graph_imports() -> None:
  assert blox.graph.__name__ == "blox.graph"
