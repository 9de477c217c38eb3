"""`Repeat` on 8 devices: `init_sharded` places stacked params, `per_lane_rng` works inside."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

import blox as bx
from blox.params import SHARDING, STACKED

P: Callable[..., PartitionSpec] = PartitionSpec
FEATURES = 8


class Block(bx.Module):
  """`x + dropout(linear(x))`, the kernel sharded over 'model' on its output dim."""

  def __init__(self, graph: bx.Graph, *, rng: bx.Rng) -> None:
    super().__init__(graph)
    self.rng = rng
    self.linear = bx.Linear(
        graph.child("linear"), FEATURES, rng=rng, kernel_metadata={SHARDING: (None, "model")}
    )
    self.dropout = bx.Dropout(graph.child("dropout"), rate=0.5, rng=rng)

  def __call__(self, params: bx.Params, x: jax.Array, is_training: bool = True) -> Any:
    h, params = self.linear(params, x)
    h, params = self.dropout(params, h, is_training=is_training)
    return x + h, params


def build() -> tuple[bx.Rng, bx.Repeat]:
  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  return rng, bx.Repeat(graph.child("blocks"), lambda node: Block(node, rng=rng), 4)


def test_init_sharded_places_stacked_params_with_the_layer_axis_unsharded() -> None:
  assert jax.device_count() == 8
  mesh = bx.parallel.make_mesh((4, 2), ("data", "model"))
  rng, blocks = build()

  def init(x: jax.Array) -> bx.Params:
    return blocks(rng.seed(bx.Params(), seed=0), x)[1]

  x = jnp.ones((8, FEATURES))
  params = bx.parallel.init_sharded(init, mesh, x)
  kernel = params[("net", "blocks", "layer", "linear", "kernel")]
  assert kernel.metadata[STACKED] == (4,)
  assert kernel.value.sharding.spec == P(None, None, "model")
  assert kernel.value.addressable_shards[0].data.shape == (4, FEATURES, FEATURES // 2)
  np.testing.assert_array_equal(kernel.value, init(x)[("net", "blocks", "layer", "linear", "kernel")].value)


def test_per_lane_rng_gives_every_lane_and_layer_its_own_masks() -> None:
  rng, blocks = build()
  x = jnp.ones((FEATURES,))
  _, params = blocks(rng.seed(bx.Params(), seed=0), x)
  params = params.locked()

  def forward(params: bx.Params, x: jax.Array) -> Any:
    return blocks(params, x)

  lanes = jnp.ones((4, FEATURES))
  out, after = jax.vmap(
      bx.parallel.per_lane_rng(forward, "batch"), in_axes=(None, 0), out_axes=(0, None),
      axis_name="batch",
  )(params, lanes)
  rows = {tuple(np.asarray(row)) for row in out}
  assert len(rows) == 4
  assert int(rng.get_counter(after)) == int(rng.get_counter(params)) + 4
  np.testing.assert_array_equal(
      jax.random.key_data(rng.get_seed(after)), jax.random.key_data(rng.get_seed(params))
  )
