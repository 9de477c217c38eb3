"""`copy.copy`, `copy.deepcopy` and pickle round trips of `Params`, `Param`
and `Metadata` (checkpoints never use pickle; users may)."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.params import Metadata, Param, Params
from blox.params._container import build


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _params() -> Params:
  return Params({
      ("cp_net", "w"): Param(jnp.arange(6.0).reshape(2, 3), metadata={"sharding": (None, "x")}),
      ("cp_net", "steps"): Param(jnp.zeros((), jnp.int32), trainable=False),
  }).locked()


def _assert_same(expected: Params, actual: Params) -> None:
  assert list(actual) == list(expected)
  assert actual.is_locked == expected.is_locked
  assert _treedef(actual) == _treedef(expected)
  for path in expected:
    assert actual[path].trainable == expected[path].trainable
    assert actual[path].metadata == expected[path].metadata
    np.testing.assert_array_equal(np.asarray(actual[path].value), np.asarray(expected[path].value))
    assert actual[path].value.dtype == expected[path].value.dtype


def test_params_copy_deepcopy_and_pickle_round_trip() -> None:
  params = _params()
  for copied in (copy.copy(params), copy.deepcopy(params), pickle.loads(pickle.dumps(params))):
    assert isinstance(copied, Params)
    assert copied is not params
    _assert_same(params, copied)


def test_copied_params_hit_the_same_jit_cache_entry() -> None:
  traces: list[None] = []

  @jax.jit
  def total(params: Params) -> jax.Array:
    traces.append(None)
    return jnp.sum(params[("cp_net", "w")].value)

  params = _params()
  total(params)
  total(pickle.loads(pickle.dumps(params)))
  total(copy.deepcopy(params))
  assert len(traces) == 1


def test_unpickling_recomputes_the_structure_hash() -> None:
  # String hashes differ between processes, so a hash carried in the pickle
  # would not match a structure built in the loading process. Simulate it by
  # corrupting the cached hash before pickling.
  params = _params()
  structure: Any = params._structure
  real = hash(structure)
  object.__setattr__(structure, "_hash", real + 1)
  loaded = pickle.loads(pickle.dumps(params))
  assert hash(loaded._structure) == real
  assert _treedef(loaded) == _treedef(build(_params()._structure, params._values))


def test_unlocked_params_stay_unlocked_and_mutating_a_copy_leaves_the_original() -> None:
  params = _params().unlocked()
  copied = copy.copy(params)
  copied[("cp_net", "extra")] = Param(jnp.ones(2))
  assert ("cp_net", "extra") in copied
  assert ("cp_net", "extra") not in params
  assert not pickle.loads(pickle.dumps(params)).is_locked


def test_param_copy_deepcopy_and_pickle_round_trip() -> None:
  param = Param(np.arange(3.0), trainable=False, metadata={"sharding": ("x",)})
  for copied in (copy.copy(param), copy.deepcopy(param), pickle.loads(pickle.dumps(param))):
    assert isinstance(copied, Param)
    assert copied.trainable is False
    assert copied.metadata == {"sharding": ("x",)}
    np.testing.assert_array_equal(copied.value, param.value)
  assert copy.copy(param).value is param.value
  assert copy.deepcopy(param).value is not param.value


def test_metadata_copy_deepcopy_and_pickle_round_trip() -> None:
  metadata = Metadata({"sharding": ("data", None), "decay": False})
  for copied in (copy.copy(metadata), copy.deepcopy(metadata), pickle.loads(pickle.dumps(metadata))):
    assert isinstance(copied, Metadata)
    assert copied == metadata
    assert hash(copied) == hash(metadata)
    assert dict(copied) == {"sharding": ("data", None), "decay": False}
