"""`blox.params.__version__` comes from `blox/params/_version.py`."""

from __future__ import annotations

import re

import blox.params
import blox.params._version as version_module


def test_the_version_is_exported_and_well_formed() -> None:
  assert blox.params.__version__ == version_module.__version__ == "0.2.0"
  assert "__version__" in blox.params.__all__
  assert re.fullmatch(r"\d+\.\d+\.\d+", blox.params.__version__)
