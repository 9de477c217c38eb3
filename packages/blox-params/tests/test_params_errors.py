"""Error paths and edge cases of Params: mismatch reports, dtypes, init failures, leaves, paths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.params import Param, Params

W = ("rc_net", "w")
B = ("rc_net", "b")


def _two() -> Params:
  return Params({W: Param(jnp.ones(2)), B: Param(jnp.zeros(2))})


# Structure repr: what JAX prints on a mismatch.


def test_structure_repr_lists_every_path_with_its_flags() -> None:
  params = _two().set(B, trainable=False, metadata={"sharding": ("x",)}).locked()
  text = repr(jax.tree.structure(params))
  assert "locked=True" in text
  assert "('rc_net', 'w'): rank=0, trainable=True, metadata={}" in text
  assert "('rc_net', 'b'): rank=1, trainable=False, metadata={'sharding': ('x',)}" in text


def test_tree_map_mismatch_names_the_changed_path() -> None:
  params = _two()
  frozen = params.set(B, trainable=False)
  with pytest.raises(ValueError) as info:
    jax.tree.map(lambda x, y: x + y, params, frozen)
  message = str(info.value)
  # The diff lines (marked - and +) name the path whose flag changed.
  changed = [
      line for line in message.splitlines()
      if line.strip().startswith(("-", "+")) and "rc_net" in line
  ]
  assert changed, message
  assert all("('rc_net', 'b')" in line for line in changed), message
  assert any("trainable=False" in line for line in changed)


def test_structures_with_equal_fields_are_equal_and_hash_alike() -> None:
  a, b = _two(), _two()
  assert a._structure is not b._structure
  assert a._structure == b._structure
  assert hash(a._structure) == hash(b._structure)
  assert a._structure != a.locked()._structure
  assert a._structure != a.set(W, trainable=False)._structure


# Values must be single arrays.


@pytest.mark.parametrize("value", [[1.0, 2.0], None, 1.5, {"a": jnp.ones(2)}, (jnp.ones(2),)])
def test_constructor_refuses_values_that_are_not_one_array(value: Any) -> None:
  with pytest.raises(TypeError, match=r"rc_net.*must be an array.*jnp.asarray"):
    Params({W: Param(value)})


@pytest.mark.parametrize("value", [[1.0, 2.0], None, 3])
def test_setitem_refuses_values_that_are_not_one_array(value: Any) -> None:
  params = Params()
  with pytest.raises(TypeError, match=r"\('rc_net', 'w'\).*must be an array"):
    params[W] = Param(value)
  assert W not in params


def test_constructor_and_setitem_accept_arrays_numpy_scalars_and_abstract_values() -> None:
  abstract = jax.eval_shape(lambda: jnp.ones(2))  # a jax.ShapeDtypeStruct
  assert isinstance(abstract, jax.ShapeDtypeStruct)
  values = [jnp.ones(2), np.ones(3), np.float32(2.0), abstract]
  params = Params({("rc_ok", str(i)): Param(v) for i, v in enumerate(values)})
  assert len(params) == 4
  params[("rc_ok", "scalar")] = Param(np.int32(3))
  assert params[("rc_ok", "scalar")].value.dtype == np.int32


def test_set_accepts_numpy_scalars_and_hints_at_asarray() -> None:
  params = Params({W: Param(jnp.zeros((), jnp.float32))})
  updated = params.set(W, np.float32(4.0))
  assert float(updated[W].value) == 4.0
  with pytest.raises(TypeError, match="jnp.asarray"):
    params.set(W, 4.0)


def test_unflatten_still_passes_any_leaf_through() -> None:
  # JAX rebuilds Params with None, bools or shardings as leaves (masks,
  # optax placeholders, in_shardings); those must not be refused.
  params = _two()
  treedef = jax.tree.structure(params)
  rebuilt = jax.tree.unflatten(treedef, [None, True])
  assert rebuilt[W].value is None
  assert rebuilt[B].value is True


# Paths that are not tuples.


def test_getitem_with_a_list_path_explains_what_a_path_is() -> None:
  params = _two()
  with pytest.raises(TypeError, match=r"tuple of strings.*\['rc_net', 'w'\]"):
    params[["rc_net", "w"]]  # type: ignore[index]  # the point: a list path


def test_contains_is_false_for_unhashable_input() -> None:
  params = _two()
  assert ["rc_net", "w"] not in params
  assert {"a": 1} not in params
  assert W in params


# Init failures and dtypes.


def test_init_failure_without_a_key_source_names_the_param_and_the_missing_rng() -> None:
  with pytest.raises(Exception) as info:
    Params().get_or_create(("rc_dense", "kernel"), shape=(2, 3), init=jax.nn.initializers.lecun_normal())
  notes = "\n".join(getattr(info.value, "__notes__", []))
  assert "('rc_dense', 'kernel')" in notes
  assert "shape=(2, 3)" in notes
  assert "float32" in notes
  assert "key is None" in notes


def test_init_failure_with_a_key_names_the_param_but_not_the_rng() -> None:
  def broken(key: Any, shape: Sequence[int], dtype: Any) -> Any:
    raise ZeroDivisionError("boom")

  def key_source(params: Params) -> tuple[Any, Params]:
    return jax.random.key(0), params

  with pytest.raises(ZeroDivisionError, match="boom") as info:
    Params().get_or_create(("rc_dense", "bias"), shape=(3,), init=broken, rng=key_source)
  notes = "\n".join(getattr(info.value, "__notes__", []))
  assert "('rc_dense', 'bias')" in notes
  assert "key is None" not in notes


def test_float64_request_without_x64_creates_float32() -> None:
  assert jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float32  # x64 is off
  seen: list[Any] = []

  def zeros(key: Any, shape: Sequence[int], dtype: Any) -> Any:
    seen.append(dtype)
    return jnp.zeros(shape, dtype)

  value, params = Params().get_or_create(("rc_x64", "w"), shape=(2,), init=zeros, param_dtype=jnp.float64)
  assert value.dtype == jnp.float32
  assert seen == [jnp.float32]
  assert params[("rc_x64", "w")].value.dtype == jnp.zeros(2, jnp.float32).dtype


def test_existing_float32_param_requested_as_float64_is_accepted() -> None:
  params = Params({("rc_x64", "b"): Param(jnp.zeros(2, jnp.float32))})
  value, same = params.get_or_create(("rc_x64", "b"), shape=(2,), param_dtype=jnp.float64)
  assert same is params
  assert value.dtype == jnp.float32
  with pytest.raises(ValueError, match="dtype"):
    params.get_or_create(("rc_x64", "b"), param_dtype=jnp.int32)


def test_key_dtype_requests_still_work() -> None:
  key_dtype = jax.random.key(0).dtype
  value, params = Params().get_or_create(
      ("rc_keys", "seed"), shape=(), param_dtype=key_dtype,
      init=lambda key, shape, dtype: jax.random.key(1),
  )
  assert value.dtype == key_dtype
  again, _ = params.get_or_create(("rc_keys", "seed"), param_dtype=key_dtype)
  assert again is value


# keys() and the path index.


def test_keys_is_a_view_of_the_paths_in_creation_order() -> None:
  params = Params()
  for name in ("rc_k3", "rc_k1", "rc_k2"):
    _, params = params.get_or_create((name, "w"), shape=(1,), init=jax.nn.initializers.zeros)
  keys = params.keys()
  assert list(keys) == [("rc_k3", "w"), ("rc_k1", "w"), ("rc_k2", "w")]
  assert ("rc_k1", "w") in keys
  assert len(keys) == 3
  assert keys == {("rc_k1", "w"), ("rc_k2", "w"), ("rc_k3", "w")}


def test_index_after_appending_and_merging_matches_the_paths() -> None:
  # Created params are appended; merging halves puts entries back between
  # others, and merging unrelated containers renumbers: in every case each
  # path must be found at its position.
  early = ("rc_ix", "early")
  params = Params()
  for name in ("a", "b", "c"):
    _, params = params.get_or_create(("rc_ix", name), shape=(1,), init=jax.nn.initializers.ones)
  _, params = params.get_or_create(early, shape=(2,), init=jax.nn.initializers.zeros)
  assert list(params)[-1] == early
  middle, outer = params.split(lambda path, _: path[-1] in ("b", "c"))
  unrelated = Params({("rc_ix", "z"): Param(jnp.ones(3)), early: Param(jnp.ones(4))})
  for container in (params, outer.merge(middle), middle.merge(outer), params.merge(unrelated)):
    for path in container:
      assert container[path].value is container._values[list(container).index(path)]
  assert list(outer.merge(middle)) == list(params)
  assert params.merge(unrelated)[early].value.shape == (4,)
  assert params[("rc_ix", "c")].value.shape == (1,)
