"""Sharded training benchmark: the transformer's train step on a mesh of Explicit axes.

The model is the benchmarks' language model (benchmarks/lm.py), its params
named with the logical axes that examples/transformer_model.py gives its own
('vocab', 'embed', 'heads', 'kv_heads', 'mlp'; `LOGICAL_AXES`), laid out by
the FSDP + tensor-parallel `RULES` of examples/fsdp_train.py on a (4, 2)
('data', 'model') mesh of 8 devices: 'embed' over 'data', the heads, the MLP
and the vocabulary over 'model', the batch over 'data'. The step is the
example's: `bx.value_and_grad` of the cross-entropy, AdamW (weight decay on
the kernels) after gradient clipping on a warmup-cosine schedule, params and
optimizer state donated and kept in their layout (`out_shardings`).

Rows (ratios measured in one run, the cases interleaved):

- the train step on a mesh of `AxisType.Explicit` axes (sharding in types)
  against the same mesh with `AxisType.Auto` axes (the compiler propagates
  the shardings); target <= 1.02x;
- the Explicit step against the same step on one device (report);
- trace + lower + compile of the step, Explicit against Auto (report), with
  the collectives each compiled program holds.

The 8 devices are simulated CPU devices (`--xla_force_host_platform_device_count=8`),
which must be set before jax starts; `benchmarks/run.py` has one device in
its process, so `run` measures in a child process (`python -m
benchmarks.sharded --child`) that prints its rows as JSON. Before timing, the
child checks that all three cases compute the same first loss, and after
timing that they still agree (every case ran the same number of steps).

Example:
  >>> rows = run(smoke=True)  # doctest: +SKIP
  >>> rows[0].name.startswith('sharded train step, Explicit vs Auto mesh')
  True
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
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
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

import blox as bx  # noqa: E402
from benchmarks import lm  # noqa: E402
from benchmarks.timing import Row, format_seconds, format_table, interleaved_times  # noqa: E402

__all__ = ["LOGICAL_AXES", "RULES", "run"]

DEVICES = 8
MESH_SHAPE = (4, 2)
MESH_AXES = ("data", "model")
VOCAB_SIZE = 128

# examples/fsdp_train.py's rules: 'embed' splits every matrix over 'data'
# (FSDP), heads, the MLP and the vocabulary split over 'model' (tensor parallel).
RULES = (
    ("batch", "data"),
    ("embed", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
)

# benchmarks/lm.py's params name no axes (nothing there is sharded), and the
# benchmarks never import an example: the names examples/transformer_model.py
# gives each param, by the last two entries of its path.
LOGICAL_AXES: dict[tuple[str, ...], tuple[str | None, ...]] = {
    ("embed", "embedding"): ("vocab", "embed"),
    ("attention_norm", "scale"): ("embed",),
    ("mlp_norm", "scale"): ("embed",),
    ("final_norm", "scale"): ("embed",),
    ("query", "kernel"): ("embed", "heads", None),
    ("key", "kernel"): ("embed", "kv_heads", None),
    ("value", "kernel"): ("embed", "kv_heads", None),
    ("out", "kernel"): ("heads", None, "embed"),
    ("gate", "kernel"): ("embed", "mlp"),
    ("up", "kernel"): ("embed", "mlp"),
    ("down", "kernel"): ("mlp", "embed"),
}

# The first losses of the two meshes: the same program partitioned two ways,
# products in bfloat16 (2^-8 relative rounding) summed in another order.
# Against one device, and after the timed steps (rounding compounds): looser.
MESH_LOSS_TOLERANCE = 5e-3
LOSS_TOLERANCE = 2e-2
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute", "all-to-all")


@dataclasses.dataclass(frozen=True)
class Setup:
  """The sizes of one run."""

  model: lm.Sizes
  steps: int  # per round
  rounds: int
  compile_repeats: int


def _sizes(num_layers: int, features: int, length: int, batch: int) -> lm.Sizes:
  return lm.Sizes(
      num_layers=num_layers, features=features, num_heads=4, num_kv_heads=2,
      mlp_size=3 * features, sequence_length=length, batch_size=batch,
  )


FULL = Setup(model=_sizes(4, 128, 64, 16), steps=2, rounds=9, compile_repeats=2)
SMOKE = Setup(model=_sizes(1, 16, 8, 4), steps=1, rounds=1, compile_repeats=1)


def with_logical_axes(params: bx.Params) -> bx.Params:
  """`params` with each trainable param's logical axes (`LOGICAL_AXES`) in its metadata."""

  def named(path: tuple[str, ...], param: bx.Param) -> bx.Param:
    if not param.trainable:  # the Rng's seed and counter: replicated
      return param
    axes = LOGICAL_AXES.get(path[-2:])
    if axes is None:
      raise KeyError(f"No logical axes for {path}: benchmarks/lm.py has a new param.")
    return param.replace(metadata={**param.metadata, bx.SHARDING: axes})

  return bx.Params({path: named(path, p) for path, p in params.items()}, locked=params.is_locked)


def make_optimizer() -> optax.GradientTransformation:
  """examples/transformer_model.py's optimizer at its FULL sizes."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=3e-3, warmup_steps=30, decay_steps=300, end_value=3e-4,
  )
  kernels = lambda params: bx.param_mask(params, lambda path, _: path[-1] == "kernel")  # noqa: E731
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, b2=0.95, weight_decay=0.1, mask=kernels),
  )


State = tuple[bx.Params, optax.OptState]
StepFn = Callable[[State, jax.Array, jax.Array], tuple[State, jax.Array]]


def model_and_step(sizes: lm.Sizes) -> tuple[Callable[[], State], StepFn]:
  """`(init_state, step)`: the params and AdamW state, and the unjitted train step."""
  model, init = lm.build(sizes, VOCAB_SIZE)
  optimizer = make_optimizer()

  def init_state() -> State:
    params = with_logical_axes(init())
    return params, optimizer.init(params.split()[0])

  def loss_fn(params: bx.Params, ids: jax.Array, targets: jax.Array) -> tuple[jax.Array, bx.Params]:
    scores, params = model(params, ids)
    return bx.softmax_cross_entropy(scores, targets).mean(), params

  def step(state: State, ids: jax.Array, targets: jax.Array) -> tuple[State, jax.Array]:
    params, opt_state = state
    loss, params, grads = bx.value_and_grad(loss_fn)(params, ids, targets)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return (optax.apply_updates(trainable, updates).merge(rest), opt_state), loss

  return init_state, step


@dataclasses.dataclass(frozen=True)
class Case:
  """One way to run the step: on a mesh (its state and batch laid out there) or on one device."""

  mesh: Mesh | None
  state: State
  batch: tuple[jax.Array, jax.Array]
  out_shardings: Any  # None on one device

  def context(self) -> contextlib.AbstractContextManager[Any]:
    # Tracing and calling under the mesh: jit's cache is keyed by it, and on
    # Explicit axes the step's operations read it.
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def jit(self, step: StepFn) -> Any:
    if self.out_shardings is None:
      return jax.jit(step, donate_argnums=0)
    return jax.jit(step, out_shardings=self.out_shardings, donate_argnums=0)


def make_case(sizes: lm.Sizes, kind: AxisType | None) -> Case:
  """The state and batch on an Explicit or Auto (4, 2) mesh, or on one device (None)."""
  init_state, _ = model_and_step(sizes)
  ids = jax.random.randint(jax.random.key(1), (sizes.batch_size, sizes.sequence_length + 1), 0,
                           VOCAB_SIZE)
  batch = (ids[:, :-1], ids[:, 1:])
  if kind is None:
    return Case(None, jax.jit(init_state)(), batch, None)
  mesh = jax.make_mesh(MESH_SHAPE, MESH_AXES, axis_types=(kind,) * len(MESH_AXES))
  target = bx.parallel.abstract_params(init_state, mesh, rules=RULES)
  shardings = (jax.tree.map(lambda leaf: leaf.sharding, target), None)
  state = bx.parallel.init_sharded(init_state, mesh, rules=RULES)
  return Case(mesh, state, bx.parallel.shard_batch(batch, mesh), shardings)


def collectives(hlo: str) -> str:
  """`'4 all-gather, 2 all-reduce'`: the collective instructions of a compiled HLO text."""
  counts = {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo)) for op in COLLECTIVES}
  return ", ".join(f"{n} {op}" for op, n in counts.items() if n) or "none"


def compile_seconds(case: Case, fn: StepFn) -> tuple[float, str]:
  """Trace + lower + compile of a fresh jit of `fn`, and the collectives of the program."""
  with case.context():
    start = time.perf_counter()
    compiled = case.jit(fn).lower(case.state, *case.batch).compile()
    seconds = time.perf_counter() - start
  return seconds, collectives(compiled.as_text())


def check_sharded(case: Case) -> None:
  """Every trainable param of a mesh case is split by the rules (else the rows compare nothing)."""
  params = case.state[0]
  for path, param in params.split()[0].items():
    if all(axis is None for axis in param.value.sharding.spec):
      raise AssertionError(f"{path} is not sharded on the mesh: {param.value.sharding}.")


def _median_ratio(a: list[float], b: list[float]) -> float:
  return statistics.median(x / y for x, y in zip(a, b))


def _check_losses(losses: dict[str, float], when: str, mesh_tolerance: float) -> None:
  """Explicit against Auto within `mesh_tolerance`, against one device within `LOSS_TOLERANCE`."""
  explicit, auto, one = losses["explicit"], losses["auto"], losses["one device"]
  if abs(explicit - auto) > mesh_tolerance:
    raise AssertionError(f"{when} losses: Explicit mesh {explicit} vs Auto mesh {auto}.")
  if abs(explicit - one) > LOSS_TOLERANCE:
    raise AssertionError(f"{when} losses: Explicit mesh {explicit} vs one device {one}.")


def measure(setup: Setup) -> list[Row]:
  """The rows, measured in this process (which must see `DEVICES` devices)."""
  if jax.device_count() < DEVICES:
    raise RuntimeError(f"{jax.device_count()} devices; run with --child (sets XLA_FLAGS).")
  sizes = setup.model
  _, step = model_and_step(sizes)
  cases = {
      "explicit": make_case(sizes, AxisType.Explicit),
      "auto": make_case(sizes, AxisType.Auto),
      "one device": make_case(sizes, None),
  }

  for name in ("explicit", "auto"):
    check_sharded(cases[name])

  # Compile first: the timed steps below donate the states lowered here.
  # Every round jits a new function object, so no cache answers, except the
  # last, which jits `step` itself (its first use): the timed jits below then
  # find it compiled.
  compile_times: dict[str, list[float]] = {"explicit": [], "auto": []}
  hlo_collectives: dict[str, str] = {}
  for r in range(setup.compile_repeats):
    fn = step if r == setup.compile_repeats - 1 else (lambda *a: step(*a))
    for name in ("explicit", "auto") if r % 2 == 0 else ("auto", "explicit"):
      seconds, hlo_collectives[name] = compile_seconds(cases[name], fn)
      compile_times[name].append(seconds)

  jitted = {name: case.jit(step) for name, case in cases.items()}

  def carry(name: str) -> Callable[..., tuple[Any, ...]]:
    case, fn = cases[name], jitted[name]

    def one_step(state: State, _: jax.Array) -> tuple[Any, ...]:
      with case.context():
        result: tuple[Any, ...] = fn(state, *case.batch)
      return result

    return one_step

  first: dict[str, tuple[Any, ...]] = {}
  for name in cases:
    first[name] = carry(name)(cases[name].state, None)
  _check_losses({n: float(state[1]) for n, state in first.items()}, "first", MESH_LOSS_TOLERANCE)
  times, final = interleaved_times(
      {name: (carry(name), first[name]) for name in cases},
      steps=setup.steps, rounds=setup.rounds,
  )
  _check_losses({n: float(state[1]) for n, state in final.items()}, "final", LOSS_TOLERANCE)

  s = sizes
  label = (f"{s.num_layers} layers, {s.features} features, batch {s.batch_size}x"
           f"{s.sequence_length}; FSDP+TP on {DEVICES} simulated devices")
  mesh = f"mesh {MESH_SHAPE[0]}x{MESH_SHAPE[1]} (data, model)"
  explicit, auto, one = (statistics.median(times[n]) for n in ("explicit", "auto", "one device"))
  compile_explicit, compile_auto = (statistics.median(compile_times[n]) for n in ("explicit", "auto"))
  return [
      Row(
          f"sharded train step, Explicit vs Auto mesh ({label})",
          format_seconds(explicit), format_seconds(auto),
          _median_ratio(times["explicit"], times["auto"]), "<= 1.02x",
          f"median of {setup.rounds} rounds; {mesh}; baseline: Auto mesh; losses agree",
      ),
      Row(
          f"sharded train step, Explicit mesh vs one device ({label})",
          format_seconds(explicit), format_seconds(one),
          _median_ratio(times["explicit"], times["one device"]), "report",
          "same rounds; baseline: unsharded on device 0",
      ),
      Row(
          f"compile sharded train step, Explicit vs Auto mesh ({label})",
          format_seconds(compile_explicit), format_seconds(compile_auto),
          compile_explicit / compile_auto, "report",
          f"trace+lower+compile, median of {setup.compile_repeats}; collectives: Explicit"
          f" {hlo_collectives['explicit']} / Auto {hlo_collectives['auto']}",
      ),
  ]


def run(smoke: bool = False) -> list[Row]:
  """Measures the rows in a child process that sees `DEVICES` simulated CPU devices."""
  # A device count set by the caller would leave the child short of devices.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={DEVICES}")
  env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "benchmarks.sharded", "--child", *(["--smoke"] if smoke else [])]
  # stderr passes through: the child's warnings show where the runner's do.
  result = subprocess.run(command, cwd=_ROOT, env=env, stdout=subprocess.PIPE, text=True,
                          check=False)
  if result.returncode != 0:
    raise RuntimeError(f"The sharded benchmark's child process failed ({result.returncode}):\n"
                       f"{result.stdout}")
  # The rows are the last line; anything printed before it is not ours.
  return [Row(**fields) for fields in json.loads(result.stdout.splitlines()[-1])]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
  parser.add_argument("--child", action="store_true",
                      help="measure in this process (needs 8 devices) and print JSON rows")
  args = parser.parse_args(argv)
  if args.child:
    rows = measure(SMOKE if args.smoke else FULL)
    print(json.dumps([dataclasses.asdict(row) for row in rows]))
  else:
    print(format_table(run(args.smoke)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
