"""Tests of `Params.freeze` / `unfreeze`, frozen layers and `restore_frozen_layers`."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.params import (
    FROZEN_LAYERS,
    STACKED,
    Param,
    Params,
    load,
    restore_frozen_layers,
    save,
    value_and_grad,
)

STACK_W = ("net", "stack", "w")
STACK_B = ("net", "stack", "b")
OUT_W = ("net", "out", "w")
SEED = ("rng", "seed")
COUNT = ("rng", "count")


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _params() -> Params:
  """A stack of 4 layers (stacked params), an output layer and random-stream state."""
  return Params({
      STACK_W: Param(jnp.arange(8.0).reshape(4, 2), metadata={STACKED: (4,)}),
      STACK_B: Param(jnp.zeros((4, 2)), metadata={STACKED: (4,)}),
      OUT_W: Param(jnp.ones(2)),
      SEED: Param(jax.random.key(0), trainable=False),
      COUNT: Param(jnp.zeros((), jnp.uint32), trainable=False),
  }).locked()


def _flags(params: Params) -> dict[tuple[str, ...], bool]:
  return {path: param.trainable for path, param in params.items()}


# Whole params.


def test_freeze_by_pattern_matches_the_whole_slash_joined_path() -> None:
  params = _params()
  frozen = params.freeze("net/stack/.*")
  assert _flags(frozen) == {STACK_W: False, STACK_B: False, OUT_W: True, SEED: False, COUNT: False}
  assert list(frozen) == list(params) and frozen.is_locked
  for path in params:
    assert frozen[path].value is params[path].value
  # fullmatch: a pattern for the last name alone matches nothing.
  with pytest.raises(ValueError, match="'w' matches no param path"):
    params.freeze("w")
  assert _flags(params.freeze(".*/w")) == {
      STACK_W: False, STACK_B: True, OUT_W: False, SEED: False, COUNT: False}


def test_freeze_by_predicate() -> None:
  frozen = _params().freeze(lambda path, param: param.value.ndim == 1)
  assert _flags(frozen)[OUT_W] is False and _flags(frozen)[STACK_W] is True


def test_unfreeze_leaves_integer_and_key_params_alone() -> None:
  params = _params()
  unfrozen = params.freeze(".*").unfreeze(".*")
  assert _flags(unfrozen) == _flags(params)
  assert _treedef(unfrozen) == _treedef(params)


def test_freezing_what_is_frozen_gives_the_same_params() -> None:
  params = _params()
  assert params.freeze("rng/.*") is params
  assert params.unfreeze("net/.*") is params


def test_freezing_changes_the_structure_and_is_undone_by_unfreezing() -> None:
  params = _params()
  frozen = params.freeze("net/out/w")
  assert _treedef(frozen) != _treedef(params)
  assert _treedef(frozen.unfreeze("net/out/w")) == _treedef(params)


def test_an_unmatched_pattern_names_it_and_the_closest_paths() -> None:
  with pytest.raises(ValueError) as info:
    _params().freeze("net/stak/w")
  message = str(info.value)
  assert message.startswith("freeze: the pattern 'net/stak/w' matches no param path")
  assert "Closest paths: 'net/stack/w'" in message
  with pytest.raises(ValueError, match="unfreeze: the pattern 'zzz' matches no param path.*"
                     r"The params hold 'net/stack/w', 'net/stack/b', 'net/out/w' and 2 more\."):
    _params().unfreeze("zzz")


def test_a_predicate_that_selects_nothing_is_an_error_too() -> None:
  def never(path: tuple[str, ...], param: Param) -> bool:
    return False

  with pytest.raises(ValueError, match="freeze: the predicate never selects no param"):
    _params().freeze(never)
  with pytest.raises(ValueError, match="The params are empty"):
    Params().freeze(".*")


def test_a_bad_where_is_refused_with_what_to_pass() -> None:
  with pytest.raises(ValueError, match=r"'net/\[' is not a valid regular expression"):
    _params().freeze("net/[")
  with pytest.raises(TypeError, match="For the one param at that path, pass 'net/out/w'"):
    _params().freeze(OUT_W)  # type: ignore[arg-type]  # the point: a tuple path


# Layers of stacked params.


def test_freezing_layers_records_them_and_keeps_the_param_trainable() -> None:
  params = _params()
  frozen = params.freeze("net/stack/.*", layers=[2, 0])
  for path in (STACK_W, STACK_B):
    assert frozen[path].trainable is True
    assert frozen[path].metadata[FROZEN_LAYERS] == (0, 2)
    assert frozen[path].metadata[STACKED] == (4,)
  more = frozen.freeze("net/stack/w", layers=[-1])
  assert more[STACK_W].metadata[FROZEN_LAYERS] == (0, 2, 3)
  assert more[STACK_B].metadata[FROZEN_LAYERS] == (0, 2)


def test_unfreezing_layers_removes_them_and_then_the_entry() -> None:
  frozen = _params().freeze("net/stack/w", layers=range(3))
  fewer = frozen.unfreeze("net/stack/w", layers=[1])
  assert fewer[STACK_W].metadata[FROZEN_LAYERS] == (0, 2)
  none = fewer.unfreeze("net/stack/w", layers=[0, 2])
  assert FROZEN_LAYERS not in none[STACK_W].metadata
  assert _treedef(none) == _treedef(_params())


def test_a_param_frozen_as_a_whole_counts_as_all_layers_frozen() -> None:
  whole = _params().freeze("net/stack/w")
  assert whole.freeze("net/stack/w", layers=[1]) is whole
  partly = whole.unfreeze("net/stack/w", layers=[1])
  assert partly[STACK_W].trainable is True
  assert partly[STACK_W].metadata[FROZEN_LAYERS] == (0, 2, 3)
  # Freezing or unfreezing the whole param forgets its frozen layers.
  assert FROZEN_LAYERS not in partly.unfreeze("net/stack/w")[STACK_W].metadata
  assert FROZEN_LAYERS not in partly.freeze("net/stack/w")[STACK_W].metadata


def test_layers_need_stacked_params_and_indices_in_range() -> None:
  params = _params()
  with pytest.raises(ValueError, match=r"layers=\.\.\.\) acts on stacked params.*\('net', 'out', 'w'\) is not stacked"):
    params.freeze("net/.*", layers=[0])
  with pytest.raises(ValueError, match=r"\('net', 'stack', 'w'\) is stacked for 4 layers, so layer 4 is out of range"):
    params.freeze("net/stack/w", layers=[4])
  with pytest.raises(ValueError, match="layer -5 is out of range"):
    params.unfreeze("net/stack/w", layers=[-5])
  with pytest.raises(ValueError, match="layers is empty"):
    params.freeze("net/stack/w", layers=[])
  with pytest.raises(TypeError, match="layers must be layer indices"):
    params.freeze("net/stack/w", layers=[0.0])  # type: ignore[list-item]  # the point
  with pytest.raises(TypeError, match="layers must be a list of layer indices"):
    params.freeze("net/stack/w", layers=1)  # type: ignore[arg-type]  # the point


def test_numpy_integers_are_layer_indices() -> None:
  frozen = _params().freeze("net/stack/w", layers=np.arange(2))
  assert frozen[STACK_W].metadata[FROZEN_LAYERS] == (0, 1)


def test_value_and_grad_gives_frozen_layers_zero_gradients() -> None:
  params = _params().freeze("net/stack/.*", layers=[0, 1])

  def loss_fn(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    w, b = params[STACK_W].value, params[STACK_B].value
    loss = jnp.sum((w * x + b) ** 2) + jnp.sum(params[OUT_W].value)
    return loss, params

  _, _, grads = jax.jit(value_and_grad(loss_fn))(params, jnp.ones(2))
  for path in (STACK_W, STACK_B):
    grad = np.asarray(grads[path].value)
    assert (grad[:2] == 0).all() and not jnp.signbit(grad[:2]).any()
    assert (grad[2:] != 0).all()
  assert (np.asarray(grads[OUT_W].value) == 1).all()


def test_restore_frozen_layers_puts_them_back_bit_for_bit() -> None:
  nan_with_payload = np.array([0x7FC00001], np.uint32).view(np.float32)[0]
  value = np.array([[-0.0, nan_with_payload], [1.0, 2.0], [-0.0, 3.0]], np.float32)
  params = Params({("s",): Param(jnp.asarray(value), metadata={STACKED: (3,)})})
  params = params.freeze("s", layers=[0, 2])
  # A zero update is not bit-identical: -0.0 + 0.0 is +0.0 (and NaN payloads may change).
  stepped = params.map(lambda path, param: param.value + 0.0 - 1.0)
  restored = jax.jit(restore_frozen_layers)(stepped, params)
  bits = np.asarray(restored[("s",)].value).view(np.uint32)
  np.testing.assert_array_equal(bits[[0, 2]], value.view(np.uint32)[[0, 2]])
  np.testing.assert_array_equal(np.asarray(restored[("s",)].value)[1], [0.0, 1.0])
  assert _treedef(restored) == _treedef(params)


def test_restore_leaves_params_without_frozen_layers_as_they_are() -> None:
  params = _params()
  stepped = params.map(lambda path, param: param.value)
  assert restore_frozen_layers(stepped, params) is stepped
  frozen = params.freeze("net/stack/w", layers=[0])
  new = restore_frozen_layers(frozen, frozen)
  assert new[OUT_W].value is frozen[OUT_W].value


def test_restore_names_what_does_not_fit() -> None:
  frozen = _params().freeze("net/stack/w", layers=[0])
  with pytest.raises(TypeError, match="original must be Params, got dict"):
    restore_frozen_layers(frozen, {})  # type: ignore[arg-type]  # the point
  other, _ = frozen.split(lambda path, _: path != STACK_W)
  with pytest.raises(ValueError, match=r"\('net', 'stack', 'w'\) has frozen layers \(0,\), but original holds no such path"):
    restore_frozen_layers(frozen, other)
  wrong = Params({STACK_W: Param(jnp.zeros((4, 3)))})
  with pytest.raises(ValueError, match=r"float32\[4, 2\] in updated but float32\[4, 3\] in original"):
    restore_frozen_layers(frozen, wrong)
  past = Params({STACK_W: Param(jnp.zeros(2), metadata={STACKED: (2,), FROZEN_LAYERS: (5,)})})
  with pytest.raises(ValueError, match=r"float32\[2\] with the metadata .*'frozen_layers' entry lists the layers \(5,\)"):
    restore_frozen_layers(past, past)


def test_a_frozen_layers_record_without_its_stack_is_refused() -> None:
  # E.g. one layer's params cut out of a stack, which kept the stack's record:
  # their own first axis must not be taken for the layer axis.
  layer = Params({("net", "0", "w"): Param(jnp.ones((3, 2)), metadata={FROZEN_LAYERS: (0, 1)})})
  with pytest.raises(ValueError, match=r"\('net', '0', 'w'\) holds float32\[3, 2\].*drop the 'frozen_layers' entry"):
    restore_frozen_layers(layer, layer)
  with pytest.raises(ValueError, match="index the leading axis of a stacked param"):
    value_and_grad(lambda p: (jnp.sum(p[("net", "0", "w")].value), p))(layer)


def test_frozen_layers_survive_a_checkpoint(tmp_path: Any) -> None:
  frozen = _params().freeze("net/stack/.*", layers=[1])
  path = os.path.join(tmp_path, "frozen.npz")
  save(path, frozen)
  assert load(path)[STACK_W].metadata[FROZEN_LAYERS] == (1,)
  assert _treedef(load(path, like=frozen)) == _treedef(frozen)
