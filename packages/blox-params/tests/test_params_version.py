"""`blox.params.__version__` comes from `blox/params/_version.py`."""

from __future__ import annotations

import re

import blox.params
from blox.params import _version


def test_the_version_is_exported_and_well_formed() -> None:
  assert blox.params.__version__ == _version.__version__ == "0.2.0"
  assert "__version__" in blox.params.__all__
  assert re.fullmatch(r"\d+\.\d+\.\d+", blox.params.__version__)
