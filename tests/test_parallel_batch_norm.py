"""Data-parallel BatchNorm + Dropout + Linear across devices and lanes.

With `axis_name`, BatchNorm's statistics over the shards equal those of the
whole batch; with `per_lane_rng`, every shard draws its own dropout mask while
the returned params stay replicated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import blox as bx

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec

RATE = 0.5


class Net:
  """Linear -> BatchNorm -> Dropout; one instance per axis name."""

  def __init__(self, axis_name: str | None) -> None:
    graph = bx.Graph("net")
    self.rng = bx.Rng(graph.child("rng"))
    self.linear = bx.Linear(graph.child("linear"), 6, rng=self.rng)
    self.norm = bx.BatchNorm(graph.child("norm"), momentum=0.9, axis_name=axis_name)
    self.dropout = bx.Dropout(graph.child("dropout"), rate=RATE, rng=self.rng)

  def __call__(
      self, params: bx.Params, x: jax.Array, is_training: bool = True
  ) -> tuple[jax.Array, bx.Params]:
    h, params = self.linear(params, x)
    h, params = self.norm(params, h, is_training=is_training)
    return self.dropout(params, h, is_training=is_training)

  def normalised(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    """The output before dropout (training-mode statistics)."""
    h, params = self.linear(params, x)
    return self.norm(params, h, is_training=True)


def init(net: Net) -> bx.Params:
  params = net.rng.seed(bx.Params(), seed=0)
  _, params = net(params, jnp.ones((1, 5)), is_training=False)
  return params.locked()


def data() -> jax.Array:
  return jax.random.normal(jax.random.key(1), (16, 5)) * 3.0 + 1.0


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_shard_map_batch_norm_matches_full_batch(axis_type: AxisType) -> None:
  assert jax.device_count() == 8
  mesh = bx.parallel.make_mesh((8,), ("data",), axis_types=axis_type)
  full, sharded = Net(None), Net("data")
  params = init(full)
  x = data()
  reference, reference_params = full.normalised(params, x)
  step = jax.jit(jax.shard_map(
      bx.parallel.per_lane_rng(sharded, "data"), mesh=mesh,
      in_specs=(P(), P("data")), out_specs=(P("data"), P()),
  ))
  # On Explicit axes shard_map takes inputs already split as in_specs says.
  out, new = step(params, jax.device_put(x, NamedSharding(mesh, P("data"))))
  for name in ("running_mean", "running_var"):
    path = ("net", "norm", name)
    np.testing.assert_allclose(new[path].value, reference_params[path].value, rtol=1e-5, atol=1e-6)
  assert not np.allclose(new[("net", "norm", "running_mean")].value, 0.0)
  # Kept values are the full-batch normalised values, scaled by 1 / (1 - rate).
  kept = np.asarray(out) != 0
  np.testing.assert_allclose(
      np.asarray(out)[kept], np.asarray(reference)[kept] / (1 - RATE), rtol=1e-4, atol=1e-5)
  # Each device (two rows each) drew its own mask.
  masks = {kept[i:i + 2].tobytes() for i in range(0, 16, 2)}
  assert len(masks) == 8
  assert int(full.rng.get_counter(new)) == int(full.rng.get_counter(params)) + 1


@pytest.mark.parametrize("axis_type", [None, AxisType.Explicit, AxisType.Auto])
def test_vmap_lanes_batch_norm_matches_full_batch(axis_type: AxisType | None) -> None:
  full, lanes = Net(None), Net("batch")
  params = init(full)
  x = data()
  reference, reference_params = full.normalised(params, x)
  if axis_type is not None:
    # The lanes (examples) split over 'data', the hidden units over 'model':
    # on Explicit axes both are in the arrays' types (JAX's own pmean over a
    # vmap axis trips there; BatchNorm's statistics must not).
    mesh = bx.parallel.make_mesh((4, 2), ("data", "model"), axis_types=axis_type)
    x = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    params = jax.device_put(params, NamedSharding(mesh, P()))
  out, new = jax.jit(jax.vmap(
      bx.parallel.per_lane_rng(lanes, "batch"), in_axes=(None, 0), out_axes=(0, None),
      axis_name="batch",
  ))(params, x)
  path = ("net", "norm", "running_var")
  np.testing.assert_allclose(new[path].value, reference_params[path].value, rtol=1e-5)
  kept = np.asarray(out) != 0
  np.testing.assert_allclose(
      np.asarray(out)[kept], np.asarray(reference)[kept] / (1 - RATE), rtol=1e-4, atol=1e-5)
  assert len({row.tobytes() for row in kept}) > 12
