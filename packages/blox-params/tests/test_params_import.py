"""Smoke test: the package imports."""

import blox.params


def test_params_imports() -> None:
  assert blox.params.__name__ == "blox.params"
