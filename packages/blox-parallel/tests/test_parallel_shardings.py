"""Tests of param_shardings, init_sharded, shard_batch and make_mesh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from blox.params import RNG_COUNTER, RNG_SEED, RNG_STREAM, SHARDING, Param, Params
from blox.parallel import init_sharded, make_mesh, param_shardings, partition_spec, shard_batch

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec

SEED = ("net", "rng", "seed")
COUNTER = ("net", "rng", "counter")
KERNEL = ("net", "dense", "kernel")
BIAS = ("net", "dense", "bias")
EMBED = ("net", "embed", "table")
SCALE = ("net", "norm", "scale")


def mesh_4x2() -> jax.sharding.Mesh:
  assert jax.device_count() == 8
  return make_mesh((4, 2), ("data", "model"))


def draw(params: Params) -> tuple[jax.Array, Params]:
  counter = params[COUNTER].value
  key = jax.random.fold_in(params[SEED].value, counter)
  return key, params.set(COUNTER, counter + jnp.uint32(1))


def init(seed: int) -> Params:
  """A hand-made model: a stream and four params with sharding metadata."""
  params = Params({
      SEED: Param(jax.random.key(seed), False, {RNG_STREAM: RNG_SEED}),
      COUNTER: Param(jnp.zeros((), jnp.uint32), False, {RNG_STREAM: RNG_COUNTER}),
  })
  normal = jax.nn.initializers.normal(1.0)
  _, params = params.get_or_create(
      KERNEL, (6, 8), init=normal, metadata={SHARDING: (None, "model")}, rng=draw)
  _, params = params.get_or_create(
      BIAS, (8,), init=normal, metadata={SHARDING: ("model",)}, rng=draw)
  _, params = params.get_or_create(
      EMBED, (16, 6), init=normal, metadata={SHARDING: (("data", "model"),)}, rng=draw)
  _, params = params.get_or_create(SCALE, (6,), init=jax.nn.initializers.ones)
  return params.locked()


def specs(shardings: Params) -> dict[tuple[str, ...], Any]:
  return {path: param.value.spec for path, param in shardings.items()}


def test_shardings_follow_metadata() -> None:
  mesh = mesh_4x2()
  params = init(0)
  shardings = param_shardings(params, mesh)
  assert isinstance(shardings, Params)
  assert list(shardings) == list(params)
  assert shardings.is_locked
  assert all(isinstance(p.value, NamedSharding) and p.value.mesh == mesh
             for p in shardings.values())
  assert specs(shardings) == {
      SEED: P(), COUNTER: P(), KERNEL: P(None, "model"), BIAS: P("model"),
      EMBED: P(("data", "model")), SCALE: P(),
  }
  # The metadata travels along unchanged.
  assert shardings[KERNEL].metadata == params[KERNEL].metadata


def test_shardings_from_abstract_params() -> None:
  abstract = jax.eval_shape(init, 0)
  shardings = param_shardings(abstract, mesh_4x2())
  assert shardings[KERNEL].value.spec == P(None, "model")
  # Same pytree structure: the two map together, leaf by leaf.
  blocks = jax.tree.map(lambda s, a: s.shard_shape(a.shape), shardings, abstract)
  assert blocks[KERNEL].value == (6, 4)


def test_shardings_survive_jitted_train_step() -> None:
  mesh = mesh_4x2()
  params = init_sharded(init, mesh, 0)
  shardings = param_shardings(params, mesh)
  batch = shard_batch({"x": jnp.ones((8, 6)), "y": jnp.zeros((8, 8))}, mesh)

  def step(params: Params, batch: dict[str, jax.Array]) -> Params:
    trainable, rest = params.split()

    def loss(trainable: Params) -> jax.Array:
      merged = trainable.merge(rest)
      pred = batch["x"] * merged[SCALE].value @ merged[KERNEL].value + merged[BIAS].value
      return jnp.mean((pred - batch["y"]) ** 2) + jnp.mean(merged[EMBED].value ** 2)

    grads = jax.grad(loss)(trainable)
    updated: Params = jax.tree.map(lambda w, g: w - 0.1 * g, trainable, grads)
    return updated.merge(rest)

  jitted = jax.jit(step, in_shardings=(shardings, None), out_shardings=shardings)
  new = jitted(jitted(params, batch), batch)
  for path, param in new.items():
    assert param.value.sharding.is_equivalent_to(shardings[path].value, param.value.ndim), path
  assert not np.allclose(new[KERNEL].value, params[KERNEL].value)


def test_init_sharded_equals_unsharded_init() -> None:
  mesh = mesh_4x2()
  sharded = init_sharded(init, mesh, 3)
  plain = init(3)
  assert list(sharded) == list(plain)
  for path in (KERNEL, BIAS, EMBED, SCALE, COUNTER):
    np.testing.assert_array_equal(sharded[path].value, plain[path].value)
  np.testing.assert_array_equal(
      jax.random.key_data(sharded[SEED].value), jax.random.key_data(plain[SEED].value))
  kernel = sharded[KERNEL].value
  assert kernel.sharding.spec == P(None, "model")
  # Born split: each device holds a (6, 4) block of the (6, 8) kernel.
  assert {shard.data.shape for shard in kernel.addressable_shards} == {(6, 4)}
  assert {shard.data.shape for shard in sharded[EMBED].value.addressable_shards} == {(2, 6)}


@pytest.mark.parametrize("kinds", [("Explicit", "Auto"), ("Auto", "Explicit")])
def test_init_sharded_uses_its_mesh_whatever_mesh_is_set(kinds: tuple[str, str]) -> None:
  # Params for one kind of mesh, created while a mesh of the other kind is the current one.
  current, target = (
      make_mesh((4, 2), ("data", "model"), axis_types=getattr(jax.sharding.AxisType, kind))
      for kind in kinds)
  with jax.set_mesh(current):
    sharded = init_sharded(init, target, 3)
  np.testing.assert_array_equal(sharded[KERNEL].value, init(3)[KERNEL].value)
  assert sharded[KERNEL].value.sharding == NamedSharding(target, P(None, "model"))


def test_init_sharded_traces_arrays_and_replicates_other_outputs() -> None:
  mesh = mesh_4x2()

  def init_with_state(x: jax.Array, scale: float) -> tuple[Params, jax.Array]:
    params = Params({KERNEL: Param(x * scale, metadata={SHARDING: ("data",)})})
    return params, jnp.sum(x)

  params, total = init_sharded(init_with_state, mesh, np.ones((4, 2)), 2.0)
  np.testing.assert_array_equal(params[KERNEL].value, np.full((4, 2), 2.0))
  assert params[KERNEL].value.sharding.spec == P("data")
  assert isinstance(total.sharding, NamedSharding) and total.sharding.spec == P()
  assert float(total) == 8.0


def test_shorter_tuple_pads_with_none() -> None:
  params = Params({KERNEL: Param(jnp.ones((4, 6, 2)), metadata={SHARDING: ("data",)})})
  spec = param_shardings(params, mesh_4x2())[KERNEL].value.spec
  placed = jax.device_put(params, param_shardings(params, mesh_4x2()))
  assert spec == P("data")
  assert {s.data.shape for s in placed[KERNEL].value.addressable_shards} == {(1, 6, 2)}


@pytest.mark.parametrize(
    ("shape", "sharding", "message"),
    [
        ((4, 6), (None, "tensor"), r"\('net', 'dense', 'kernel'\).*'tensor'.*\('data', 'model'\)"),
        ((4,), ("data", None), r"\('net', 'dense', 'kernel'\).*rank 1"),
        ((6, 4), ("data", None), r"\('net', 'dense', 'kernel'\).*dimension 0.*'data'.*4 equal parts"),
        ((12, 4), (("data", "model"), None), r"\('net', 'dense', 'kernel'\).*dimension 0 \(size 12\).*8 equal"),
        ((4, 4), ("data", "data"), r"\('net', 'dense', 'kernel'\).*'data' twice"),
    ],
)
def test_bad_sharding_metadata_raises(
    shape: tuple[int, ...], sharding: tuple[Any, ...], message: str
) -> None:
  params = Params({KERNEL: Param(jnp.ones(shape), metadata={SHARDING: sharding})})
  with pytest.raises(ValueError, match=message):
    param_shardings(params, mesh_4x2())


def test_partition_spec_metadata_rejects_a_partition_spec() -> None:
  params = Params({KERNEL: Param(jnp.ones((4, 6)), metadata={SHARDING: P(None, "model")})})
  with pytest.raises(
      TypeError,
      match=r"\('net', 'dense', 'kernel'\).*PartitionSpec; use a tuple like \(None, 'model'\), not a PartitionSpec",
  ):
    param_shardings(params, mesh_4x2())


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, ()),
        ({SHARDING: None}, ()),
        ({SHARDING: ()}, ()),
        ({SHARDING: "data"}, ("data",)),
        ({SHARDING: ("data", "model")}, ("data", "model")),
        ({SHARDING: (("data", "model"),)}, (("data", "model"),)),
    ],
)
def test_partition_spec_reads_metadata_like_param_sharding(
    metadata: dict[str, Any], expected: tuple[Any, ...]
) -> None:
  param = Param(jnp.ones((8, 2)), metadata=metadata)
  assert partition_spec(KERNEL, param, mesh_4x2()) == P(*expected)
  if metadata.get(SHARDING) is not None:
    # The same entries that Param.sharding reports.
    assert partition_spec(KERNEL, param, mesh_4x2()) == P(*param.sharding)


def test_param_shardings_needs_params() -> None:
  with pytest.raises(TypeError, match="Params"):
    param_shardings({"w": jnp.ones(2)}, mesh_4x2())  # type: ignore[arg-type]  # the misuse under test


def test_shard_batch_splits_leading_axis() -> None:
  mesh = mesh_4x2()
  batch = shard_batch({"x": np.arange(24.0).reshape(8, 3), "y": np.arange(8)}, mesh)
  assert batch["x"].sharding.spec == P("data")
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(batch["y"], np.arange(8))
  both = shard_batch(np.ones((8, 2)), mesh, axis=("data", "model"))
  assert {s.data.shape for s in both.addressable_shards} == {(1, 2)}


def test_shard_batch_errors_name_the_leaf() -> None:
  mesh = mesh_4x2()
  with pytest.raises(ValueError, match=r"\['x'\].*6 rows.*4 devices"):
    shard_batch({"x": np.ones((6, 2))}, mesh)
  with pytest.raises(ValueError, match=r"\['s'\].*scalar"):
    shard_batch({"s": np.float32(1.0)}, mesh)
  with pytest.raises(ValueError, match=r"'batch'.*\('data', 'model'\)"):
    shard_batch(np.ones((8, 2)), mesh, axis="batch")
  with pytest.raises(ValueError, match=r"axis \(\).*\('data', 'model'\)"):
    shard_batch(np.ones((8, 2)), mesh, axis=())


def test_make_mesh_axes_are_explicit_like_jax() -> None:
  mesh = mesh_4x2()
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert mesh.axis_types == jax.make_mesh((4, 2), ("data", "model")).axis_types
  assert all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
  auto = make_mesh((4, 2), ("data", "model"), axis_types=jax.sharding.AxisType.Auto)
  assert all(t == jax.sharding.AxisType.Auto for t in auto.axis_types)
  mixed_types = (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto)
  assert make_mesh((4, 2), ("data", "model"), axis_types=mixed_types).axis_types == mixed_types
  with pytest.raises(ValueError, match="one name per axis"):
    make_mesh((4, 2), ("data",))
