"""Contractions on Explicit mesh axes: the output sharding `contract` chooses.

Runs on 8 simulated host devices (XLA_FLAGS is set by the workspace conftest
and by CI before jax starts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from blox.graph import Graph, Module
from blox.nn import Conv, Embed, Linear, Rng, contract
from blox.nn._out_sharding import einsum_out_sharding
from blox.params import SHARDING, Param, Params

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 host devices")


def _mesh(kind: AxisType) -> jax.sharding.Mesh:
  return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))


def _place(params: Params, mesh: jax.sharding.Mesh) -> Params:
  """Each param on the mesh by its sharding metadata (mesh axis names)."""
  placed = Params()
  for path, param in params.items():
    spec = P(*(param.sharding or ()))
    value = jax.device_put(param.value, NamedSharding(mesh, spec))
    placed[path] = Param(value, param.trainable, param.metadata)
  return placed.locked()


def _tensor_parallel_mlp() -> tuple[Rng, Any]:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  up = Linear(graph.child("up"), 16, rng=rng, kernel_metadata={SHARDING: (None, "model")},
              bias_metadata={SHARDING: ("model",)})
  down = Linear(graph.child("down"), 8, rng=rng, kernel_metadata={SHARDING: ("model", None)})

  def model(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    h, params = up(params, x)
    return down(params, jax.nn.relu(h))

  return rng, model


def _loss_and_grads(model: Any, params: Params, x: jax.Array) -> tuple[jax.Array, Any]:
  def loss(trainable: Params, rest: Params) -> jax.Array:
    y, _ = model(trainable.merge(rest), x)
    return jnp.mean(y**2)

  trainable, rest = params.split()
  value, grads = jax.jit(jax.value_and_grad(loss))(trainable, rest)
  return value, grads


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_a_tensor_parallel_mlp_trains_on_either_kind_of_mesh(kind: AxisType) -> None:
  rng, model = _tensor_parallel_mlp()
  x = jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)
  params = rng.init(model, x, seed=0)
  want_loss, want_grads = _loss_and_grads(model, params, x)
  mesh = _mesh(kind)
  with jax.set_mesh(mesh):
    sharded = _place(params, mesh)
    xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    loss, grads = _loss_and_grads(model, sharded, xs)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for path in want_grads:
    np.testing.assert_allclose(grads[path].value, want_grads[path].value, rtol=1e-5, atol=1e-7)
  if kind is AxisType.Explicit:
    # The gradient of a sharded kernel is sharded like the kernel, in its type.
    assert jax.typeof(grads[("net", "up", "kernel")].value).sharding.spec == P(None, "model")


def test_the_output_keeps_the_inputs_batch_and_the_weights_output_sharding() -> None:
  mesh = _mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    x = jax.device_put(jnp.ones((8, 4)), P("data", None))
    w = jax.device_put(jnp.ones((4, 6)), P(None, "model"))
    sharding = einsum_out_sharding("...i,io->...o", x, w)
    assert sharding is not None and sharding.spec == P("data", "model")
    # Contracting a sharded dimension: the partial sums are reduced, no trace left.
    w2 = jax.device_put(jnp.ones((4, 6)), P("model", None))
    x2 = jax.device_put(jnp.ones((8, 4)), P("data", "model"))
    sharding = einsum_out_sharding("...i,io->...o", x2, w2)
    assert sharding is not None and sharding.spec == P("data", None)


def test_no_explicit_sharding_leaves_the_product_alone() -> None:
  x, w = jnp.ones((8, 4)), jnp.ones((4, 6))
  assert einsum_out_sharding("...i,io->...o", x, w) is None
  with jax.set_mesh(_mesh(AxisType.Auto)):
    xs = jax.device_put(x, P("data", None))
    assert einsum_out_sharding("...i,io->...o", xs, w) is None


def test_a_weight_dimension_on_the_inputs_axis_is_gathered_as_in_fsdp() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  # FSDP: the kernel's output dimension is sharded over 'data', like the batch.
  linear = Linear(graph.child("proj"), 8, rng=rng, kernel_metadata={SHARDING: ("model", "data")})
  x = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4)
  params = rng.init(linear, x, seed=0)
  want, _ = linear(params, x)
  mesh = _mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    sharded = _place(params, mesh)
    y, _ = jax.jit(linear)(sharded, jax.device_put(x, P("data", None)))
  np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
  assert jax.typeof(y).sharding.spec == P("data", None)


def test_an_embedding_lookup_keeps_the_ids_sharding() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  embed = Embed(graph.child("embed"), 16, 8, rng=rng, embedding_metadata={SHARDING: ("model", "data")})
  ids = jnp.arange(32).reshape(8, 4) % 16
  params = rng.init(embed, ids, seed=0)
  want, _ = embed(params, ids)
  mesh = _mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    sharded = _place(params, mesh)
    rows, _ = jax.jit(embed)(sharded, jax.device_put(ids, P("data", None)))
  np.testing.assert_array_equal(rows, want)
  assert jax.typeof(rows).sharding.spec == P("data", None, None)


def test_a_convolution_keeps_the_batch_and_output_channel_shardings() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  conv = Conv(graph.child("conv"), 4, (3,), rng=rng,
              kernel_metadata={SHARDING: (None, "model", None)})
  x = jnp.linspace(-1.0, 1.0, 8 * 6 * 2).reshape(8, 6, 2)
  params = rng.init(conv, x, seed=0)
  want, _ = conv(params, x)
  mesh = _mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    sharded = _place(params, mesh)
    y, _ = jax.jit(conv)(sharded, jax.device_put(x, P("data", None, "model")))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  assert jax.typeof(y).sharding.spec == P("data", None, None)


def test_tabulate_shows_each_calls_output_sharding_as_jax_typeof_does() -> None:
  from blox.graph import tabulate

  rng, model = _tensor_parallel_mlp()
  x = jnp.ones((8, 8))
  params = rng.init(model, x, seed=0)
  mesh = _mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    sharded = _place(params, mesh)
    table = tabulate(model, sharded, jax.device_put(x, P("data", None)), width=200)
  assert "f32[8@data,16@model]" in table  # `up`: the batch and the hidden units split
  assert "f32[8@data,8]" in table  # `down`: the hidden units contracted
  plain = tabulate(model, params, x, width=200)
  assert "f32[8,16]" in plain and "@data" not in plain  # no mesh, no sharding in any type


class _Experts(Module):
  """One kernel per expert: `[experts, tokens, in] x [experts, in, out]`."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    kernel, params = self.get_param(
        params, "kernel", (x.shape[0], x.shape[-1], 4), init=jax.nn.initializers.ones,
        metadata={SHARDING: ("experts", None, None)})
    return contract(x, kernel, "eti,eio->eto", module=self, params=params,
                    weight_name="kernel"), params


def test_a_dimension_split_differently_by_the_two_operands_is_an_error_naming_the_rule() -> None:
  mesh = _mesh(AxisType.Explicit)
  experts = _Experts(Graph("net").child("experts"))
  _, params = experts(Params(), jnp.ones((4, 2, 8)))
  # The rules put 'experts' on 'model'; the tokens' expert axis is on 'data'.
  path = ("net", "experts", "kernel")
  placed = params.set(path, jax.device_put(params[path].value, NamedSharding(mesh, P("model"))))
  x = jax.device_put(jnp.ones((4, 2, 8)), NamedSharding(mesh, P("data")))
  with jax.set_mesh(mesh), pytest.raises(ValueError) as raised:
    jax.jit(experts)(placed.locked(), x)
  message = str(raised.value)
  for part in ("net/experts", "'eti,eio->eto'", "'data'", "'model'", "logical axis 'experts'",
               "rule ('experts', 'data')", "ambiguous"):
    assert part in message, (part, message)
  # Two activations (no weight param) get the same error without a rule to add.
  q = jax.device_put(jnp.ones((8, 2, 4)), NamedSharding(mesh, P("data")))
  k = jax.device_put(jnp.ones((8, 2, 4)), NamedSharding(mesh, P("model")))
  with jax.set_mesh(mesh), pytest.raises(ValueError, match=r"second operand.*ambiguous.*Lay out"):
    contract(q, k, "bqd,bkd->bqk")
  # Laid out alike, the same product runs.
  with jax.set_mesh(mesh):
    out = contract(q, jax.device_put(k, NamedSharding(mesh, P("data"))), "bqd,bkd->bqk")
  assert jax.typeof(out).sharding.spec == P("data", None, None)
