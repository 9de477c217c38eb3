"""Tests of `to_state_dict` / `Params.from_state_dict` and their errors."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import pytest

from blox.params import Param, Params


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as a plain object: the jax stubs leave
  `PyTreeDef` unresolved, so mypy refuses `==` on it."""
  return jax.tree.structure(tree)


def _params() -> Params:
  return Params({
      ("encoder", "dense", "kernel"): Param(jnp.ones((2, 3))),
      ("encoder", "dense", "bias"): Param(jnp.zeros(3), metadata={"sharding": ("model",)}),
      ("steps",): Param(jnp.zeros((), jnp.int32), trainable=False),
  }).locked()


def test_to_state_dict_nests_by_path_parts() -> None:
  params = _params()
  state = params.to_state_dict()
  assert set(state) == {"encoder", "steps"}
  assert set(state["encoder"]["dense"]) == {"kernel", "bias"}
  assert state["encoder"]["dense"]["kernel"] is params[("encoder", "dense", "kernel")].value
  assert state["steps"] is params[("steps",)].value


def test_round_trip_with_a_template_restores_flags_metadata_and_lock() -> None:
  params = _params()
  state = params.to_state_dict()
  state["encoder"]["dense"]["bias"] = jnp.ones(3)  # e.g. loaded from disk
  restored = Params.from_state_dict(state, template=params)
  assert restored.is_locked
  assert list(restored) == list(params)
  assert restored[("steps",)].trainable is False
  assert restored[("encoder", "dense", "bias")].sharding == ("model",)
  assert float(restored[("encoder", "dense", "bias")].value[0]) == 1.0
  assert _treedef(restored) == _treedef(params)


def test_round_trip_with_an_abstract_template() -> None:
  params = _params()
  abstract = jax.eval_shape(lambda: params)
  restored = Params.from_state_dict(params.to_state_dict(), template=abstract)
  assert _treedef(restored) == _treedef(params)
  assert restored[("steps",)].value is params[("steps",)].value


def test_round_trip_without_a_template_gives_plain_params() -> None:
  params = _params()
  restored = Params.from_state_dict(params.to_state_dict())
  assert list(restored) == list(params)
  assert not restored.is_locked
  assert all(p.trainable and not p.metadata for p in restored.values())
  assert restored[("steps",)].value is params[("steps",)].value


def test_empty_state_dict() -> None:
  assert Params().to_state_dict() == {}
  assert len(Params.from_state_dict({})) == 0


def test_a_path_under_another_params_path_cannot_be_nested() -> None:
  # The container lists the dict's order, so either path can come first.
  first_leaf = Params({
      ("nesting_outer",): Param(jnp.ones(1)),
      ("nesting_outer", "w"): Param(jnp.ones(1)),
  })
  assert list(first_leaf) == [("nesting_outer",), ("nesting_outer", "w")]
  with pytest.raises(ValueError, match=r"\('nesting_outer', 'w'\).*cannot be nested"):
    first_leaf.to_state_dict()
  first_inner = Params({
      ("nesting_tree", "w"): Param(jnp.ones(1)),
      ("nesting_tree",): Param(jnp.ones(1)),
  })
  assert list(first_inner) == [("nesting_tree", "w"), ("nesting_tree",)]
  with pytest.raises(ValueError, match=r"\('nesting_tree',\).*cannot be nested"):
    first_inner.to_state_dict()


def test_from_state_dict_template_mismatch_names_the_paths() -> None:
  params = _params()
  state = params.to_state_dict()
  del state["steps"]
  state["encoder"]["extra"] = jnp.ones(1)
  with pytest.raises(ValueError, match=r"missing \[\('steps',\)\].*unexpected \[\('encoder', 'extra'\)\]"):
    Params.from_state_dict(state, template=params)


def test_from_state_dict_rejects_keys_that_are_not_strings() -> None:
  with pytest.raises(TypeError, match="non-empty tuple of strings"):
    Params.from_state_dict({"layer": {0: jnp.ones(1)}})


def test_from_state_dict_template_reports_shape_and_dtype_mismatches() -> None:
  state = _params().to_state_dict()
  state["encoder"]["dense"]["kernel"] = jnp.ones((3, 2))
  state["steps"] = jnp.zeros((), jnp.float32)
  with pytest.raises(ValueError) as info:
    Params.from_state_dict(state, _params())
  message = str(info.value)
  assert "('encoder', 'dense', 'kernel'): float32[3, 2] where the template has float32[2, 3]" in message
  assert "('steps',): float32[] where the template has int32[]" in message
