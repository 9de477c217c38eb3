"""blox.models benchmark: loading a Hugging Face checkpoint, and running the loaded Llama.

Rows (each ratio measured in this one run, the two sides interleaved):

- `blox.models.load_pretrained(folder)`, until every param is on its device
  (`jax.block_until_ready`), against `safetensors.numpy.load_file` of the
  same files (every shard), which reads the tensors into numpy as they are
  stored: the time (target <= 1.20x) and the growth of the peak resident
  memory (target <= 1.10x). The checkpoint is a random Llama made here with
  `blox.models.create` and `save_pretrained` (float32, about 1.2 GB in 3
  shards; a few MB with `smoke`). Each load runs in a fresh process (imports
  and the start of JAX's backend not timed), blox and the baseline
  alternating, median of the per-round ratios. The files are read once
  before the first round, so every load reads them from the page cache.
  The peak is Linux's VmHWM, reset through `/proc/self/clear_refs` just
  before the load (not `ru_maxrss`, which a child inherits from its parent).
- The forward pass and an AdamW train step of a smaller loaded Llama against
  the same model hand-written in plain JAX (benchmarks/models_reference.py:
  a `lax.scan` over stacked weights, as blox's `Repeat`), its weights copied
  from the blox params; the logits are checked equal (allclose 1e-5) and the
  first losses of the two train steps too, before anything is timed.
  Targets <= 1.05x. Both sides use the same loss function (next-token
  cross-entropy) and the same optax optimizer.

Example:
  >>> rows = run(smoke=True)  # doctest: +SKIP
  >>> rows[0].name.startswith('load_pretrained time')  # doctest: +SKIP
  True
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ itself on the path; the benchmark
# modules import each other as `benchmarks.<name>` from the repository root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import blox as bx  # noqa: E402
from benchmarks import models_reference as reference  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    Row, compare, count_ops, format_seconds, interleaved_times,
)
from blox import models  # noqa: E402

__all__ = ["run"]

LEARNING_RATE = 1e-3
# The forward passes are float32 on both sides, summed in other orders.
LOGITS_TOLERANCE = 1e-5
# After the timed steps, AdamW's normalised updates compound rounding.
LOSS_TOLERANCE = 1e-3


def llama(hidden: int, layers: int, intermediate: int, vocab: int, heads: int,
          kv_heads: int) -> dict[str, Any]:
  """A Hugging Face config of a Llama of these sizes, untied head."""
  return {
      "model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers,
      "intermediate_size": intermediate, "vocab_size": vocab, "num_attention_heads": heads,
      "num_key_value_heads": kv_heads, "max_position_embeddings": 2048,
      "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
  }


@dataclasses.dataclass(frozen=True)
class Setup:
  """The sizes of one benchmark run."""

  checkpoint: dict[str, Any]  # the config of the loaded checkpoint
  shard_size: str  # save_pretrained's max_shard_size
  load_rounds: int  # each: one fresh process per side
  model: dict[str, Any]  # the config of the forward and train-step rows
  batch: int
  length: int
  forward_steps: int  # per round, on each side
  train_steps: int
  rounds: int


FULL = Setup(
    checkpoint=llama(1536, 8, 4096, 32000, 12, 4), shard_size="500MB", load_rounds=3,
    model=llama(256, 4, 688, 4096, 4, 2), batch=8, length=128, forward_steps=3, train_steps=1,
    rounds=9,
)
# Smoke mode times the checkpoint it loads: one model made and saved, not two.
SMOKE = Setup(
    checkpoint=llama(128, 2, 352, 2048, 4, 2), shard_size="2MB", load_rounds=1,
    model=llama(128, 2, 352, 2048, 4, 2), batch=2, length=8, forward_steps=1, train_steps=1,
    rounds=1,
)


def describe(config: dict[str, Any]) -> str:
  """The sizes of a Llama config, for the rows' names."""
  return (
      f"Llama {config['num_hidden_layers']} layers, hidden {config['hidden_size']},"
      f" {config['num_attention_heads']}/{config['num_key_value_heads']} heads,"
      f" vocab {config['vocab_size']}, float32"
  )


def save_checkpoint(config: dict[str, Any], folder: Path, shard_size: str) -> list[Path]:
  """A random model of `config` saved to `folder`; returns the safetensors files."""
  model, params = models.create(config)
  written = models.save_pretrained(model, params, folder, max_shard_size=shard_size)
  return [path for path in written if path.suffix == ".safetensors"]


# ----------------------------------------------------------------------------- loading

# One load in a fresh process. It prints the seconds, the growth of the peak
# resident memory over the resident memory just before the load, and how the
# peak was read: VmHWM reset through clear_refs; VmHWM not reset (still right
# when the imports peaked below the load); or, without /proc, ru_maxrss
# growth (a lower bound).
_LOAD_CHILD = r"""
import glob, json, os, resource, sys, time

side, folder = sys.argv[1], sys.argv[2]
if side == "blox":
  import jax
  from blox.models import load_pretrained
  jax.devices()  # JAX's backend starts with the process, not with the load

  def load():
    return jax.block_until_ready(load_pretrained(folder)[1])
else:
  from safetensors.numpy import load_file

  def load():
    return [load_file(path) for path in sorted(glob.glob(os.path.join(folder, "*.safetensors")))]

def status(key):
  try:
    with open("/proc/self/status") as file:
      return next(int(line.split()[1]) * 1024 for line in file if line.startswith(key + ":"))
  except (OSError, StopIteration):
    return None

def max_rss():
  scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

how = "VmHWM reset"
try:
  with open("/proc/self/clear_refs", "w") as file:
    file.write("5")  # VmHWM := VmRSS
except OSError:
  how = "VmHWM not reset"
before = status("VmRSS")
if before is None:
  how, before = "ru_maxrss", max_rss()
start = time.perf_counter()
loaded = load()
seconds = time.perf_counter() - start
peak = max_rss() if how == "ru_maxrss" else status("VmHWM")
print(json.dumps({"seconds": seconds, "growth": peak - before, "how": how}))
"""


@dataclasses.dataclass(frozen=True)
class Load:
  """One measured load."""

  seconds: float
  growth: int  # bytes
  how: str


def measure_load(side: str, folder: Path) -> Load:
  """One load of `folder` by `side` ('blox' or 'safetensors') in a new process."""
  result = subprocess.run(
      [sys.executable, "-c", _LOAD_CHILD, side, str(folder)],
      capture_output=True, text=True, check=False, cwd=_ROOT,
  )
  if result.returncode != 0:
    raise RuntimeError(f"Measuring the {side} load failed:\n{result.stderr}")
  measured = json.loads(result.stdout.strip().splitlines()[-1])
  return Load(float(measured["seconds"]), int(measured["growth"]), str(measured["how"]))


def warm_page_cache(files: list[Path]) -> None:
  """Reads every file once, so that every timed load finds them in the page cache."""
  for path in files:
    with open(path, "rb") as file:
      while file.read(1 << 24):
        pass


def gigabytes(size: float) -> str:
  """`1.2 GB`, or `3.58 MB` below 100 MB."""
  return f"{size / 1e9:.3g} GB" if size >= 1e8 else f"{size / 1e6:.3g} MB"


def load_rows(setup: Setup, folder: Path, files: list[Path]) -> list[Row]:
  """The time and memory rows of loading the checkpoint `files` in `folder`."""
  size = sum(path.stat().st_size for path in files)
  warm_page_cache(files)
  loads: dict[str, list[Load]] = {"blox": [], "safetensors": []}
  for r in range(setup.load_rounds):
    order = ("blox", "safetensors") if r % 2 == 0 else ("safetensors", "blox")
    for side in order:
      loads[side].append(measure_load(side, folder))
  blox, base = loads["blox"], loads["safetensors"]
  time_ratio = statistics.median(b.seconds / s.seconds for b, s in zip(blox, base))
  memory_ratio = statistics.median(b.growth / s.growth for b, s in zip(blox, base))
  hows = sorted({load.how for load in blox + base})
  label = f"{describe(setup.checkpoint)}, {gigabytes(size)} in {len(files)} files"
  rounds = f"fresh process each, median of {setup.load_rounds} interleaved rounds"
  return [
      Row(
          f"load_pretrained time ({label})",
          format_seconds(statistics.median(b.seconds for b in blox)),
          format_seconds(statistics.median(s.seconds for s in base)), time_ratio, "<= 1.20x",
          f"{rounds}; page cache warmed first; baseline: safetensors.numpy.load_file",
      ),
      Row(
          f"load_pretrained peak host memory ({label})",
          gigabytes(statistics.median(b.growth for b in blox)),
          gigabytes(statistics.median(s.growth for s in base)), memory_ratio, "<= 1.10x",
          f"{rounds}; growth of the peak RSS ({', '.join(hows)}); checkpoint {gigabytes(size)}",
      ),
  ]


# ------------------------------------------------------------------ forward and train step


def architecture(config: models.ModelConfig) -> reference.Architecture:
  """What the hand-written model needs to know of `config` besides the weights."""
  if config.rope is None or any(layer.scaling is not None for layer in config.rope):
    raise ValueError("The hand-written Llama has plain rotary embeddings only.")
  return reference.Architecture(
      num_heads=config.num_heads, num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
      norm_epsilon=config.norm_epsilon, rope_base=config.rope[0].base,
      tie_embeddings=config.tie_embeddings,
  )


State = reference.State


def blox_train_step(
    model: models.CausalLM, optimizer: optax.GradientTransformation
) -> Callable[[bx.Params, optax.OptState, jax.Array], State]:
  """The step `(params, opt_state, ids) -> (params, opt_state, loss)` of the loaded model."""

  def loss_fn(params: bx.Params, ids: jax.Array) -> tuple[jax.Array, bx.Params]:
    logits, params = model(params, ids)
    return reference.next_token_loss(logits, ids), params

  loss_and_grads = bx.value_and_grad(loss_fn)

  def step(params: bx.Params, opt_state: optax.OptState, ids: jax.Array) -> State:
    loss, params, grads = loss_and_grads(params, ids)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss

  return step


def _carry(step: Callable[..., Any]) -> Callable[..., tuple[Any, ...]]:
  """`step` as `timing.compare` runs it: the state in, the next state out."""

  def carried(*state: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = step(*state)
    return result

  return carried


def forward_row(
    model: models.CausalLM, params: bx.Params, weights: reference.Weights,
    arch: reference.Architecture, ids: jax.Array, setup: Setup, label: str,
) -> Row:
  blox_forward = lambda p, i: model(p, i)[0]  # noqa: E731
  hand_forward = lambda w, i: reference.forward(w, i, arch)  # noqa: E731
  ops = f"{count_ops(blox_forward, params, ids)} vs {count_ops(hand_forward, weights, ids)} ops"
  blox_jit, hand_jit = jax.jit(blox_forward), jax.jit(hand_forward)
  blox_logits, hand_logits = np.asarray(blox_jit(params, ids)), np.asarray(hand_jit(weights, ids))
  error = float(np.max(np.abs(blox_logits - hand_logits)))
  if not np.allclose(blox_logits, hand_logits, rtol=LOGITS_TOLERANCE, atol=LOGITS_TOLERANCE):
    raise AssertionError(
        f"blox's and the hand-written Llama's logits differ: max |difference| {error}.")
  # Each call's logits are carried to the next call (and dropped by it).
  result = compare(
      _carry(lambda p, i, _: (p, i, blox_jit(p, i))), (params, ids, None),
      _carry(lambda w, i, _: (w, i, hand_jit(w, i))), (weights, ids, None),
      steps=setup.forward_steps, rounds=setup.rounds,
  )
  return Row(
      f"loaded Llama forward ({label})", format_seconds(result.blox_s),
      format_seconds(result.baseline_s), result.ratio, "<= 1.05x",
      f"median of {result.rounds} rounds; {ops}; logits agree within {error:.1e}",
  )


def train_row(
    model: models.CausalLM, params: bx.Params, weights: reference.Weights,
    arch: reference.Architecture, ids: jax.Array, setup: Setup, label: str,
) -> Row:
  optimizer = optax.adamw(LEARNING_RATE)
  blox_step = blox_train_step(model, optimizer)
  hand_step = reference.train_step(arch, optimizer)
  # Initialised under jit (no eager op compiled per shape), then committed to
  # the device, as the step's outputs are: an uncommitted first state (jit's
  # outputs that depend on no input are) would compile each step twice.
  device = jax.devices()[0]
  blox_state = (params, jax.device_put(jax.jit(optimizer.init)(params.split()[0]), device))
  hand_state = (weights, jax.device_put(jax.jit(optimizer.init)(weights), device))
  ops = (
      f"{count_ops(blox_step, *blox_state, ids)} vs {count_ops(hand_step, *hand_state, ids)} ops"
  )
  blox_jit = jax.jit(blox_step, donate_argnums=(0, 1))
  hand_jit = jax.jit(hand_step, donate_argnums=(0, 1))
  first = blox_jit(*blox_state, ids), hand_jit(*hand_state, ids)
  losses = [float(state[2]) for state in first]
  if abs(losses[0] - losses[1]) > LOGITS_TOLERANCE * max(1.0, abs(losses[1])):
    raise AssertionError(f"The first losses differ: blox {losses[0]}, hand {losses[1]}.")
  times, states = interleaved_times(
      {"blox": (_carry(lambda p, o, _: blox_jit(p, o, ids)), first[0]),
       "hand": (_carry(lambda w, o, _: hand_jit(w, o, ids)), first[1])},
      steps=setup.train_steps, rounds=setup.rounds,
  )
  # Both ran the same number of steps from the same weights: still the same loss.
  final = [float(states[side][2]) for side in ("blox", "hand")]
  if abs(final[0] - final[1]) > LOSS_TOLERANCE * max(1.0, abs(final[1])):
    raise AssertionError(f"The train steps drifted apart: loss blox {final[0]}, hand {final[1]}.")
  ratio = statistics.median(b / h for b, h in zip(times["blox"], times["hand"]))
  blox_s, hand_s = (statistics.median(times[side]) for side in ("blox", "hand"))
  return Row(
      f"loaded Llama train step, AdamW ({label})", format_seconds(blox_s),
      format_seconds(hand_s), ratio, "<= 1.05x",
      f"median of {setup.rounds} rounds; {ops}; losses agree before and after",
  )


def model_rows(setup: Setup, folder: Path) -> list[Row]:
  """The forward and train-step rows of the model saved in `folder`."""
  model, params = models.load_pretrained(folder)
  arch = architecture(model.architecture)
  device = jax.devices()[0]
  shape = (setup.batch, setup.length)
  tokens = np.random.default_rng(1).integers(0, setup.model["vocab_size"], shape, np.int32)
  ids = jax.device_put(tokens, device)
  label = f"{describe(setup.model)}, batch {setup.batch}x{setup.length}"
  rows = [forward_row(model, params, reference.weights_from(params), arch, ids, setup, label)]
  # The train step donates its params: it gets copies (through the host,
  # back onto the params' device, committed there like the originals).
  copied = jax.tree.map(lambda value: jax.device_put(np.array(value), value.sharding), params)
  rows.append(train_row(model, copied, reference.weights_from(params), arch, ids, setup, label))
  return rows


def run(smoke: bool = False) -> list[Row]:
  """Every row of this benchmark, in the order of the module docstring."""
  setup = SMOKE if smoke else FULL
  with tempfile.TemporaryDirectory(prefix="blox-models-benchmark-") as temporary:
    print("  models: saving the checkpoint ...", file=sys.stderr, flush=True)
    folder = Path(temporary) / "checkpoint"
    files = save_checkpoint(setup.checkpoint, folder, setup.shard_size)
    print("  models: load_rows ...", file=sys.stderr, flush=True)
    rows = load_rows(setup, folder, files)
    if setup.model != setup.checkpoint:
      folder = Path(temporary) / "model"
      save_checkpoint(setup.model, folder, "5GB")
    print("  models: model_rows ...", file=sys.stderr, flush=True)
    rows.extend(model_rows(setup, folder))
  return rows


if __name__ == "__main__":
  from benchmarks.timing import print_table

  # uv run benchmarks/models.py [--smoke]; benchmarks/run.py runs these rows too.
  smoke = "--smoke" in sys.argv[1:]
  print_table(run(smoke), smoke)
