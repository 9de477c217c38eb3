"""Tests of per_lane_rng under vmap and shard_map, with a hand-made stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from blox.params import RNG_COUNTER, RNG_SEED, RNG_STREAM, Param, Params
from blox.parallel import LaneAxisError, make_mesh, per_lane_rng, seed_paths

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec

SEED = ("net", "rng", "seed")
COUNTER = ("net", "rng", "counter")
WEIGHT = ("net", "scale", "w")


def stream(seed: int = 0) -> Params:
  """Unlocked params holding one seed-and-counter stream, tagged by metadata."""
  return Params({
      SEED: Param(jax.random.key(seed), False, {RNG_STREAM: RNG_SEED}),
      COUNTER: Param(jnp.zeros((), jnp.uint32), False, {RNG_STREAM: RNG_COUNTER}),
  })


def draw(params: Params) -> tuple[jax.Array, Params]:
  """A key source: fold_in(seed, counter), then advance the counter."""
  seed = params[SEED].value
  counter = params[COUNTER].value
  return jax.random.fold_in(seed, counter), params.set(COUNTER, counter + jnp.uint32(1))


def dropout(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
  """Dropout with rate 0.5, written inline."""
  key, params = draw(params)
  keep = jax.random.bernoulli(key, 0.5, x.shape)
  return jnp.where(keep, 2.0 * x, 0.0), params


def model(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
  """A random-initialised scale followed by dropout."""
  w, params = params.get_or_create(
      WEIGHT, (x.shape[-1],), init=jax.nn.initializers.normal(1.0), rng=draw
  )
  return dropout(params, x * w)


def locked_params() -> Params:
  _, params = model(stream(42), jnp.ones(16))
  return params.locked()


def masks(out: jax.Array) -> np.ndarray:
  return np.asarray(out != 0)


def test_devices() -> None:
  assert jax.device_count() == 8


def test_seed_paths_finds_seeds_by_metadata() -> None:
  params = locked_params()
  assert seed_paths(params) == [SEED]


def test_vmap_lanes_draw_different_masks() -> None:
  params = locked_params()
  out, new = jax.vmap(
      per_lane_rng(dropout, "batch"), in_axes=(None, 0), out_axes=(0, None),
      axis_name="batch",
  )(params, jnp.ones((4, 64)))
  rows = masks(out)
  assert len({row.tobytes() for row in rows}) == 4
  # The returned seed is the original one, and the counter advanced once.
  assert bool(jnp.all(jax.random.key_data(new[SEED].value) == jax.random.key_data(params[SEED].value)))
  assert int(new[COUNTER].value) == int(params[COUNTER].value) + 1


def test_vmap_lane_equals_explicit_fold() -> None:
  params = locked_params()
  x = jnp.ones((3, 32))
  out, _ = jax.vmap(
      per_lane_rng(dropout, "batch"), in_axes=(None, 0), out_axes=(0, None),
      axis_name="batch",
  )(params, x)
  for lane in range(3):
    folded = params.set(SEED, jax.random.fold_in(params[SEED].value, lane))
    expected, _ = dropout(folded, x[lane])
    np.testing.assert_array_equal(out[lane], expected)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_shard_map_devices_draw_different_masks(axis_type: AxisType) -> None:
  mesh = make_mesh((8,), ("data",), axis_types=axis_type)
  params = locked_params()
  step = jax.shard_map(
      per_lane_rng(dropout, "data"), mesh=mesh,
      in_specs=(P(), P("data")), out_specs=(P("data"), P()),
  )
  # On Explicit axes shard_map takes inputs already split as in_specs says.
  x = jax.device_put(jnp.ones((8, 64)), NamedSharding(mesh, P("data")))
  out, new = jax.jit(step)(params, x)
  rows = masks(out)
  assert len({row.tobytes() for row in rows}) == 8
  assert int(new[COUNTER].value) == int(params[COUNTER].value) + 1
  # Each device's mask is its lane index folded into the seed.
  folded = params.set(SEED, jax.random.fold_in(params[SEED].value, 5))
  expected, _ = dropout(folded, jnp.ones((1, 64)))
  np.testing.assert_array_equal(np.asarray(out)[5:6], expected)


def test_init_under_vmap_equals_plain_init() -> None:
  x = jnp.ones((4, 16))

  def init(x_lane: jax.Array) -> Params:
    _, params = per_lane_rng(model, "batch")(stream(7), x_lane)
    return params

  per_lane = jax.vmap(init, axis_name="batch")(x)
  plain = init(x[0])
  for path in (WEIGHT, COUNTER):
    values = np.asarray(per_lane[path].value)
    # Every lane created the same values, equal to an unbatched init.
    for lane in range(4):
      np.testing.assert_array_equal(values[lane], np.asarray(plain[path].value))
  # And they can leave vmap as one unbatched copy.
  unbatched = jax.vmap(init, axis_name="batch", out_axes=None)(x)
  np.testing.assert_array_equal(unbatched[WEIGHT].value, plain[WEIGHT].value)


def test_returned_params_identical_across_lanes() -> None:
  params = locked_params()
  _, new = jax.vmap(
      per_lane_rng(dropout, "batch"), in_axes=(None, 0), out_axes=(0, 0),
      axis_name="batch",
  )(params, jnp.ones((4, 8)))
  seeds = np.asarray(jax.random.key_data(new[SEED].value))
  counters = np.asarray(new[COUNTER].value)
  assert (seeds == seeds[0]).all()
  assert (counters == counters[0]).all()


@pytest.mark.parametrize("transform", [jax.jit, jax.checkpoint])
def test_fn_may_contain_jit_or_checkpoint(transform: Any) -> None:
  params = locked_params()
  inner = transform(dropout)
  out, new = jax.vmap(
      per_lane_rng(inner, "batch"), in_axes=(None, 0), out_axes=(0, None),
      axis_name="batch",
  )(params, jnp.ones((4, 8)))
  masks = np.asarray(out == 0)
  assert len({row.tobytes() for row in masks}) > 1  # lanes still differ
  np.testing.assert_array_equal(
      jax.random.key_data(new[SEED].value), jax.random.key_data(params[SEED].value))
  assert int(new[COUNTER].value) == int(params[COUNTER].value) + 1


def test_a_seed_carried_through_lax_scan_is_restored() -> None:
  params = locked_params()

  def scanned(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    def body(params: Params, x_t: jax.Array) -> tuple[Params, jax.Array]:
      out, params = dropout(params, x_t)
      return params, out

    params, out = jax.lax.scan(body, params, x)
    return out, params

  out, new = jax.jit(jax.vmap(
      per_lane_rng(scanned, "batch"), in_axes=(None, 0), out_axes=(0, None),
      axis_name="batch",
  ))(params, jnp.ones((2, 3, 16)))
  assert len({row.tobytes() for row in masks(out).reshape(6, 16)}) == 6
  np.testing.assert_array_equal(
      jax.random.key_data(new[SEED].value), jax.random.key_data(params[SEED].value))
  assert int(new[COUNTER].value) == int(params[COUNTER].value) + 3


def test_multiple_vmap_axes_fold_in_order() -> None:
  params = locked_params()
  fn = per_lane_rng(dropout, ("outer", "inner"))
  inner = jax.vmap(fn, in_axes=(None, 0), out_axes=(0, None), axis_name="inner")
  outer = jax.vmap(inner, in_axes=(None, 0), out_axes=(0, None), axis_name="outer")
  out, _ = outer(params, jnp.ones((2, 3, 32)))
  rows = masks(out).reshape(6, 32)
  assert len({row.tobytes() for row in rows}) == 6
  seed = jax.random.fold_in(jax.random.fold_in(params[SEED].value, 1), 2)
  expected, _ = dropout(params.set(SEED, seed), jnp.ones(32))
  np.testing.assert_array_equal(out[1, 2], expected)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_multiple_mesh_axes_under_shard_map(axis_type: AxisType) -> None:
  mesh = make_mesh((4, 2), ("data", "model"), axis_types=axis_type)
  params = locked_params()
  step = jax.shard_map(
      per_lane_rng(dropout, ("data", "model")), mesh=mesh,
      in_specs=(P(), P(("data", "model"))), out_specs=(P(("data", "model")), P()),
  )
  x = jax.device_put(jnp.ones((8, 64)), NamedSharding(mesh, P(("data", "model"))))
  out, _ = jax.jit(step)(params, x)
  assert len({row.tobytes() for row in masks(out)}) == 8


def test_unbound_axis_raises_name_error() -> None:
  params = locked_params()
  with pytest.raises(LaneAxisError, match=r"'batch'.*vmap\(\.\.\., axis_name='batch'\)"):
    per_lane_rng(dropout, "batch")(params, jnp.ones(8))
  with pytest.raises(NameError, match="'data'"):
    jax.vmap(per_lane_rng(dropout, "data"), in_axes=(None, 0), axis_name="batch")(
        params, jnp.ones((2, 8))
    )


def test_unlocked_params_need_no_axis() -> None:
  # Initialisation outside any vmap works: nothing is folded.
  out, params = per_lane_rng(model, "batch")(stream(7), jnp.ones(16))
  expected, _ = model(stream(7), jnp.ones(16))
  np.testing.assert_array_equal(out, expected)
  assert WEIGHT in params


def test_wrapper_keeps_the_name_only() -> None:
  class Model:
    """A callable object with attributes of its own."""

    size = 3

    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      return x, params

  assert per_lane_rng(dropout, "batch").__name__ == "dropout"
  wrapped = per_lane_rng(Model(), "batch")
  assert wrapped.__doc__ == "A callable object with attributes of its own."
  assert not hasattr(wrapped, "size")


def test_bad_axis_name_and_params_are_type_errors() -> None:
  with pytest.raises(TypeError, match="axis_name"):
    per_lane_rng(dropout, ())
  with pytest.raises(TypeError, match="Params"):
    per_lane_rng(dropout, "batch")({"not": "params"}, jnp.ones(2))


def test_array_of_seed_keys_folds_elementwise() -> None:
  keys = jax.random.split(jax.random.key(3), 2)
  params = Params({SEED: Param(keys, False, {RNG_STREAM: RNG_SEED})}).locked()

  def draw_both(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    seeds = params[SEED].value
    return jnp.stack([jax.random.normal(seeds[0]), jax.random.normal(seeds[1])]) + x, params

  out, new = jax.vmap(
      per_lane_rng(draw_both, "batch"), in_axes=(None, 0), out_axes=(0, None),
      axis_name="batch",
  )(params, jnp.zeros(3))
  assert len({tuple(row) for row in np.asarray(out).tolist()}) == 3
  expected = jax.random.normal(jax.random.fold_in(keys[1], 2))
  np.testing.assert_allclose(out[2, 1], expected)
  np.testing.assert_array_equal(jax.random.key_data(new[SEED].value), jax.random.key_data(keys))
