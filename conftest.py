"""Test-session settings shared by every package's tests.

JAX reads XLA_FLAGS once, when its CPU backend starts, so the 8 simulated
host devices that the parallel tests need are requested here, before any test
module imports jax.
"""

import os

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}".strip()
