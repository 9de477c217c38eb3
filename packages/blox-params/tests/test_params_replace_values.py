"""Tests of `Params.replace_values`: values from other params, in this order."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import pytest

from blox.params import Param, Params


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _params() -> Params:
  return Params({
      ("enc", "w"): Param(jnp.zeros((2, 2))),
      ("enc", "b"): Param(jnp.zeros(2), metadata={"tag": 1}),
      ("head", "w"): Param(jnp.zeros(2), trainable=False),
      ("rng", "seed"): Param(jax.random.key(0), trainable=False),
  }).locked()


def test_values_come_from_other_in_these_params_order() -> None:
  params = _params()
  # Other lists its paths in another order, with other flags and metadata.
  other = Params({
      ("head", "w"): Param(jnp.ones(2), trainable=True, metadata={"tag": 2}),
      ("enc", "w"): Param(jnp.full((2, 2), 3.0), trainable=False),
  })
  new = params.replace_values(other)
  assert list(new) == list(params)
  assert _treedef(new) == _treedef(params)  # flags, metadata, ranks, lock: these
  assert new[("enc", "w")].value is other[("enc", "w")].value
  assert new[("head", "w")].value is other[("head", "w")].value
  assert new[("head", "w")].trainable is False
  assert new[("enc", "b")].value is params[("enc", "b")].value
  assert new[("rng", "seed")].value is params[("rng", "seed")].value


def test_typed_keys_can_be_replaced_too() -> None:
  key = jax.random.key(7)
  new = _params().replace_values(Params({("rng", "seed"): Param(key)}))
  assert new[("rng", "seed")].value is key


def test_empty_other_gives_these_params() -> None:
  params = _params()
  assert params.replace_values(Params()) is params


def test_replace_values_works_under_jit() -> None:
  params = _params()
  other = Params({("enc", "b"): Param(jnp.ones(2))})
  new = jax.jit(lambda p, o: p.replace_values(o))(params, other)
  assert new[("enc", "b")].value.tolist() == [1.0, 1.0]
  assert _treedef(new) == _treedef(params)


def test_every_path_that_cannot_replace_is_named_in_one_error() -> None:
  other = Params({
      ("enc", "bias"): Param(jnp.ones(2)),
      ("enc", "w"): Param(jnp.ones(3)),
      ("head", "w"): Param(jnp.ones(2, jnp.int32)),
      ("enc", "b"): Param(jnp.ones(2)),
  })
  with pytest.raises(ValueError) as info:
    _params().replace_values(other)
  message = str(info.value)
  assert message.startswith("replace_values: 3 of the other params' paths cannot replace")
  assert "('enc', 'bias') is not in these params. Closest existing paths: ('enc', 'b')" in message
  assert "('enc', 'w'): these params hold float32[2, 2], the other float32[3]" in message
  assert "('head', 'w'): these params hold float32[2], the other int32[2]" in message
  assert len([line for line in message.splitlines() if line.startswith("  ")]) == 3


def test_other_must_be_params() -> None:
  with pytest.raises(TypeError, match="replace_values takes Params, got dict"):
    _params().replace_values({("enc", "w"): jnp.ones((2, 2))})  # type: ignore[arg-type]  # the point
