"""Transformer benchmark: the examples' language model (benchmarks/lm.py) at scale.

The model is the examples' (examples/transformer_model.py), in its own module
benchmarks/lm.py: pre-norm blocks of grouped-query attention with rotary
embeddings and a gated MLP, float32 params and bfloat16 compute, a
weight-tied readout; `bx.Repeat` stacks the blocks. It is compared with:

- the same blocks unrolled: one `Block` module per layer in a Python loop
  (`lm.UnrolledLM`);
- the same model hand-written in plain JAX (benchmarks/transformer_reference.py):
  pure functions over stacked weight arrays, `lax.scan` over the layers, the
  weights copied from the blox params. The benchmark checks that both
  compute the same loss (and, for decoding, the same scores) first.

Rows (each ratio measured in this one run, the two sides interleaved):

- compile time (trace + lower + compile) of an SGD train step at 4, 16 and
  48 layers, with `Repeat` and unrolled, each against its own 4-layer time;
- the train step, `Repeat` vs hand-written and unrolled vs hand-written;
- cached decoding per token (one `lax.scan` of greedy `decode_step`s per
  call), blox vs a hand-written decoder over a `dynamic_update_slice` cache;
- the train step's temporary memory (the compiled executable's
  `memory_analysis()`) with `remat_policy='full'` vs without;
- initialisation the documented way, `jax.jit(init)()` (trace, compile and
  run, on a new function each time), against calling `init()` eagerly.

The file runs past 400 lines because its five parts share one setup (the
sizes, the two train steps, the decoders) and make one table.

Example:
  >>> rows = run(smoke=True)  # doctest: +SKIP
  >>> rows[0].name
  'compile train step, Repeat, 2 layers (vs 1)'
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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
from benchmarks import lm  # noqa: E402
from benchmarks import transformer_reference as reference  # noqa: E402
from benchmarks.timing import Row, compare, count_ops, format_seconds  # noqa: E402

__all__ = ["run"]

LEARNING_RATE = 0.01
VOCAB_SIZE = 128
MODEL_PATH = ("lm", "model")
# Scores are bfloat16 sums of a few hundred products; the two sides order
# them differently.
SCORES_TOLERANCE = 0.1
LOSS_TOLERANCE = 2e-2


@dataclasses.dataclass(frozen=True)
class Setup:
  """The sizes of one benchmark run."""

  model: lm.Sizes  # num_layers is the train-step and decoding depth
  compile_depths: tuple[int, ...]
  memory_depth: int
  memory_length: int
  init_depth: int  # initialised besides the model's own depth
  decode_batch: int
  decode_tokens: int
  decode_calls: int  # per round: one call is short, so rounds take more of them
  steps: int
  rounds: int
  repeats: int


def _sizes(num_layers: int, features: int, length: int, batch: int) -> lm.Sizes:
  return lm.Sizes(
      num_layers=num_layers, features=features, num_heads=4, num_kv_heads=2,
      mlp_size=3 * features, sequence_length=length, batch_size=batch,
  )


FULL = Setup(
    model=_sizes(4, 128, 128, 8), compile_depths=(4, 16, 48), memory_depth=16,
    memory_length=256, init_depth=48, decode_batch=4, decode_tokens=64, decode_calls=20,
    steps=5, rounds=21, repeats=3,
)
SMOKE = Setup(
    model=_sizes(2, 16, 8, 2), compile_depths=(1, 2), memory_depth=2,
    memory_length=8, init_depth=2, decode_batch=1, decode_tokens=4, decode_calls=1,
    steps=1, rounds=1, repeats=1,
)


Model = lm.Model


def build(sizes: lm.Sizes, unrolled: bool = False) -> tuple[Model, Callable[[], bx.Params]]:
  """The model (stacked blocks, or unrolled) and its init function."""
  return lm.build(sizes, VOCAB_SIZE, unrolled)


def hand_weights(params: bx.Params, sizes: lm.Sizes, unrolled: bool = False) -> reference.Weights:
  blocks: list[tuple[str, ...]]
  if unrolled:
    blocks = [(*MODEL_PATH, f"block{i}") for i in range(sizes.num_layers)]
  else:
    blocks = [(*MODEL_PATH, "blocks", "layer")]
  return reference.weights_from(params, MODEL_PATH, blocks, stacked=not unrolled)


def blox_train_step(model: Model) -> Callable[..., tuple[bx.Params, jax.Array]]:
  """The SGD step `(params, ids, targets) -> (params, loss)` of a blox model."""

  def loss_fn(
      params: bx.Params, ids: jax.Array, targets: jax.Array
  ) -> tuple[jax.Array, bx.Params]:
    scores, params = model(params, ids)
    return bx.softmax_cross_entropy(scores, targets).mean(), params

  loss_and_grads = bx.value_and_grad(loss_fn)

  def step(params: bx.Params, ids: jax.Array, targets: jax.Array) -> tuple[bx.Params, jax.Array]:
    loss, params, grads = loss_and_grads(params, ids, targets)
    trainable, rest = params.split()
    trainable = jax.tree.map(lambda w, g: w - LEARNING_RATE * g, trainable, grads)
    return trainable.merge(rest), loss

  return step


def hand_train_step(rope_base: float) -> Callable[..., tuple[reference.Weights, jax.Array]]:
  def step(
      weights: reference.Weights, ids: jax.Array, targets: jax.Array
  ) -> tuple[reference.Weights, jax.Array]:
    loss, grads = jax.value_and_grad(reference.loss)(weights, ids, targets, rope_base)
    return jax.tree.map(lambda w, g: w - LEARNING_RATE * g, weights, grads), loss

  return step


def batch(sizes: lm.Sizes, length: int | None = None) -> tuple[jax.Array, jax.Array]:
  length = length or sizes.sequence_length
  ids = jax.random.randint(jax.random.key(1), (sizes.batch_size, length + 1), 0, VOCAB_SIZE)
  return ids[:, :-1], ids[:, 1:]


def compile_seconds(step: Callable[..., Any], args: tuple[Any, ...]) -> float:
  """Trace + lower + compile of `step` on a new function object (no cache answers)."""
  start = time.perf_counter()
  jax.jit(lambda *a: step(*a)).trace(*args).lower().compile()
  return time.perf_counter() - start


def compile_rows(setup: Setup) -> list[Row]:
  ids, targets = batch(setup.model)
  cases: dict[tuple[bool, int], tuple[Callable[..., Any], tuple[Any, ...]]] = {}
  for unrolled in (False, True):
    for depth in setup.compile_depths:
      sizes = dataclasses.replace(setup.model, num_layers=depth)
      model, init = build(sizes, unrolled)
      shapes = jax.eval_shape(init)  # tracing needs only shapes
      cases[unrolled, depth] = (blox_train_step(model), (shapes, ids, targets))
  times: dict[tuple[bool, int], list[float]] = {case: [] for case in cases}
  for _ in range(setup.repeats):
    for case, (step, args) in cases.items():  # interleaved: every case once per repeat
      times[case].append(compile_seconds(step, args))
  median = {case: statistics.median(t) for case, t in times.items()}
  shallow, deep = setup.compile_depths[0], setup.compile_depths[-1]
  rows = []
  for unrolled, label in ((False, "Repeat"), (True, "unrolled")):
    for depth in setup.compile_depths[1:]:
      target = "<= 1.30x" if depth == deep and not unrolled else "report"
      rows.append(Row(
          f"compile train step, {label}, {depth} layers (vs {shallow})",
          format_seconds(median[unrolled, depth]), format_seconds(median[unrolled, shallow]),
          median[unrolled, depth] / median[unrolled, shallow], target,
          f"trace+lower+compile, median of {setup.repeats}; baseline: {shallow} layers",
      ))
  rows.append(Row(
      f"compile train step, {deep} layers, Repeat vs unrolled",
      format_seconds(median[False, deep]), format_seconds(median[True, deep]),
      median[False, deep] / median[True, deep], "report", "baseline: unrolled blox",
  ))
  return rows


def train_rows(setup: Setup) -> list[Row]:
  sizes = setup.model
  ids, targets = batch(sizes)
  hand = jax.jit(hand_train_step(sizes.rope_base), donate_argnums=0)
  rows = []
  for unrolled, label in ((False, "Repeat"), (True, "unrolled")):
    model, init = build(sizes, unrolled)
    params = jax.jit(init)()
    weights = hand_weights(params, sizes, unrolled)
    step = blox_train_step(model)
    ops = (
        f"{count_ops(step, params, ids, targets)} vs"
        f" {count_ops(hand_train_step(sizes.rope_base), weights, ids, targets)} ops"
    )
    blox = jax.jit(step, donate_argnums=0)
    params, blox_loss = blox(params, ids, targets)
    weights, hand_loss = hand(weights, ids, targets)
    if abs(float(blox_loss) - float(hand_loss)) > LOSS_TOLERANCE:
      raise AssertionError(
          f"The {label} model and the hand-written one differ: loss {float(blox_loss)}"
          f" vs {float(hand_loss)}."
      )

    def blox_carry(p: bx.Params, _: Any) -> tuple[Any, ...]:
      result: tuple[Any, ...] = blox(p, ids, targets)
      return result

    def hand_carry(w: reference.Weights, _: Any) -> tuple[Any, ...]:
      result: tuple[Any, ...] = hand(w, ids, targets)
      return result

    result = compare(
        blox_carry, (params, blox_loss), hand_carry, (weights, hand_loss),
        steps=setup.steps, rounds=setup.rounds,
    )
    rows.append(Row(
        f"transformer train step, {label} ({sizes.num_layers} layers, {sizes.features} features,"
        f" batch {sizes.batch_size}x{sizes.sequence_length})",
        format_seconds(result.blox_s), format_seconds(result.baseline_s), result.ratio,
        "<= 1.05x" if not unrolled else "report",
        f"median of {result.rounds} rounds; {ops}; losses agree",
    ))
  return rows


def decoders(setup: Setup) -> tuple[Any, Any, float]:
  """blox's and the hand-written decoder as `(step, state)`, and their largest scores difference."""
  sizes = setup.model
  tokens_per_call, rows_per_batch = setup.decode_tokens, setup.decode_batch
  lm_model, init = lm.build(sizes, VOCAB_SIZE)
  assert isinstance(lm_model, lm.LanguageModel)
  params = jax.jit(init)()
  weights = hand_weights(params, sizes)
  tokens = jax.random.randint(jax.random.key(2), (tokens_per_call, rows_per_batch), 0, VOCAB_SIZE)
  caches, _ = jax.jit(lm_model.initial_caches, static_argnums=2)(
      params, tokens.T, tokens_per_call
  )
  cache = reference.empty_cache(weights, rows_per_batch, tokens_per_call)

  # Each call decodes `tokens_per_call` tokens into a fresh cache, the given
  # tokens fed in (teacher forcing), and returns the greedy choices, which
  # the next call is fed: every call depends on the one before.
  @jax.jit
  def blox_decode(
      p: bx.Params, c: bx.KVCache, forced: jax.Array
  ) -> tuple[bx.Params, bx.KVCache, jax.Array, jax.Array]:
    def one(carry: tuple[bx.Params, bx.KVCache], token: jax.Array) -> tuple[Any, jax.Array]:
      p, c = carry
      (scores, c), p = lm_model.decode_step(p, token, c)
      return (p, c), scores

    _, scores = jax.lax.scan(one, (p, c), forced)
    return p, c, jnp.argmax(scores, axis=-1), scores

  @jax.jit
  def hand_decode(
      w: reference.Weights, c: reference.Cache, forced: jax.Array
  ) -> tuple[reference.Weights, reference.Cache, jax.Array, jax.Array]:
    def one(cache: reference.Cache, inputs: tuple[jax.Array, jax.Array]) -> tuple[Any, jax.Array]:
      token, position = inputs
      scores, cache = reference.decode(w, token, cache, position, sizes.rope_base)
      return cache, scores

    _, scores = jax.lax.scan(one, c, (forced, jnp.arange(forced.shape[0])))
    return w, c, jnp.argmax(scores, axis=-1), scores

  blox_scores = blox_decode(params, caches, tokens)[3].astype(jnp.float32)
  hand_scores = hand_decode(weights, cache, tokens)[3].astype(jnp.float32)
  error = float(jnp.max(jnp.abs(blox_scores - hand_scores)))
  if error > SCORES_TOLERANCE:
    raise AssertionError(f"blox and hand-written decoding differ: max |scores difference| {error}.")

  def blox_carry(p: Any, c: Any, forced: Any, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = blox_decode(p, c, forced)
    return result

  def hand_carry(w: Any, c: Any, forced: Any, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = hand_decode(w, c, forced)
    return result

  return ((blox_carry, (params, caches, tokens, None)),
          (hand_carry, (weights, cache, tokens, None)), error)


def decode_rows(setup: Setup) -> list[Row]:
  blox, hand, error = decoders(setup)
  result = compare(*blox, *hand, steps=setup.decode_calls, rounds=setup.rounds)
  per_token = (result.blox_s / setup.decode_tokens, result.baseline_s / setup.decode_tokens)
  return [Row(
      f"cached decoding per token ({setup.model.num_layers} layers, batch {setup.decode_batch},"
      f" {setup.decode_tokens} tokens per scan)",
      format_seconds(per_token[0]), format_seconds(per_token[1]), result.ratio, "<= 1.05x",
      f"median of {result.rounds} rounds; scores agree within {error:.3f}",
  )]


def memory_rows(setup: Setup) -> list[Row]:
  policies = ("full",) if setup is SMOKE else ("full", "dots_with_no_batch_dims_saveable")
  temp: dict[str | None, int] = {}
  for policy in (None, *policies):
    sizes = dataclasses.replace(
        setup.model, num_layers=setup.memory_depth, sequence_length=setup.memory_length,
        remat_policy=policy,
    )
    model, init = build(sizes)
    ids, targets = batch(sizes)
    compiled = jax.jit(blox_train_step(model)).trace(jax.eval_shape(init), ids, targets)
    analysis = compiled.lower().compile().memory_analysis()
    temp[policy] = int(analysis.temp_size_in_bytes)

  def mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB"

  label = (
      f"{setup.memory_depth} layers, batch {setup.model.batch_size}x{setup.memory_length}"
  )
  return [
      Row(
          f"train step temp memory, remat_policy={policy!r} vs None ({label})",
          mib(temp[policy]), mib(temp[None]), temp[policy] / temp[None], "report",
          "temp_size_in_bytes of compiled.memory_analysis(); baseline: no remat",
      )
      for policy in policies
  ]


# Measured in a fresh process each time: eager initialisation runs op by
# op, and JAX compiles each distinct op on first use, so a warm process
# would hide most of what a user waits for. Imports are not timed.
_INIT_TIMER = """
import sys, time
sys.path.insert(0, {root!r})
import jax
from benchmarks import lm
from benchmarks.timing import wait
_, init = lm.build(lm.{sizes!r}, {vocab})
start = time.perf_counter()
wait(jax.jit(init)() if {jitted} else init())
print(time.perf_counter() - start)
"""


def init_seconds(sizes: lm.Sizes, jitted: bool) -> float:
  """Seconds to initialise the model of `sizes` in a new Python process."""
  code = _INIT_TIMER.format(root=str(_ROOT), sizes=sizes, vocab=VOCAB_SIZE, jitted=jitted)
  result = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=_ROOT
  )
  if result.returncode != 0:
    raise RuntimeError(f"Timing the initialisation failed:\n{result.stderr}")
  return float(result.stdout.split()[-1])


def init_rows(setup: Setup) -> list[Row]:
  """`jax.jit(init)()` (trace, compile, run) vs `init()` op by op, each in a fresh process."""
  depths = tuple(sorted({setup.model.num_layers, setup.init_depth}))
  times: dict[tuple[int, bool], list[float]] = {
      (depth, jitted): [] for depth in depths for jitted in (True, False)
  }
  for _ in range(setup.repeats):
    for depth, jitted in times:  # interleaved
      sizes = dataclasses.replace(setup.model, num_layers=depth)
      times[depth, jitted].append(init_seconds(sizes, jitted))
  rows = []
  for depth in depths:
    jit_s = statistics.median(times[depth, True])
    eager_s = statistics.median(times[depth, False])
    rows.append(Row(
        f"init, jax.jit(init)() vs eager init() ({depth} layers, {setup.model.features} features)",
        format_seconds(jit_s), format_seconds(eager_s), jit_s / eager_s, "report",
        f"the documented way; fresh process each, median of {setup.repeats}; baseline: eager",
    ))
  return rows


def run(smoke: bool = False) -> list[Row]:
  """Every row of this benchmark, in the order of the module docstring."""
  setup = SMOKE if smoke else FULL
  rows: list[Row] = []
  for part in (compile_rows, train_rows, decode_rows, memory_rows, init_rows):
    print(f"  transformer: {part.__name__} ...", file=sys.stderr, flush=True)
    rows.extend(part(setup))
  return rows


if __name__ == "__main__":
  from benchmarks.timing import format_table, machine

  # uv run benchmarks/transformer.py [--smoke]; benchmarks/run.py runs these rows too.
  smoke = "--smoke" in sys.argv[1:]
  table = format_table(run(smoke))
  print(f"machine: {machine()}")
  print(f"mode: {'smoke (tiny sizes, numbers mean nothing)' if smoke else 'full'}")
  print()
  print(table)
