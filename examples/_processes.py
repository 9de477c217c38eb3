"""Worker processes for the multi-process examples, started and always stopped.

The multi-process examples (multihost_data_parallel.py, fsdp_train.py) run
copies of themselves as `jax.distributed` workers on 127.0.0.1, each with
its own number of simulated CPU devices. What they share lives here:

- `free_port()`: a TCP port that was free a moment ago, for the coordinator.
- `spawn(script, args, devices, log, env)`: `python script args` in its own
  process group, with `devices` CPU devices, output to `log`.
- `stop(proc)`: kills a worker's whole process group and reaps it.
- `port_was_taken(text)`: whether a worker's log says the coordinator could
  not bind its port (another process took it between `free_port` and the
  bind), so that the caller retries with another port.

Example:
  >>> port = free_port()
  >>> 0 < port < 65536
  True
  >>> port_was_taken("E0101 ... Failed to bind to address [::]:4321: Address already in use")
  True
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import IO

__all__ = ["free_port", "port_was_taken", "spawn", "stop"]


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    return port


# The coordinator's port is picked free but bound seconds later, after the
# worker has imported jax; another process may take it in between.
_PORT_TAKEN = re.compile(r"address already in use|failed to bind|bind failed", re.IGNORECASE)


def port_was_taken(text: str) -> bool:
  return _PORT_TAKEN.search(text) is not None


def spawn(
    script: str,
    args: list[str],
    devices: int,
    log: IO[str],
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
  """Starts `python script args` with `devices` simulated CPU devices.

  The child gets its own session (process group), so `stop` also ends any
  process it starts; `env` entries are added to this process's environment.
  """
  environment = dict(os.environ)
  flags = [f for f in environment.get("XLA_FLAGS", "").split() if "device_count" not in f]
  environment["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  environment["JAX_PLATFORMS"] = "cpu"
  environment.update(env or {})
  return subprocess.Popen(
      [sys.executable, os.path.abspath(script), *args],
      stdout=log, stderr=subprocess.STDOUT, env=environment, text=True,
      start_new_session=True,
  )


def stop(proc: subprocess.Popen[str]) -> None:
  """Kills `proc`'s process group (if it still runs) and waits for it."""
  if proc.poll() is None:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass  # it exited between poll() and killpg()
  proc.wait()
