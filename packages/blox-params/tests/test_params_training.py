"""Tests of `blox.params.value_and_grad` and `param_mask`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.params import RNG_COUNTER, RNG_SEED, RNG_STREAM, Param, Params, param_mask, value_and_grad

# Paths of the params under test (each container lists them in its own order).
W = ("vg_net", "w")
B = ("vg_net", "b")
FROZEN = ("net", "frozen")
SEED = ("net", "rng", "seed")
COUNTER = ("net", "rng", "counter")


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _params() -> Params:
  """Two trainable params, a frozen one, and a seed/counter random stream."""
  return Params({
      W: Param(jnp.array([[1.0, -2.0], [0.5, 3.0]])),
      B: Param(jnp.array([0.1, -0.2])),
      FROZEN: Param(jnp.array([2.0, 0.5]), trainable=False),
      SEED: Param(jax.random.key(0), trainable=False, metadata={RNG_STREAM: RNG_SEED}),
      COUNTER: Param(
          jnp.zeros((), jnp.uint32), trainable=False, metadata={RNG_STREAM: RNG_COUNTER}
      ),
  }).locked()


def _draw(params: Params) -> tuple[jax.Array, Params]:
  """What an Rng does: fold the counter into the seed, then advance it."""
  counter = params[COUNTER].value
  key = jax.random.fold_in(params[SEED].value, counter)
  return key, params.set(COUNTER, counter + jnp.uint32(1))


def _loss(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Params]:
  key, params = _draw(params)
  noise = 0.01 * jax.random.normal(key, x.shape)
  h = (x + noise) @ params[W].value + params[B].value
  prediction = h * params[FROZEN].value
  return jnp.mean((prediction - y) ** 2), params


def _data() -> tuple[jax.Array, jax.Array]:
  x = jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.3, 0.3]])
  return x, jnp.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])


def test_grads_match_manual_split_grad_merge() -> None:
  params, (x, y) = _params(), _data()

  def manual(params: Params) -> tuple[jax.Array, Params, Params]:
    trainable, rest = params.split()

    def inner(trainable: Params) -> tuple[jax.Array, Params]:
      loss, new_params = _loss(trainable.merge(rest), x, y)
      return loss, new_params.split()[1]

    (loss, new_rest), grads = jax.value_and_grad(inner, has_aux=True)(trainable)
    return loss, trainable.merge(new_rest), grads

  loss, new_params, grads = jax.jit(value_and_grad(_loss))(params, x, y)
  want_loss, want_params, want_grads = jax.jit(manual)(params)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert _treedef(grads) == _treedef(want_grads)
  for path in (W, B):
    np.testing.assert_allclose(grads[path].value, want_grads[path].value, rtol=1e-6)
  assert _treedef(new_params) == _treedef(want_params)


def test_grads_cover_exactly_the_trainable_params() -> None:
  params, (x, y) = _params(), _data()
  _, _, grads = value_and_grad(_loss)(params, x, y)
  trainable, _ = params.split()
  assert _treedef(grads) == _treedef(trainable)
  assert list(grads) == [W, B]
  assert all(np.any(grads[path].value != 0) for path in grads)


def test_non_trainable_state_advances_and_trainable_values_are_kept() -> None:
  params, (x, y) = _params(), _data()
  step = jax.jit(value_and_grad(_loss))
  _, once, _ = step(params, x, y)
  _, twice, _ = step(once, x, y)
  assert int(once[COUNTER].value) == 1
  assert int(twice[COUNTER].value) == 2
  # The trainable values are given back unchanged: the optimizer applies updates.
  for path in (W, B, FROZEN):
    np.testing.assert_array_equal(twice[path].value, params[path].value)
  assert _treedef(twice) == _treedef(params)
  assert twice.is_locked


def test_one_trace_for_repeated_steps() -> None:
  params, (x, y) = _params(), _data()
  traces: list[int] = []

  def counted(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Params]:
    traces.append(1)
    return _loss(params, x, y)

  step = jax.jit(value_and_grad(counted))
  for _ in range(3):
    loss, params, grads = step(params, x, y)
    trainable, rest = params.split()
    params = jax.tree.map(lambda w, g: w - 0.1 * g, trainable, grads).merge(rest)
  assert len(traces) == 1
  assert int(params[COUNTER].value) == 3


def test_sgd_with_the_helper_lowers_the_loss() -> None:
  params, (x, y) = _params(), _data()
  step = jax.jit(value_and_grad(_loss))
  first, _, _ = step(params, x, y)
  for _ in range(50):
    loss, params, grads = step(params, x, y)
    trainable, rest = params.split()
    params = jax.tree.map(lambda w, g: w - 0.05 * g, trainable, grads).merge(rest)
  assert float(loss) < 0.5 * float(first)
  np.testing.assert_array_equal(params[FROZEN].value, _params()[FROZEN].value)


def test_has_aux_returns_loss_and_aux() -> None:
  params, (x, y) = _params(), _data()

  def with_aux(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Any]:
    loss, params = _loss(params, x, y)
    return loss, ({"double": 2 * loss}, params)

  (loss, aux), new_params, grads = value_and_grad(with_aux, has_aux=True)(params, x, y)
  np.testing.assert_allclose(aux["double"], 2 * loss)
  assert int(new_params[COUNTER].value) == 1
  plain_loss, _, plain_grads = value_and_grad(_loss)(params, x, y)
  np.testing.assert_allclose(loss, plain_loss)
  np.testing.assert_allclose(grads[W].value, plain_grads[W].value)


def test_wrong_return_shapes_are_explained() -> None:
  params, (x, y) = _params(), _data()

  def bare(params: Params, x: jax.Array, y: jax.Array) -> Any:
    return _loss(params, x, y)[0]

  def aux_without_flag(params: Params, x: jax.Array, y: jax.Array) -> Any:
    loss, params = _loss(params, x, y)
    return loss, (loss, params)

  with pytest.raises(TypeError, match=r"value_and_grad\(bare\).*\(loss, params\)"):
    value_and_grad(bare)(params, x, y)
  with pytest.raises(TypeError, match="has_aux=True"):
    value_and_grad(aux_without_flag)(params, x, y)
  with pytest.raises(TypeError, match=r"\(aux, params\)"):
    value_and_grad(_loss, has_aux=True)(params, x, y)
  with pytest.raises(TypeError, match="must be Params"):
    value_and_grad(_loss)({"w": 1.0}, x, y)


def test_changing_the_trainable_set_is_an_error() -> None:
  params, (x, y) = _params(), _data()

  def creates(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Params]:
    loss, params = _loss(params, x, y)
    _, params = params.unlocked().get_or_create(
        ("net", "extra"), (2,), init=jax.nn.initializers.zeros
    )
    return loss, params.locked()

  def freezes(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Params]:
    loss, params = _loss(params, x, y)
    return loss, params.set(B, trainable=False)

  def unlocks(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Params]:
    loss, params = _loss(params, x, y)
    return loss, params.unlocked()

  with pytest.raises(ValueError, match=r"new: \[\('net', 'extra'\)\]"):
    value_and_grad(creates)(params, x, y)
  with pytest.raises(ValueError, match=r"gone: \[\('vg_net', 'b'\)\]"):
    value_and_grad(freezes)(params, x, y)
  with pytest.raises(ValueError, match="is_locked=False"):
    value_and_grad(unlocks)(params, x, y)


@pytest.mark.parametrize(
    "value",
    [jnp.zeros((), jnp.int32), jnp.array([True, False]), jax.random.key(0)],
    ids=["int", "bool", "key"],
)
def test_trainable_params_that_cannot_be_differentiated_are_named(value: Any) -> None:
  params = Params({W: Param(jnp.ones(2)), ("net", "oops"): Param(value)}).locked()

  def loss(params: Params) -> tuple[jax.Array, Params]:
    return jnp.sum(params[W].value), params

  with pytest.raises(TypeError, match=r"\('net', 'oops'\).*trainable=False") as info:
    value_and_grad(loss)(params)
  assert "('vg_net', 'w')" not in str(info.value)
  # Marked non-trainable, the same params differentiate fine.
  fixed = params.set(("net", "oops"), trainable=False)
  _, _, grads = value_and_grad(loss)(fixed)
  assert list(grads) == [W]


def test_new_non_trainable_state_is_kept_at_init() -> None:
  params, (x, y) = _params().unlocked(), _data()

  def counts_calls(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Params]:
    loss, params = _loss(params, x, y)
    calls, params = params.get_or_create(
        ("net", "calls"), (), init=jax.nn.initializers.zeros, trainable=False
    )
    return loss, params.set(("net", "calls"), calls + 1)

  _, new_params, grads = value_and_grad(counts_calls)(params, x, y)
  assert float(new_params[("net", "calls")].value) == 1.0
  assert ("net", "calls") not in grads


def test_param_mask_reads_paths_and_metadata() -> None:
  params = Params({
      ("a", "kernel"): Param(jnp.ones(2)),
      ("a", "bias"): Param(jnp.ones(2), metadata={"decay": False}),
      ("b", "scale"): Param(jnp.ones(2), metadata={"decay": False}),
  })
  mask = param_mask(params, lambda path, p: p.metadata.get("decay", True))
  assert _treedef(mask) == _treedef(params)
  # Compared by path, and in the container's order.
  assert list(mask) == list(params)
  assert {p: mask[p].value for p in params} == {
      ("a", "kernel"): True, ("a", "bias"): False, ("b", "scale"): False}
  by_path = param_mask(params, lambda path, p: path[-1] == "kernel")
  assert {p: by_path[p].value for p in params} == {
      ("a", "kernel"): True, ("a", "bias"): False, ("b", "scale"): False}
