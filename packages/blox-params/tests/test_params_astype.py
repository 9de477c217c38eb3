"""Tests of `Params.astype`: floating-point values cast, everything else kept."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.params import SHARDING, Param, Params


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _params() -> Params:
  """Weights beside a typed PRNG key, a counter, a flag and a complex value."""
  return Params({
      ("net", "w"): Param(jnp.ones((2, 3)), metadata={SHARDING: (None, "model")}),
      ("net", "b"): Param(jnp.zeros(3, jnp.bfloat16), trainable=False),
      ("rng", "seed"): Param(jax.random.key(0), trainable=False),
      ("rng", "counter"): Param(jnp.zeros((), jnp.uint32), trainable=False),
      ("net", "mask"): Param(jnp.ones(2, bool), trainable=False),
      ("net", "phase"): Param(jnp.ones(2, jnp.complex64)),
  }).locked()


def test_a_tree_map_cast_fails_on_a_typed_key_and_astype_does_not() -> None:
  params = _params()
  # What users report: the typed key beside the weights cannot be cast.
  with pytest.raises(NotImplementedError, match="astype"):
    jax.tree.map(lambda value: value.astype(jnp.bfloat16), params)
  cast = params.astype(jnp.bfloat16)
  assert cast[("net", "w")].value.dtype == jnp.bfloat16
  assert cast[("rng", "seed")].value is params[("rng", "seed")].value


def test_only_floating_values_are_cast_and_the_structure_is_kept() -> None:
  params = _params()
  cast = params.astype(jnp.float16)
  assert list(cast) == list(params)
  assert cast.is_locked
  assert _treedef(cast) == _treedef(params)  # flags, metadata, ranks and lock
  for path, param in params.items():
    value = cast[path].value
    if jnp.issubdtype(param.value.dtype, jnp.floating):
      assert value.dtype == jnp.float16
      np.testing.assert_array_equal(value, param.value.astype(jnp.float16))
    else:
      assert value is param.value
  assert cast[("net", "w")].metadata == params[("net", "w")].metadata


def test_values_that_already_have_the_dtype_are_the_same_objects() -> None:
  params = _params()
  cast = params.astype("bfloat16")
  assert cast[("net", "b")].value is params[("net", "b")].value


def test_numpy_values_stay_numpy_and_abstract_values_get_the_dtype() -> None:
  params = Params({("w",): Param(np.ones(2, np.float32)), ("k",): Param(jax.random.key(1))})
  cast = params.astype(jnp.bfloat16)
  assert isinstance(cast[("w",)].value, np.ndarray)
  assert cast[("w",)].value.dtype == jnp.bfloat16
  abstract = jax.eval_shape(lambda: params).astype(jnp.float16)
  value = abstract[("w",)].value
  assert isinstance(value, jax.ShapeDtypeStruct) and value.dtype == jnp.float16
  assert abstract[("k",)].value.dtype == params[("k",)].value.dtype


def test_astype_works_under_jit() -> None:
  params = _params()
  cast = jax.jit(lambda p: p.astype(jnp.bfloat16))(params)
  assert cast[("net", "w")].value.dtype == jnp.bfloat16
  assert _treedef(cast) == _treedef(params)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, bool, jnp.complex64])
def test_a_dtype_that_is_not_floating_is_refused(dtype: Any) -> None:
  with pytest.raises(ValueError, match="astype casts the floating-point params.*is not one"):
    _params().astype(dtype)


def test_a_64_bit_dtype_without_64_bit_mode_is_refused() -> None:
  assert jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float32  # x64 is off
  with pytest.raises(ValueError, match=r"float64.*jax_enable_x64"):
    _params().astype(jnp.float64)


def test_something_that_is_not_a_dtype_is_refused() -> None:
  with pytest.raises(TypeError, match="'half-ish' is not a dtype"):
    _params().astype("half-ish")
