"""Peak host memory of loading a checkpoint, measured in a fresh process.

Run as `python models_memory_probe.py blox|safetensors FOLDER`: imports jax
and blox.models, warms jax up (its first transfer and compilation allocate
runtime memory that any loader pays once per process), then loads FOLDER
with `blox.models.load_pretrained` or with `safetensors.numpy.load_file` of
each file, keeps the result, and prints how far the peak resident memory
rose while it loaded, in bytes (or `unsupported`).

The peak is Linux's VmHWM, reset just before the load through
/proc/self/clear_refs, not getrusage's ru_maxrss, which a process started by
fork and exec inherits from its parent (see
test_models_safetensors_processes.py). test_models_loading.py runs it.

Example:
  >>> not PEAK_SUPPORTED or measure_peak_growth(lambda: bytearray(1 << 20)) >= 0
  True
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import Any

PEAK_SUPPORTED = pathlib.Path("/proc/self/clear_refs").exists()


def ready(tree: Any) -> Any:
  """`tree` once every array in it is computed (jax leaves `block_until_ready` unannotated)."""
  import jax

  return jax.block_until_ready(tree)  # type: ignore[no-untyped-call]


def _status(key: str) -> int:
  """A /proc/self/status memory field, in bytes."""
  with open("/proc/self/status") as file:
    return next(int(line.split()[1]) * 1024 for line in file if line.startswith(key + ":"))


def measure_peak_growth(load: Callable[[], Any]) -> int:
  """How far the peak resident memory rises while `load()` runs, in bytes.

  The result of `load` is kept until the peak is read, as a caller keeps
  the weights it loads.
  """
  with open("/proc/self/clear_refs", "w") as file:
    file.write("5")  # VmHWM := VmRSS
  before = _status("VmRSS")
  result = load()
  growth = _status("VmHWM") - before
  del result
  return growth


def _warm_up() -> None:
  """One transfer, compilation and donation, as every jax program pays once."""
  import jax
  import numpy as np

  update = jax.jit(lambda buffer, piece: buffer.at[0].set(piece), donate_argnums=0)
  buffer = jax.device_put(np.zeros((2, 4), np.float32))
  ready(update(buffer, np.ones(4, np.float32)))


def _load_blox(folder: pathlib.Path) -> Any:
  import blox.models as bm

  _, params = bm.load_pretrained(folder)
  return ready(params)


def _load_safetensors(folder: pathlib.Path) -> Any:
  from safetensors.numpy import load_file

  return [load_file(path) for path in sorted(folder.glob("*.safetensors"))]


def main(argv: list[str]) -> None:
  """`blox|safetensors FOLDER`: prints the peak growth of that load, in bytes."""
  if not PEAK_SUPPORTED:
    print("unsupported")
    return
  how, folder = argv[0], pathlib.Path(argv[1])
  import blox.models  # noqa: F401  (imported before the measurement by both)
  import safetensors.numpy  # noqa: F401

  _warm_up()
  load = {"blox": _load_blox, "safetensors": _load_safetensors}[how]
  print(measure_peak_growth(lambda: load(folder)))


if __name__ == "__main__":
  main(sys.argv[1:])
