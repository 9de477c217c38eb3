"""Smoke test: the umbrella re-exports."""

import blox as bx


def test_umbrella_exports() -> None:
  assert bx.Params is bx.params.Params
