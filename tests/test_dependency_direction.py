"""Dependencies point one way: importing a package loads none of its dependents.

In the workspace every package is installed, so an import of a dependent
would go unnoticed by the package's own tests; CI's per-package runs catch
an undeclared import, and these catch a forbidden one in the workspace run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# What each portion must never import, even indirectly.
FORBIDDEN = {
    "blox.params": ("blox.graph", "blox.nn", "blox.parallel", "blox.models", "optax", "safetensors"),
    "blox.graph": ("blox.nn", "blox.parallel", "blox.models", "optax", "safetensors"),
    "blox.nn": ("blox.parallel", "blox.models", "optax", "safetensors"),
    "blox.parallel": ("blox.graph", "blox.nn", "blox.models", "optax", "safetensors"),
    "blox.models": ("optax", "torch", "transformers"),
}

# The umbrella's blox/__init__.py is lazy (it imports a portion only when one
# of its names is used), so importing a portion directly loads exactly what
# that portion imports.
_PROBE = """
import sys
import {package}
print('\\n'.join(sorted(m for m in sys.modules if m.startswith(('blox.', 'optax', 'safetensors', 'torch', 'transformers')))))
"""


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_without_its_dependents(package: str) -> None:
  result = subprocess.run(
      [sys.executable, "-c", _PROBE.format(package=package)],
      capture_output=True, text=True, timeout=120, check=True,
  )
  loaded = set(result.stdout.split())
  assert package in loaded
  assert not loaded & set(FORBIDDEN[package]), sorted(loaded & set(FORBIDDEN[package]))
