"""abstract_params: the sharded restore target, with nothing allocated."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

import blox.parallel as bp
from blox.parallel._shardings import abstract_array
from blox.parallel._util import spec
from blox.params import SHARDING, STACKED, Param, Params


def _init(scale: jax.Array, width: int) -> tuple[Params, dict[str, jax.Array]]:
  params = Params({
      ("embed",): Param(jnp.ones((8, width)) * scale, metadata={SHARDING: ("vocab", "embed")}),
      ("layers", "w"): Param(jnp.zeros((3, width, 4)), metadata={STACKED: (3,), SHARDING: ("embed", "mlp")}),
      ("seed",): Param(jax.random.key(0), trainable=False),
  })
  return params, {"step": jnp.zeros((), jnp.int32)}


RULES = (("vocab", "data"), ("embed", None), ("mlp", "model"))


def test_matches_init_sharded_shapes_dtypes_and_shardings() -> None:
  mesh = bp.make_mesh((4, 2), ("data", "model"))
  target = bp.abstract_params(_init, mesh, jnp.float32(2.0), 16, rules=RULES)
  real = bp.init_sharded(_init, mesh, jnp.float32(2.0), 16, rules=RULES)
  assert str(jax.tree.structure(target)) == str(jax.tree.structure(real))
  for abstract, concrete in zip(jax.tree.leaves(target), jax.tree.leaves(real)):
    assert isinstance(abstract, jax.ShapeDtypeStruct)
    assert abstract.shape == concrete.shape
    assert abstract.dtype == concrete.dtype
    assert abstract.sharding == concrete.sharding
  params, _ = target
  assert params[("embed",)].value.sharding.spec == spec("data", None)
  assert params[("layers", "w")].value.sharding.spec == spec(None, None, "model")
  assert jnp.issubdtype(params[("seed",)].value.dtype, jax.dtypes.prng_key)


def test_on_explicit_axes_the_sharding_is_in_each_leafs_type() -> None:
  mesh = bp.make_mesh((4, 2), ("data", "model"))  # Explicit axes, as jax.make_mesh's
  target, _ = bp.abstract_params(_init, mesh, jnp.float32(2.0), 16, rules=RULES)
  with jax.set_mesh(mesh):
    # Traced from the abstract params alone, the shardings propagate through
    # the types: nothing is computed and no mesh axis has to be told again.
    doubled = jax.eval_shape(lambda p: p[("embed",)].value * 2, target)
    summed = jax.eval_shape(lambda p: p[("layers", "w")].value.sum(1), target)
  assert doubled.sharding.spec == spec("data", None)
  assert summed.sharding.spec == spec(None, "model")


def test_nothing_is_computed() -> None:
  calls: list[int] = []

  def init() -> Params:
    calls.append(1)
    # A host callback would run on a real call; under eval_shape it never does.
    def host() -> np.ndarray:
      calls.append(2)
      return np.ones(4, np.float32)

    value = jax.pure_callback(host, abstract_array((4,), jnp.float32))
    return Params({("w",): Param(value)})

  target = bp.abstract_params(init, bp.make_mesh((8,), ("data",)))
  assert calls == [1]
  assert isinstance(target[("w",)].value.sharding, NamedSharding)


def test_errors_name_the_param_path() -> None:
  mesh = bp.make_mesh((8,), ("data",))
  with pytest.raises(ValueError, match=r"\('embed',\)"):
    bp.abstract_params(_init, mesh, jnp.float32(1.0), 16, rules=(("vocab", "nope"),))
