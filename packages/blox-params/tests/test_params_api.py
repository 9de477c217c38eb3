"""The public API is `blox.params.__all__`; implementation modules are private."""

from __future__ import annotations

import importlib

import pytest

import blox.params


def test_every_public_name_is_exported() -> None:
  for name in blox.params.__all__:
    assert hasattr(blox.params, name), name
  assert "unused_params" in blox.params.__all__


@pytest.mark.parametrize(
    "old", ["params", "ordering", "checkpoint", "checkpoint_format", "param", "key_source", "training"]
)
def test_the_old_public_looking_modules_are_gone(old: str) -> None:
  with pytest.raises(ModuleNotFoundError):
    importlib.import_module(f"blox.params.{old}")
