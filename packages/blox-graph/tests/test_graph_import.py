"""Importing blox.graph loads none of the packages it must not depend on."""

from __future__ import annotations

import subprocess
import sys

# Dependencies point one way only; these must never be imported, even
# indirectly, by blox.graph (in the workspace every package is installed, so
# an import of one would otherwise go unnoticed here).
FORBIDDEN = ("blox.nn", "blox.parallel", "optax")


def test_graph_imports_without_its_dependents() -> None:
  # The umbrella's blox/__init__.py imports every portion, so stand in for
  # it with a bare namespace package over all installed portions: this is
  # how `blox` looks when blox-graph is installed without the umbrella.
  code = (
      "import os, sys, types\n"
      "namespace = types.ModuleType('blox')\n"
      "namespace.__path__ = [os.path.join(entry, 'blox') for entry in sys.path\n"
      "                      if os.path.isdir(os.path.join(entry or '.', 'blox'))]\n"
      "sys.modules['blox'] = namespace\n"
      "import blox.graph\n"
      "print('\\n'.join(sorted(m for m in sys.modules if m.startswith(('blox.', 'optax')))))"
  )
  result = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
  )
  loaded = set(result.stdout.split())
  assert "blox.graph" in loaded
  assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))
