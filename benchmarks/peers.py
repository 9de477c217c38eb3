"""blox next to its peers: the same models in plain JAX, blox, Flax NNX, Equinox and Haiku.

Usage, from the repository root (the peers come from a dependency group that
CI does not install):

  uv run --group peers benchmarks/peers.py           # the sizes of BENCHMARKS.md
  uv run --group peers benchmarks/peers.py --smoke   # tiny sizes, one round (tests)

Each library's models live in its own module (peers_flax.py,
peers_equinox.py, peers_haiku.py), written the way that library's docs write
them; blox and the hand-written JAX are benchmarks/train_step.py's and
benchmarks/transformer.py's. Rows:

- the dispatch-bound MLP train step (64 Linear layers of width 4, batch 16),
  and Flax's under `nnx.jit` as well as its functional fast path;
- the examples' transformer's train step (benchmarks/lm.py);
- its compile time (trace, lower, compile a new copy of the step);
- its init, eagerly and jitted, each in a fresh process (each library's
  documented way is marked in the output);
- cached decoding per token, where the library has a cache (Flax NNX:
  `nnx.Cache` variables; Equinox and Haiku ship none).

Before timing, every model is checked to have the hand-written one's
parameter count and to compute a scalar float32 loss. All train steps of a
row are timed interleaved in one process (timing.interleave), each ratio
against plain JAX, with an A/A row (plain JAX against a second jit of
itself) for the noise of the machine.

Example:
  >>> format_cell(0.002, 1.5)
  '2 ms (1.500x)'
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ itself on the path; the benchmark
# modules import each other as `benchmarks.<name>` from the repository root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import blox as bx  # noqa: E402
from benchmarks import lm, train_step, transformer  # noqa: E402
from benchmarks import transformer_reference as reference  # noqa: E402
from benchmarks.peers_common import Trainer, count_values  # noqa: E402
from benchmarks.timing import format_seconds, interleave, machine, wait  # noqa: E402

HAND, BLOX = "plain JAX", "blox"
# Column name -> module under benchmarks/ and its distribution (for the version line).
PEERS = {"Flax NNX": ("peers_flax", "flax"), "Equinox": ("peers_equinox", "equinox"),
         "Haiku": ("peers_haiku", "dm-haiku")}
COLUMNS = (HAND, BLOX, *PEERS)
FLAX_NNX_JIT = "Flax NNX, nnx.jit"
AA = "plain JAX, second jit"
# The documented way to initialise: blox's example jits init(); the peers'
# guides and READMEs construct (or call init) eagerly.
DOCUMENTED_INIT = {HAND: True, BLOX: True, "Flax NNX": False, "Equinox": False, "Haiku": False}


@dataclasses.dataclass(frozen=True)
class Setup:
  mlp: tuple[int, int, int]  # depth, width, batch
  model: lm.Sizes
  steps: tuple[int, int]  # per round: MLP, transformer
  rounds: tuple[int, int]
  repeats: int  # compile and init
  fresh_process: bool  # init timed in a new Python process each time


FULL = Setup((64, 4, 16), transformer.FULL.model, (50, 5), (51, 21), 3, True)
SMOKE = Setup((4, 4, 16), dataclasses.replace(transformer.SMOKE.model, num_layers=1),
              (1, 1), (1, 1), 1, False)


def peer(column: str) -> Any:
  return importlib.import_module(f"benchmarks.{PEERS[column][0]}")


def blox_mlp(depth: int, width: int, x: jax.Array, y: jax.Array) -> Trainer:
  model, params = train_step.init_blox(depth, width, x)
  return _jax_trainer(train_step.blox_step_fn(model), params, (x, y), "bx.Linear, bx.value_and_grad")


def hand_mlp(depth: int, width: int, x: jax.Array, y: jax.Array) -> Trainer:
  _, params = train_step.init_blox(depth, width, x)
  weights = train_step.to_weights(params, depth)
  return _jax_trainer(train_step.hand_step, weights, (x, y), "dicts of arrays")


def blox_transformer(sizes: lm.Sizes, vocab: int, ids: jax.Array, targets: jax.Array) -> Trainer:
  model, init = transformer.build(sizes)
  step = transformer.blox_train_step(model)
  return _jax_trainer(step, jax.jit(init)(), (ids, targets), "bx.Repeat, bx.value_and_grad")


def hand_transformer(sizes: lm.Sizes, vocab: int, ids: jax.Array, targets: jax.Array) -> Trainer:
  _, init = transformer.build(sizes)
  weights = transformer.hand_weights(jax.jit(init)(), sizes)
  return _jax_trainer(transformer.hand_train_step(sizes.rope_base), weights, (ids, targets),
                      "benchmarks/transformer_reference.py")


def _jax_trainer(
    step: Callable[..., tuple[Any, jax.Array]], params: Any, batch: tuple[jax.Array, ...],
    note: str,
) -> Trainer:
  jitted = jax.jit(step, donate_argnums=0)

  def carry(params: Any, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = jitted(params, *batch)
    return result

  def compile_fresh() -> None:
    jax.jit(lambda *a: step(*a)).trace(params, *batch).lower().compile()

  trainable = params.split()[0] if isinstance(params, bx.Params) else params
  return Trainer(carry, (params, jnp.zeros(())), count_values(trainable), compile_fresh, note)


def checked(trainers: dict[str, Trainer], what: str) -> dict[str, tuple[Any, ...]]:
  """One step of each; every loss a float32 scalar, every param count the hand-written one's."""
  expected = trainers[HAND].param_count
  states = {}
  for name, trainer in trainers.items():
    state = trainer.step(*trainer.state)
    loss = state[-1]
    if loss.shape != () or loss.dtype != jnp.float32 or not bool(jnp.isfinite(loss)):
      raise AssertionError(f"{what}, {name}: the loss is {loss!r}, not a finite float32 scalar.")
    if trainer.param_count != expected:
      raise AssertionError(
          f"{what}, {name}: {trainer.param_count:,} parameters, but the hand-written model has"
          f" {expected:,}; the models differ."
      )
    states[name] = state
  return states


def format_cell(seconds: float, ratio: float | None) -> str:
  text = format_seconds(seconds)
  if ratio is None:
    return text
  return f"{text} ({ratio:.3f}x)" if ratio >= 0.01 else f"{text} ({ratio:.1e}x)"


Cells = dict[str, str]


def timed_row(trainers: dict[str, Trainer], what: str, steps: int, rounds: int) -> dict[str, Any]:
  states = checked(trainers, what)
  cases = {name: (trainers[name].step, states[name]) for name in trainers}
  return {
      name: (c.blox_s, c.ratio)
      for name, c in interleave(cases, HAND, steps=steps, rounds=rounds).items()
  }


def train_rows(setup: Setup) -> tuple[list[tuple[str, Cells]], int, int]:
  depth, width, batch = setup.mlp
  x = jax.random.normal(jax.random.key(1), (batch, width))
  y = jax.random.normal(jax.random.key(2), (batch, width))
  makers: dict[str, Callable[..., Trainer]] = {HAND: hand_mlp, AA: hand_mlp, BLOX: blox_mlp}
  makers.update({column: peer(column).mlp for column in PEERS})
  makers[FLAX_NNX_JIT] = peer("Flax NNX").mlp_nnx_jit
  mlp = {name: make(depth, width, x, y) for name, make in makers.items()}
  times = timed_row(mlp, "MLP", setup.steps[0], setup.rounds[0])
  label = f"{depth}x Linear({width}), batch {batch}"
  rows = [
      (f"MLP train step ({label})", {c: format_cell(*times[c]) for c in COLUMNS}),
      (f"MLP train step, Flax under nnx.jit ({label})",
       {HAND: format_cell(*times[HAND]), "Flax NNX": format_cell(*times[FLAX_NNX_JIT])}),
      ("noise floor: plain JAX vs a second jit of itself (in the blox column)",
       {HAND: format_cell(*times[HAND]), BLOX: format_cell(*times[AA])}),
  ]

  sizes = setup.model
  ids, targets = transformer.batch(sizes)
  lm_makers = {HAND: hand_transformer, BLOX: blox_transformer}
  lm_makers.update({column: peer(column).transformer for column in PEERS})
  trainers = {
      name: make(sizes, transformer.VOCAB_SIZE, ids, targets) for name, make in lm_makers.items()
  }
  times = timed_row(trainers, "transformer", setup.steps[1], setup.rounds[1])
  model = (f"{sizes.num_layers} layers, {sizes.features} features,"
           f" batch {sizes.batch_size}x{sizes.sequence_length}")
  rows.append((f"transformer train step ({model})",
               {c: format_cell(*times[c]) for c in COLUMNS}))

  compile_times: dict[str, list[float]] = {c: [] for c in COLUMNS}
  for _ in range(setup.repeats):
    for column in COLUMNS:  # interleaved: every library once per repeat
      start = time.perf_counter()
      trainers[column].compile()
      compile_times[column].append(time.perf_counter() - start)
  median = {c: statistics.median(t) for c, t in compile_times.items()}
  rows.append((f"compile transformer train step ({model})",
               {c: format_cell(median[c], median[c] / median[HAND]) for c in COLUMNS}))
  return rows, mlp[HAND].param_count, trainers[HAND].param_count


def init_params(column: str, sizes: lm.Sizes, jitted: bool) -> Any:
  """The transformer's params, created the library's way."""
  if column == HAND:
    def create() -> reference.Weights:
      return reference.init(jax.random.key(0), transformer.VOCAB_SIZE, sizes.num_layers,
                            sizes.features, sizes.num_heads, sizes.num_kv_heads, sizes.mlp_size)
    return jax.jit(create)() if jitted else create()
  if column == BLOX:
    _, init = transformer.build(sizes)
    return jax.jit(init)() if jitted else init()
  return peer(column).init(sizes, transformer.VOCAB_SIZE, jitted)


def init_seconds(column: str, setup: Setup, jitted: bool) -> float:
  """Seconds to create the params; in a fresh process (imports not timed) for the full run."""
  if not setup.fresh_process:
    start = time.perf_counter()
    wait(init_params(column, setup.model, jitted))
    return time.perf_counter() - start
  command = [sys.executable, __file__, "--init-only", column]
  result = subprocess.run(
      [*command, *(["--jitted"] if jitted else [])],
      capture_output=True, text=True, check=False, cwd=_ROOT,
  )
  if result.returncode != 0:
    raise RuntimeError(f"Timing the init of {column} failed:\n{result.stderr}")
  return float(result.stdout.split()[-1])


def init_rows(setup: Setup) -> list[tuple[str, Cells]]:
  expected = count_values(init_params(HAND, setup.model, True))
  for column in COLUMNS[1:]:
    params = init_params(column, setup.model, True)
    trainable = params.split()[0] if isinstance(params, bx.Params) else params
    if count_values(trainable) != expected:
      raise AssertionError(f"init, {column}: {count_values(trainable):,} values, not {expected:,}.")
  rows = []
  for jitted in (False, True):
    times: dict[str, list[float]] = {c: [] for c in COLUMNS}
    for _ in range(setup.repeats):
      for column in COLUMNS:
        times[column].append(init_seconds(column, setup, jitted))
    median = {c: statistics.median(t) for c, t in times.items()}
    cells = {
        c: format_cell(median[c], median[c] / median[HAND])
        + (" *" if DOCUMENTED_INIT[c] == jitted else "")
        for c in COLUMNS
    }
    how = "jitted" if jitted else "eager"
    rows.append((f"init, {how} ({setup.model.num_layers} layers, {setup.model.features} features)",
                 cells))
  return rows


def decode_rows(setup: Setup, lm_count: int) -> list[tuple[str, Cells]]:
  """blox and hand-written (benchmarks/transformer.py's decoders), and Flax NNX's `nnx.Cache`.

  Equinox and Haiku ship no key/value cache (nor attention layers that would
  use one), so their cells say so.
  """
  base = transformer.SMOKE if setup is SMOKE else transformer.FULL
  decoding = dataclasses.replace(base, model=setup.model)
  blox, hand, _ = transformer.decoders(decoding)
  tokens = hand[1][2]
  flax_step, flax_state, flax_count = peer("Flax NNX").decoder(
      setup.model, transformer.VOCAB_SIZE, tokens
  )
  if flax_count != lm_count:
    raise AssertionError(f"decoding, Flax NNX: {flax_count:,} parameters, not {lm_count:,}.")
  shapes = {name: step(*state)[-1].shape
            for name, (step, state) in (("blox", blox), ("Flax NNX", (flax_step, flax_state)))}
  if shapes["Flax NNX"] != shapes["blox"]:
    raise AssertionError(
        f"decoding: Flax NNX's scores are {shapes['Flax NNX']}, not blox's {shapes['blox']}."
    )
  cases = {HAND: hand, BLOX: blox, "Flax NNX": (flax_step, flax_state)}
  times = interleave(cases, HAND, steps=decoding.decode_calls, rounds=decoding.rounds)
  cells = {
      name: format_cell(c.blox_s / decoding.decode_tokens, c.ratio) for name, c in times.items()
  }
  cells.update({column: "no cache" for column in ("Equinox", "Haiku")})
  name = (f"cached decoding per token ({setup.model.num_layers} layers,"
          f" batch {decoding.decode_batch}, {decoding.decode_tokens} tokens per scan)")
  return [(name, cells)]


def format_peers_table(rows: list[tuple[str, Cells]]) -> str:
  """A Markdown table: one row per benchmark, one column per library."""
  header = ("benchmark", *COLUMNS)
  lines = [(name, *(cells.get(c, "-") for c in COLUMNS)) for name, cells in rows]
  widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

  def join(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

  separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([join(header), separator, *(join(line) for line in lines)])


def versions() -> str:
  names = ("jax", "jaxlib", "flax", "equinox", "dm-haiku", "optax", "blox")
  return ", ".join(f"{name} {metadata.version(name)}" for name in names)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round, for tests")
  parser.add_argument("--init-only", choices=COLUMNS, help=argparse.SUPPRESS)
  parser.add_argument("--jitted", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  setup = SMOKE if args.smoke else FULL
  if args.init_only:  # one measurement of init_seconds, in this fresh process
    start = time.perf_counter()
    wait(init_params(args.init_only, FULL.model, args.jitted))
    print(time.perf_counter() - start)
    return 0

  start = time.perf_counter()

  def progress(part: str) -> None:
    print(f"running: {part} ({time.perf_counter() - start:.0f} s so far)", file=sys.stderr,
          flush=True)

  progress("train steps and compile")
  rows, mlp_count, lm_count = train_rows(setup)
  progress("init")
  rows.extend(init_rows(setup))
  progress("decoding")
  rows.extend(decode_rows(setup, lm_count))
  progress("done")
  print(f"machine: {machine()}")
  print(f"versions: {versions()}")
  print(f"mode: {'smoke (tiny sizes, numbers mean nothing)' if args.smoke else 'full'}")
  print(f"checks: every model has the hand-written one's parameters (MLP {mlp_count:,},"
        f" transformer {lm_count:,}) and a float32 scalar loss")
  print()
  print(format_peers_table(rows))
  print()
  print("Each cell: median seconds per step (ratio to plain JAX, the median of the per-round"
        " ratios; for compile and init, ratio of the medians). * marks each library's"
        " documented way to initialise. The noise-floor row holds the second jit in the"
        " blox column.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
