"""Worker processes on one machine: started, watched, always stopped.

The multi-process examples (examples/multihost_data_parallel.py,
examples/fsdp_train.py) and tests/test_orbax_multihost.py run copies of a
script as `jax.distributed` workers on 127.0.0.1, each copy with its own
number of simulated CPU devices. Everything about those processes lives in
this one module, so that their timeouts and retries are set in one place:

- `Run`: the worker processes of one run. Each gets the variables a real
  host sets for `jax.distributed.initialize` (`JAX_COORDINATOR_ADDRESS`,
  `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), a log file, and its own process
  group, so that stopping it also stops whatever it started.
- `watch(runs, until)`: polls runs until `until()` holds, stopping at the
  first failure or timeout and restarting, with the reason printed, a run
  whose coordinator port was taken or whose workers timed out joining each
  other's collectives (a loaded machine: gloo waits 30 s for a peer);
  `finish(runs)` runs them to the end.
- `BLOX_TIMEOUT_SCALE` (environment, default 1) multiplies every run's
  timeout, for a machine slower than the 2-core one these were sized on.
- `free_port`, `port_was_taken`, `spawn`, `stop`: the pieces.

Nothing here imports jax: a launcher only starts processes and reads files.

Example:
  >>> port = free_port()
  >>> 0 < port < 65536
  True
  >>> port_was_taken("E0101 ... Failed to bind to address [::]:4321: Address already in use")
  True
  >>> collectives_timed_out("Gloo context initialization failed: DEADLINE_EXCEEDED: GetKeyValue() timed out")
  True
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "Run",
    "collectives_timed_out",
    "finish",
    "free_port",
    "port_was_taken",
    "spawn",
    "stop",
    "timeout_scale",
    "watch",
]

# How often `watch` looks at the processes.
POLL_S = 0.2


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    return port


# The coordinator's port is picked free but bound seconds later, after the
# worker has imported jax; another process may take it in between.
_PORT_TAKEN = re.compile(r"address already in use|failed to bind|bind failed", re.IGNORECASE)


def port_was_taken(text: str) -> bool:
  """Whether a worker's output says the coordinator could not bind its port."""
  return _PORT_TAKEN.search(text) is not None


# What a worker prints when its peers did not show up in time to set up the
# collectives: on a loaded machine a peer may still be compiling. The run is
# sound; it only needs to be started again.
_COLLECTIVES_TIMED_OUT = re.compile(
    r"Gloo context initialization failed|GetKeyValue\(\) timed out|DEADLINE_EXCEEDED"
    r"|Connect timeout|Barrier timed out",
)


def collectives_timed_out(text: str) -> bool:
  """Whether a worker's output says it timed out waiting for its peers."""
  return _COLLECTIVES_TIMED_OUT.search(text) is not None


def timeout_scale() -> float:
  """`BLOX_TIMEOUT_SCALE` from the environment (1 when unset)."""
  value = os.environ.get("BLOX_TIMEOUT_SCALE", "1")
  try:
    scale = float(value)
  except ValueError:
    raise ValueError(f"BLOX_TIMEOUT_SCALE must be a number such as 2, got {value!r}.") from None
  if scale <= 0:
    raise ValueError(f"BLOX_TIMEOUT_SCALE must be positive, got {value!r}.")
  return scale


def spawn(
    script: str | Path,
    args: Sequence[str],
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


class Run:
  """The worker processes of one run, `processes` copies of `script`, logs in `folder`.

  Args:
    name: names the run in messages and its log files (`<name><i>.log`, or
      `<name>.log` for a single process).
    script: the script each process runs.
    folder: where the logs go.
    args: the command-line arguments of process `i`, `args(i)`; or the same
      list for every process.
    processes: how many processes.
    devices: simulated CPU devices per process.
    distributed: whether the processes join one `jax.distributed` system
      (they get the coordinator's address, the count and their id in the
      environment); by default when there are several.
    env: more environment variables for every process.
    timeout_s: how long the run may take, from its (latest) start, times
      `BLOX_TIMEOUT_SCALE`.
    attempts: how many times it is started when the coordinator's port was
      taken before the coordinator could bind it, or the workers timed out
      joining each other's collectives.
    killed_later: True for a run that the caller kills itself: finishing
      on its own is then a failure.
  """

  def __init__(
      self,
      name: str,
      script: str | Path,
      folder: Path,
      args: Callable[[int], Sequence[str]] | Sequence[str],
      *,
      processes: int = 2,
      devices: int = 4,
      distributed: bool | None = None,
      env: Mapping[str, str] | None = None,
      timeout_s: float = 240.0,
      attempts: int = 3,
      killed_later: bool = False,
  ) -> None:
    self.name = name
    self.script = script
    self.folder = folder
    self.args = args
    self.processes = processes
    self.devices = devices
    self.distributed = processes > 1 if distributed is None else distributed
    self.env = dict(env or {})
    self.timeout_s = timeout_s * timeout_scale()
    self.attempts = attempts
    self.killed_later = killed_later
    self.procs: list[subprocess.Popen[str]] = []
    self.started_count = 0
    self.started_at = 0.0

  def label(self, process: int) -> str:
    """`<name><process>`, or `<name>` alone for a single process."""
    return self.name if self.processes == 1 else f"{self.name}{process}"

  def log(self, process: int) -> Path:
    return self.folder / f"{self.label(process)}.log"

  def text(self, process: int) -> str:
    """What process `process` has printed so far."""
    path = self.log(process)
    return path.read_text() if path.exists() else ""

  def start(self) -> None:
    """Starts (or restarts) every process, the coordinator on a fresh port."""
    self.stop()
    self.procs, self.started_at = [], time.monotonic()
    self.started_count += 1
    port = free_port()
    for process in range(self.processes):
      args = self.args(process) if callable(self.args) else self.args
      env = dict(self.env)
      if self.distributed:
        # The variables a real host sets (README.md, "FSDP across hosts").
        env.update({
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": str(self.processes),
            "JAX_PROCESS_ID": str(process),
        })
      with open(self.log(process), "w") as log:
        self.procs.append(spawn(self.script, args, self.devices, log, env))

  def finished(self) -> bool:
    """Whether every process has exited with status 0."""
    return bool(self.procs) and all(proc.poll() == 0 for proc in self.procs)

  def failed(self) -> bool:
    """Whether a process has exited with another status."""
    return any(proc.poll() not in (None, 0) for proc in self.procs)

  def trouble(self) -> str | None:
    """Why this run has failed (None while it runs or once it is done)."""
    if self.failed():
      return "a worker failed"
    if self.killed_later and self.finished():
      return "the workers finished before they were to be killed"
    if not self.finished() and time.monotonic() > self.started_at + self.timeout_s:
      return f"not finished within {self.timeout_s:.0f} s"
    return None

  def port_taken(self) -> bool:
    """Whether a process's log says the coordinator's port was taken meanwhile."""
    return self.distributed and any(port_was_taken(self.text(i)) for i in range(self.processes))

  def collectives_timed_out(self) -> bool:
    """Whether a process's log says it timed out waiting for its peers."""
    return self.distributed and any(
        collectives_timed_out(self.text(i)) for i in range(self.processes))

  def stop(self) -> None:
    """Kills every process that still runs (with its process group) and reaps it."""
    for proc in self.procs:
      stop(proc)

  def report_failure(self, why: str) -> None:
    """Prints `FAILED: <name> run: <why>` and the end of every process's log."""
    codes = ", ".join(f"process {i}: {proc.returncode}" for i, proc in enumerate(self.procs))
    print(f"FAILED: {self.name} run: {why} (exit status {codes})")
    for process in range(self.processes):
      for line in self.text(process).strip().splitlines()[-40:]:
        print(f"[{self.label(process)}] {line}")


def watch(runs: Sequence[Run], until: Callable[[], bool], poll_s: float = POLL_S) -> bool:
  """Polls `runs` until `until()` holds: True; or False after reporting a failure.

  A run that fails or times out is stopped and reported, except that a run
  whose coordinator port was taken (between `free_port` and its bind), or
  whose workers timed out joining each other's collectives, starts again
  (on another port), up to its `attempts`, with the reason printed. A run
  that saves checkpoints resumes from its latest one when it starts again.
  """
  while not until():
    for run in runs:
      why = run.trouble()
      if why is None:
        continue
      run.stop()
      if run.failed() and run.started_count < run.attempts:
        reason = (
            "the coordinator's port was taken meanwhile" if run.port_taken()
            else "its workers timed out waiting for each other (a loaded machine)"
            if run.collectives_timed_out() else None
        )
        if reason is not None:
          print(f"{run.name} run: {reason}; retrying (attempt {run.started_count + 1}"
                f" of {run.attempts})")
          run.start()
          continue
      run.report_failure(why)
      return False
    time.sleep(poll_s)
  return True


def finish(runs: Sequence[Run]) -> bool:
  """Starts `runs` side by side and waits for all of them to end; stops them in any case.

  Returns True when every process of every run exited with status 0;
  otherwise reports the first failure (see `watch`) and returns False.
  """
  try:
    for run in runs:
      run.start()
    return watch(runs, lambda: all(run.finished() for run in runs))
  finally:
    for run in runs:
      run.stop()
