"""Smoke test: the package imports."""

import blox.parallel


def test_parallel_imports() -> None:
  assert blox.parallel.__name__ == "blox.parallel"
