"""Smoke test: the package imports."""

import blox.nn


def test_nn_imports() -> None:
  assert blox.nn.__name__ == "blox.nn"
