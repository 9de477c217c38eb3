"""The umbrella re-exports every portion's public API, defining nothing itself."""

from __future__ import annotations

import importlib

import blox as bx

_PORTIONS = ("blox.params", "blox.graph", "blox.nn")


def test_umbrella_exports_the_core_names() -> None:
  required = {
      "Graph", "Module", "Param", "Params", "Rng", "Linear", "Dropout", "LSTM",
      "LSTMState", "static_scan", "dynamic_scan", "SequenceBase", "RecurrenceBase",
      "save", "load", "summary", "parallel",
  }
  assert required <= set(bx.__all__)


def test_every_umbrella_name_is_the_object_of_exactly_one_portion() -> None:
  portions = [importlib.import_module(name) for name in _PORTIONS]
  for name in bx.__all__:
    if name == "parallel":
      assert bx.parallel is importlib.import_module("blox.parallel")
      continue
    owners = [p.__name__ for p in portions if name in getattr(p, "__all__", ())]
    assert len(owners) == 1, (name, owners)
    assert getattr(bx, name) is getattr(importlib.import_module(owners[0]), name)


def test_portions_are_found_through_the_extended_package_path() -> None:
  # Installed as wheels the portions share one folder; installed editable
  # (the workspace) each has its own, which extend_path adds to __path__.
  for name in (*_PORTIONS, "blox.parallel"):
    assert importlib.import_module(name).__name__ == name
