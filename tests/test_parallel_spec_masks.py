"""per_lane_rng reproduces the spec notebook's per-lane dropout masks.

The notebook (sharp_bits.ipynb, sections 2 and 3) folds
`jax.lax.axis_index('batch')` into the Rng seed by hand; `bx.parallel.per_lane_rng`
must give the very same masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import blox as bx

# Recorded in the notebook: cell 20 (counter 1 after init) and cell 17 (counter 0).
AFTER_INIT_MASKS = [
    [0, 0, 0, 0, 1, 0, 1, 1],
    [0, 1, 0, 1, 0, 0, 1, 0],
    [0, 0, 0, 1, 0, 0, 1, 0],
    [1, 1, 0, 0, 0, 0, 1, 1],
]
COUNTER_ZERO_MASKS = [
    [0, 1, 0, 1, 1, 1, 0, 0],
    [0, 1, 1, 0, 0, 0, 1, 1],
    [0, 1, 0, 0, 1, 1, 1, 0],
    [0, 0, 0, 1, 0, 1, 0, 0],
]


def build() -> tuple[bx.Rng, bx.Dropout]:
  graph = bx.Graph("rng_demo")
  rng = bx.Rng(graph.child("rng"))
  return rng, bx.Dropout(graph.child("dropout"), rate=0.5, rng=rng)


def dropped(out: jax.Array) -> list[list[int]]:
  mask: list[list[int]] = np.asarray(out == 0).astype(int).tolist()
  return mask


def test_section_3_init_then_runtime_masks() -> None:
  rng, dropout = build()

  def apply(params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    return dropout(params, x, is_training=True)

  forward = bx.parallel.per_lane_rng(apply, "batch")

  def init_fn(x: jax.Array) -> bx.Params:
    _, params = forward(rng.seed(bx.Params(), seed=42), x)
    return params.locked()

  x_batch = jnp.ones((4, 8))
  params = jax.vmap(init_fn, axis_name="batch", out_axes=None)(x_batch)
  assert params.is_locked
  assert int(rng.get_counter(params)) == 1
  out, new = jax.vmap(
      forward, in_axes=(None, 0), out_axes=(0, None), axis_name="batch"
  )(params, x_batch)
  assert dropped(out) == AFTER_INIT_MASKS
  assert int(rng.get_counter(new)) == 2
  np.testing.assert_array_equal(
      jax.random.key_data(rng.get_seed(new)), jax.random.key_data(jax.random.key(42))
  )


def test_section_2_masks_with_counter_zero() -> None:
  rng, dropout = build()
  params = rng.seed(bx.Params(), seed=42)
  _, params = dropout(params, jnp.ones((1, 8)), is_training=True)
  params = rng.seed(params.locked(), counter=0)

  def apply(params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    return dropout(params, x, is_training=True)

  out, _ = jax.vmap(
      bx.parallel.per_lane_rng(apply, "batch"), in_axes=(None, 0), out_axes=(0, None),
      axis_name="batch",
  )(params, jnp.ones((4, 8)))
  assert dropped(out) == COUNTER_ZERO_MASKS
