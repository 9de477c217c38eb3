"""The blox-models package: its version and what installing it brings."""

from __future__ import annotations

import importlib.metadata

import blox.models


def test_version_matches_the_distribution() -> None:
  assert blox.models.__version__ == importlib.metadata.version("blox-models")
