"""Tests of logical axis rules: partition_spec, param_shardings, init_sharded, constrain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from blox.params import SHARDING, STACKED, Param, Params
from blox.parallel import constrain, init_sharded, make_mesh, param_shardings, partition_spec

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec

RULES = (("batch", "data"), ("embed", None), ("mlp", "model"), ("heads", "model"))
KERNEL = ("net", "mlp", "kernel")
PATH = r"\('net', 'mlp', 'kernel'\)"


def mesh_4x2() -> jax.sharding.Mesh:
  assert jax.device_count() == 8
  return make_mesh((4, 2), ("data", "model"))


def spec_of(shape: tuple[int, ...], sharding: Any, rules: Any = RULES) -> PartitionSpec:
  param = Param(jnp.zeros(shape), metadata={SHARDING: sharding})
  return partition_spec(KERNEL, param, mesh_4x2(), rules=rules)


def test_logical_names_map_through_the_rules() -> None:
  assert spec_of((8, 6), ("batch", "mlp")) == P("data", "model")
  assert spec_of((6, 4, 2), ("embed", "heads", None)) == P(None, "model", None)
  # A single name means a one-entry tuple, as without rules.
  assert spec_of((8,), "batch") == P("data")


def test_a_name_mapped_to_none_is_replicated() -> None:
  assert spec_of((6, 6), ("embed", "embed")) == P(None, None)


def test_rules_to_tuples_of_mesh_axes() -> None:
  rules = (("vocab", ("data", "model")), ("embed", None))
  assert spec_of((16, 6), ("vocab", "embed"), rules) == P(("data", "model"), None)
  # A tuple entry of logical names joins their mesh axes.
  assert spec_of((16,), (("batch", "mlp"),)) == P(("data", "model"))


def test_the_first_matching_rule_wins() -> None:
  rules = (("mlp", "data"), ("mlp", "model"))
  assert spec_of((8, 2), ("mlp",), rules) == P("data")


def test_mesh_axis_names_without_a_rule_are_taken_as_they_are() -> None:
  assert spec_of((8, 6), ("data", "model"), rules=None) == P("data", "model")
  # With rules too: 'data' has no rule but is a mesh axis.
  assert spec_of((8, 6), ("data", "mlp")) == P("data", "model")
  # A rule for a name that is also a mesh axis takes precedence.
  assert spec_of((8, 6), ("data", None), rules=(("data", None),)) == P(None, None)


def test_param_shardings_with_rules() -> None:
  mesh = mesh_4x2()
  params = Params({
      ("net", "embed", "table"): Param(jnp.zeros((16, 6)), metadata={SHARDING: ("batch", "embed")}),
      KERNEL: Param(jnp.zeros((6, 8)), metadata={SHARDING: ("embed", "mlp")}),
      ("net", "mlp", "bias"): Param(jnp.zeros(8), metadata={SHARDING: ("mlp",)}),
      ("net", "norm", "scale"): Param(jnp.zeros(6)),
  })
  shardings = param_shardings(params, mesh, RULES)
  assert {path: p.value.spec for path, p in shardings.items()} == {
      ("net", "embed", "table"): P("data", None),
      KERNEL: P(None, "model"),
      ("net", "mlp", "bias"): P("model"),
      ("net", "norm", "scale"): P(),
  }
  assert all(isinstance(p.value, NamedSharding) for p in shardings.values())


def init_model(x: jax.Array) -> Params:
  key = jax.random.key(0)
  k1, k2 = jax.random.split(key)
  return Params({
      ("net", "embed", "table"): Param(
          jax.random.normal(k1, (16, 6)) * x[0], metadata={SHARDING: ("batch", "embed")}),
      KERNEL: Param(jax.random.normal(k2, (6, 8)), metadata={SHARDING: ("embed", "mlp")}),
      ("net", "blocks", "kernel"): Param(
          jnp.arange(3 * 6 * 8, dtype=jnp.float32).reshape(3, 6, 8),
          metadata={STACKED: (3,), SHARDING: ("embed", "mlp")}),
  })


def test_init_sharded_with_rules_places_params_as_resolved() -> None:
  mesh = mesh_4x2()
  x = jnp.ones(3)
  params = init_sharded(init_model, mesh, x, rules=RULES)
  expected = param_shardings(jax.eval_shape(init_model, x), mesh, RULES)
  reference = init_model(x)
  for path, param in params.items():
    assert param.value.sharding.is_equivalent_to(expected[path].value, param.value.ndim)
    np.testing.assert_array_equal(np.asarray(param.value), np.asarray(reference[path].value))
  assert params[KERNEL].value.sharding.spec == P(None, "model")
  assert {s.data.shape for s in params[KERNEL].value.addressable_shards} == {(6, 4)}
  assert {s.data.shape for s in params[("net", "embed", "table")].value.addressable_shards} == {(4, 6)}


def test_stacked_params_with_rules() -> None:
  param = Param(jnp.zeros((3, 6, 8)), metadata={STACKED: (3,), SHARDING: ("embed", "mlp")})
  assert partition_spec(KERNEL, param, mesh_4x2(), rules=RULES) == P(None, None, "model")
  params = init_sharded(init_model, mesh_4x2(), jnp.ones(3), rules=RULES)
  stacked = params[("net", "blocks", "kernel")].value
  assert stacked.sharding.spec == P(None, None, "model")
  assert {s.data.shape for s in stacked.addressable_shards} == {(3, 6, 4)}
  # Divisibility is checked on the per-layer dim, named in the full shape.
  param = Param(jnp.zeros((4, 3)), metadata={STACKED: (4,), SHARDING: ("batch",)})
  with pytest.raises(ValueError, match=r"dimension 1 \(size 3\) cannot be split over mesh axis 'data'"
                     r" \(logical axis 'batch', rule \('batch', 'data'\)\)"):
    partition_spec(KERNEL, param, mesh_4x2(), rules=RULES)


@pytest.mark.parametrize(
    ("shape", "sharding", "rules", "message"),
    [
        # An unknown logical name: no rule, no mesh axis.
        ((8, 6), ("batch", "hidden"), RULES,
         PATH + r".*'hidden'.*not a mesh axis.*\('data', 'model'\).*rule in \('batch', 'embed',"
         r" 'mlp', 'heads'\).*add a rule \('hidden', <mesh axis or None>\)"),
        ((8, 6), ("hidden",), None, PATH + r".*'hidden'.*no rules were given"),
        # A rule to an axis the mesh lacks.
        ((8, 6), ("mlp",), (("mlp", "tensor"),),
         PATH + r".*logical axis 'mlp'.*rule \('mlp', 'tensor'\).*mesh axis 'tensor'.*\('data', 'model'\)"),
        ((8, 6), ("mlp",), (("mlp", ("data", "tensor")),),
         PATH + r".*rule \('mlp', \('data', 'tensor'\)\).*mesh axis 'tensor'"),
        # Not divisible by the axis size, or by the product of the axes' sizes.
        ((6, 6), ("batch",), RULES,
         PATH + r".*dimension 0 \(size 6\).*'data' \(logical axis 'batch', rule \('batch', 'data'\)\)"
         r" into 4 equal parts"),
        ((12, 6), ("vocab",), (("vocab", ("data", "model")),),
         PATH + r".*dimension 0 \(size 12\).*\('data', 'model'\).*rule \('vocab', \('data', 'model'\)\)\)"
         r" into 8 equal parts"),
        # One mesh axis for two dims, after resolution.
        ((8, 8), ("mlp", "heads"), RULES,
         PATH + r".*mesh axis 'model' twice \(for 'mlp' and for 'heads' \(logical axis 'heads',"
         r" rule \('heads', 'model'\)\)\)"),
        ((8, 8), ("data", "batch"), RULES, PATH + r".*mesh axis 'data' twice"),
    ],
)
def test_rule_errors_name_the_path_the_name_and_the_rule(
    shape: tuple[int, ...], sharding: Any, rules: Any, message: str
) -> None:
  params = Params({KERNEL: Param(jnp.zeros(shape), metadata={SHARDING: sharding})})
  with pytest.raises(ValueError, match=message):
    param_shardings(params, mesh_4x2(), rules)


@pytest.mark.parametrize(
    "rules",
    ["batch", (("batch",),), (("batch", "data", "x"),), ((1, "data"),), (("batch", 3),),
     (("batch", ()),), (("batch", ("data", 2)),), 7],
)
def test_malformed_rules_are_refused(rules: Any) -> None:
  params = Params({KERNEL: Param(jnp.zeros((8, 6)), metadata={SHARDING: ("batch",)})})
  with pytest.raises(ValueError, match=r"not a \(logical_name, mesh_axes\) pair|must be a sequence of"):
    param_shardings(params, mesh_4x2(), rules)
  # partition_spec names the param in the same error.
  with pytest.raises(ValueError, match=PATH):
    partition_spec(KERNEL, params[KERNEL], mesh_4x2(), rules=rules)
  # Refused even when no param has sharding metadata.
  with pytest.raises(ValueError, match="param_shardings"):
    param_shardings(Params({KERNEL: Param(jnp.zeros(3))}), mesh_4x2(), rules)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_constrain_under_jit_gives_the_requested_sharding(axis_type: AxisType) -> None:
  mesh = make_mesh((4, 2), ("data", "model"), axis_types=axis_type)
  with jax.set_mesh(mesh):
    check_constrain_under_jit(mesh)


def check_constrain_under_jit(mesh: jax.sharding.Mesh) -> None:
  """What the test above asserts, on the current mesh."""

  @jax.jit
  def step(x: jax.Array) -> jax.Array:
    return constrain(jnp.tanh(x), ("batch", "mlp"), mesh, RULES) * 2

  x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
  y = step(x)
  np.testing.assert_allclose(np.asarray(y), np.tanh(np.asarray(x)) * 2, rtol=1e-6)
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("data", "model")), 2)
  assert {s.data.shape for s in y.addressable_shards} == {(2, 3)}
  # Replicated names and short tuples.
  z = jax.jit(lambda v: constrain(v, ("embed",), mesh, RULES))(x)
  assert z.sharding.is_equivalent_to(NamedSharding(mesh, P()), 2)
  # Outside jit the array moves to that sharding.
  moved = constrain(x, ("batch",), mesh, RULES).sharding
  assert moved.is_equivalent_to(NamedSharding(mesh, P("data")), 2)


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        (("batch", "hidden"), r"shape \(8, 6\), logical axes \('batch', 'hidden'\).*'hidden'.*add a rule"),
        (("mlp", "heads"), r"shape \(8, 6\), logical axes \('mlp', 'heads'\).*'model' twice"),
        ((None, "batch"), r"shape \(8, 6\).*dimension 1 \(size 6\).*4 equal parts"),
        (("batch", None, None), r"shape \(8, 6\).*at most 2 entries"),
        (["batch"], r"shape \(8, 6\).*give a tuple"),
    ],
)
def test_constrain_errors_name_the_shape_and_the_axes(axes: Any, message: str) -> None:
  with pytest.raises(ValueError, match=message):
    jax.jit(lambda v: constrain(v, axes, mesh_4x2(), RULES))(jnp.zeros((8, 6)))
