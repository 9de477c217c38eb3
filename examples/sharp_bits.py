"""The sharp bits of blox, as one runnable script.

blox keeps every piece of state in an explicit, immutable `Params` value:
`outputs, params = module(params, inputs)`. That makes JAX's transformations
straightforward, but a few behaviours surprise newcomers. Each section below
shows one, prints what happens, and shows the pattern that avoids it:

  1. Locked and unlocked params: initialisation vs runtime.
  2. Immutability: every update returns new params.
  3. split / merge: gradients for the trainable half only.
  4. Random streams under vmap: replicated state draws replicated keys.
  5. Folding in the lane index: explicitly, or with `axis_index`.
  6. Init vs runtime inside vmap: decide by `params.is_locked`.
  7. jit caches what a module held when it was traced: build one model per
     configuration instead of mutating one.
  8. One set of params, two models: a static and a dynamic LSTM.
  9. Sharded initialisation: `jax.jit` with `out_shardings`.

Run from the repository root: `uv run examples/sharp_bits.py` (`--fast` is
accepted for symmetry with the other examples; the script is fast anyway).
"""

from __future__ import annotations

import os

# Section 9 shards over 8 simulated CPU devices. JAX reads XLA_FLAGS once,
# when its CPU backend starts, so ask before anything imports jax.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import blox as bx  # noqa: E402
import blox.parallel as bp  # noqa: E402
from blox.params import SHARDING  # noqa: E402

LANES = 4
WIDTH = 8
Forward = Callable[[bx.Params], tuple[jax.Array, bx.Params]]


def section(title: str) -> None:
  print(f"\n== {title} ==")


def show_masks(outputs: jax.Array) -> None:
  """One line per lane: 1 where dropout zeroed the input, 0 where it kept it."""
  for lane, row in enumerate(outputs):
    print(f"  lane {lane}: {(row == 0).astype(int).tolist()}")


def locked_and_unlocked() -> tuple[bx.Linear, bx.Params]:
  section("1. Locked and unlocked params")
  graph = bx.Graph("basics")
  rng = bx.Rng(graph.child("rng"))
  linear = bx.Linear(graph.child("linear"), output_size=4, rng=rng)
  # `rng.init(linear, x, seed=42)` does the next four steps in one line.
  # Fresh params are unlocked. Seeding the stream adds its seed and counter.
  params = rng.seed(bx.Params(), seed=42)
  print(f"seeded:        locked={params.is_locked}, {len(params)} params")
  # The first call sees the input width and creates the kernel and bias.
  _, params = linear(params, jnp.ones((1, 3)))
  print(f"after a call:  locked={params.is_locked}, {len(params)} params")
  params = params.locked()
  out, _ = linear(params, jnp.ones((1, 3)))
  print(f"locked:        locked={params.is_locked}, a call still works -> {out.shape}")
  # A module that is new to these params would have to create its kernel:
  # locked params refuse, which turns a misspelt name into an immediate error.
  extra = bx.Linear(graph.child("extra"), output_size=8, rng=rng)
  try:
    extra(params, jnp.ones((1, 4)))
  except RuntimeError as error:
    print(f"locked params refuse new ones: {str(error).split(':')[0]}")
  _, grown = extra(params.unlocked(), jnp.ones((1, 4)))
  print(f"after unlocking, the new layer adds its params: {len(grown)} params")
  return linear, params


def immutability(linear: bx.Linear, params: bx.Params) -> None:
  section("2. Immutability")
  kernel, _ = linear.get_param(params, "kernel")
  doubled = linear.set_param(params, "kernel", 2 * kernel)
  path = linear.param_path("kernel")
  print(f"kernel sum in the original params: {params[path].value.sum():.4f}")
  print(f"kernel sum in the returned params: {doubled[path].value.sum():.4f}")
  # Nothing was modified in place: the old container still holds the old value.
  untouched = params[path].value is kernel and doubled[path].value is not kernel
  print(f"the original is untouched: {untouched}")


def split_and_merge(params: bx.Params) -> None:
  section("3. split / merge")
  trainable, rest = params.split()
  print(f"trainable (gradients flow here): {list(trainable)}")
  print(f"the rest (state, no gradients):  {list(rest)}")
  merged: Any = jax.tree.structure(trainable.merge(rest))
  print(f"merge restores the same pytree: {merged == jax.tree.structure(params)}")
  # A train step never splits by hand: `bx.value_and_grad(loss_fn)(params, x)`
  # differentiates with respect to the trainable half and carries the rest
  # (random streams, batch statistics) through, as `loss_fn` returns them.


def replicated_streams(dropout: bx.Dropout, params: bx.Params) -> None:
  section("4. Random streams under vmap")
  # in_axes=None replicates the params: every lane holds the same seed and
  # counter, so every lane draws the same key and the same mask.
  out, _ = jax.vmap(dropout, in_axes=(None, 0), out_axes=(0, None))(
      params, jnp.ones((LANES, WIDTH))
  )
  print("every lane drops the same positions:")
  show_masks(out)


def with_lane_seed(
    rng: bx.Rng, params: bx.Params, lane: jax.Array, forward: Forward
) -> tuple[jax.Array, bx.Params]:
  """Runs `forward` with the lane folded into the seed, then puts the seed back.

  The counter advances the same way in every lane; restoring the seed makes
  the returned params identical across lanes, as `out_axes=None` requires.
  """
  seed = rng.get_seed(params)
  out, params = forward(rng.seed(params, seed=jax.random.fold_in(seed, lane)))
  return out, rng.seed(params, seed=seed)


def folded_lanes(rng: bx.Rng, dropout: bx.Dropout, params: bx.Params) -> None:
  section("5. Folding in the lane index")
  params = rng.seed(params, counter=0)  # same starting point for both variants
  x = jnp.ones((LANES, WIDTH))

  # (a) The lane index as an explicit, batched argument.
  def explicit(params: bx.Params, x: jax.Array, lane: jax.Array) -> tuple[jax.Array, bx.Params]:
    return with_lane_seed(rng, params, lane, lambda p: dropout(p, x))

  out, _ = jax.vmap(explicit, in_axes=(None, 0, 0), out_axes=(0, None))(
      params, x, jnp.arange(LANES)
  )
  print("lane index passed in: a different mask per lane")
  show_masks(out)

  # (b) The lane index read from the named vmap axis: no extra argument.
  def named(params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    return with_lane_seed(rng, params, jax.lax.axis_index("lanes"), lambda p: dropout(p, x))

  out, _ = jax.vmap(named, in_axes=(None, 0), out_axes=(0, None), axis_name="lanes")(params, x)
  print("lane index from jax.lax.axis_index: the same masks")
  show_masks(out)


def init_versus_runtime(rng: bx.Rng, dropout: bx.Dropout) -> None:
  section("6. Init vs runtime inside vmap")

  def forward(params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    # Unlocked means init: every lane must create the same params, so do
    # not fold. Locked means runtime: every lane should draw its own keys.
    if not params.is_locked:
      return dropout(params, x)
    return with_lane_seed(rng, params, jax.lax.axis_index("lanes"), lambda p: dropout(p, x))

  def init(x: jax.Array) -> bx.Params:
    return rng.init(forward, x, seed=42)

  x = jnp.ones((LANES, WIDTH))
  params = jax.vmap(init, axis_name="lanes", out_axes=None)(x)
  print(f"initialised inside vmap, identical in every lane: locked={params.is_locked}")
  out, _ = jax.vmap(forward, in_axes=(None, 0), out_axes=(0, None), axis_name="lanes")(params, x)
  print("runtime: a different mask per lane")
  show_masks(out)
  # blox.parallel.per_lane_rng packages this pattern for every stream in the
  # params (found by metadata): same masks, no hand-written folding.
  packaged, _ = jax.vmap(bp.per_lane_rng(dropout, "lanes"), in_axes=(None, 0),
                         out_axes=(0, None), axis_name="lanes")(params, x)
  print(f"blox.parallel.per_lane_rng gives the same masks: {bool(jnp.array_equal(out, packaged))}")


class AddConstant(bx.Module):
  """Adds a Python float held as module configuration."""

  value: float = bx.setting(doc="the number added; a plain attribute, baked in when traced.")

  def __call__(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    return x + self.value, params


def jit_caching() -> None:
  section("7. jit caches what a module held when it was traced")
  adder = AddConstant(bx.Graph("cache").child("add"), value=10.0)
  params = bx.Params().locked()
  x = jnp.array([1.0, 2.0, 3.0])
  add = jax.jit(adder)
  print(f"value=10:         {add(params, x)[0].tolist()}")
  # The float was baked into the compiled function as a constant. Changing
  # the attribute does not change anything jit looks at (the params and the
  # input are alike), so the cached function runs again.
  adder.value = 100.0
  print(f"value set to 100: {add(params, x)[0].tolist()}  <- stale: still adds 10")
  # The fix: one model per configuration, built once and never mutated, each
  # with its own jitted function (a new function is a new cache entry).
  for value in (10.0, 100.0):
    add = jax.jit(AddConstant(bx.Graph("adder").child("add"), value=value))
    print(f"adder({value:g}): {add(params, x)[0].tolist()}")


def shared_lstm_params() -> None:
  section("8. One set of params, a static and a dynamic LSTM")

  def build(is_static: bool) -> tuple[bx.Rng, bx.LSTM]:
    # Same graph names -> same param paths, so the models share params.
    graph = bx.Graph("seq")
    rng = bx.Rng(graph.child("rng"))
    return rng, bx.LSTM(graph.child("lstm"), hidden_size=16, rng=rng, is_static=is_static)

  rng, unrolled = build(is_static=True)  # a Python loop: easy to step through
  _, scanned = build(is_static=False)  # jax.lax.scan: compiles one step
  x = jnp.ones((2, 5, 8))  # [batch, time, features]
  params = rng.init(unrolled.apply, x, seed=42)
  (out_unrolled, _), _ = unrolled.apply(params, x)
  (out_scanned, _), _ = jax.jit(scanned.apply)(params, x)
  print(f"static LSTM output sum:  {out_unrolled[0].sum():.4f}")
  print(f"dynamic LSTM output sum: {out_scanned[0].sum():.4f}")
  agree = bool(jnp.allclose(out_unrolled, out_scanned, atol=1e-5))
  print(f"same params, same outputs: {agree}")
  if not agree:
    raise SystemExit("ERROR: the static and dynamic LSTM disagree")


def sharded_init() -> None:
  section("9. Sharded initialisation: jax.jit with out_shardings")
  mesh = bp.make_mesh((jax.device_count(),), ("model",))
  graph = bx.Graph("sharded")
  rng = bx.Rng(graph.child("rng"))
  # The layout is metadata on the param; the layer stays free of devices.
  linear = bx.Linear(graph.child("linear"), output_size=8, rng=rng,
                     kernel_metadata={SHARDING: (None, "model")})

  def init() -> bx.Params:
    return rng.init(linear, jnp.ones((1, 4)), seed=0)

  # Under jit, one replicated stream creates the global values and XLA
  # partitions them: no per-device folding to get right by hand, unlike
  # creating params inside shard_map.
  shardings = bp.param_shardings(jax.eval_shape(init), mesh)
  kernel = jax.jit(init, out_shardings=shardings)()[linear.param_path("kernel")].value
  print(f"kernel {kernel.shape} laid out as {kernel.sharding.spec} over"
        f" {len(kernel.sharding.device_set)} device(s)")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="accepted; the script is always fast")
  parser.parse_args(argv)
  linear, params = locked_and_unlocked()
  immutability(linear, params)
  split_and_merge(params)
  # A dropout layer with its stream, seeded with 42 and used once at init.
  graph = bx.Graph("lanes")
  rng = bx.Rng(graph.child("rng"))
  dropout = bx.Dropout(graph.child("dropout"), rate=0.5, rng=rng)
  dropout_params = rng.init(dropout, jnp.ones((1, WIDTH)), seed=42)
  replicated_streams(dropout, dropout_params)
  folded_lanes(rng, dropout, dropout_params)
  init_versus_runtime(rng, dropout)
  jit_caching()
  shared_lstm_params()
  sharded_init()
  return 0


if __name__ == "__main__":
  sys.exit(main())
