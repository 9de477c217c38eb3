"""Tests of `static_scan`, `dynamic_scan` and `time_length`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import dynamic_scan, static_scan, time_length
from blox.params import Param, Params

_W = ("scan", "w")
_COUNT = ("scan", "count")


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def step(params: Params, x: jax.Array, h: jax.Array) -> tuple[tuple[Any, jax.Array], Params]:
  """h' = 0.5 h + w x, also advancing a counter param like an Rng would.

  Outputs are a pytree `(h', count)`: both leaves are stacked on axis 1.
  """
  w, params = params.get_or_create(_W, x.shape[-1:], init=jax.nn.initializers.ones)
  count, params = params.get_or_create(
      _COUNT, (), init=jax.nn.initializers.zeros, param_dtype=jnp.uint32, trainable=False
  )
  params = params.set(_COUNT, count + jnp.uint32(1))
  new_h = 0.5 * h + w * x
  outputs = (new_h, jnp.broadcast_to(count, x.shape[:1]))
  return (outputs, new_h), params


def _inputs(batch: int = 2, time: int = 4, features: int = 3) -> jax.Array:
  return jnp.arange(batch * time * features, dtype=jnp.float32).reshape(batch, time, features)


def _reference(x: jax.Array) -> np.ndarray:
  h = np.zeros((x.shape[0], x.shape[2]), np.float32)
  outs = []
  for t in range(x.shape[1]):
    h = 0.5 * h + np.asarray(x[:, t])
    outs.append(h)
  return np.stack(outs, axis=1)


def test_static_scan_matches_a_python_reference_and_threads_params() -> None:
  x = _inputs()
  ((hs, counts), final), params = static_scan(step, Params(), x, jnp.zeros((2, 3)))
  np.testing.assert_allclose(hs, _reference(x))
  np.testing.assert_allclose(final, hs[:, -1])
  assert counts.shape == (2, 4)
  np.testing.assert_array_equal(counts[0], [0, 1, 2, 3])
  assert int(params[_COUNT].value) == 4
  assert list(params) == [_W, _COUNT]


def test_dynamic_scan_agrees_with_static_and_uses_lax_scan() -> None:
  x = _inputs()
  h0 = jnp.ones((2, 3))
  _, params = static_scan(step, Params(), x[:, :1], h0)
  params = params.locked()
  (static_out, static_final), static_params = static_scan(step, params, x, h0)
  (dynamic_out, dynamic_final), dynamic_params = dynamic_scan(step, params, x, h0)
  for a, b in zip(jax.tree.leaves(static_out), jax.tree.leaves(dynamic_out)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(static_final, dynamic_final, rtol=1e-6)
  # The counter advanced once per step inside lax.scan: params are carried.
  assert int(dynamic_params[_COUNT].value) == int(static_params[_COUNT].value) == 5
  assert _treedef(dynamic_params) == _treedef(params)
  jaxpr = jax.make_jaxpr(lambda p, x: dynamic_scan(step, p, x, h0))(params, x)
  assert "scan" in str(jaxpr)
  static_jaxpr = jax.make_jaxpr(lambda p, x: static_scan(step, p, x, h0))(params, x)
  assert "scan" not in str(static_jaxpr)


def _assert_same(a: Any, b: Any) -> None:
  """Equal pytrees: same structure, bit-identical leaves."""
  assert _treedef(a) == _treedef(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert jnp.shape(x) == jnp.shape(y) and jnp.result_type(x) == jnp.result_type(y)
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("time", [1, 2, 5])
def test_dynamic_scan_while_unlocked_equals_static_scan(time: int) -> None:
  x = _inputs(time=time)
  h0 = jnp.ones((2, 3))
  static = static_scan(step, Params(), x, h0)
  dynamic = dynamic_scan(step, Params(), x, h0)
  # Outputs, final state and params (values, flags, metadata, the counter).
  _assert_same(dynamic, static)
  (_, _), params = dynamic
  assert list(params) == [_W, _COUNT]
  assert not params.is_locked
  assert int(params[_COUNT].value) == time


def test_dynamic_scan_while_unlocked_scans_after_the_first_step() -> None:
  x = _inputs(time=50)
  h0 = jnp.zeros((2, 3))
  jaxpr = jax.make_jaxpr(lambda x: dynamic_scan(step, Params(), x, h0))(x)
  primitives = [eqn.primitive.name for eqn in jaxpr.eqns]
  assert "scan" in primitives
  # One Python step plus one scan, not 50 unrolled steps.
  assert len(primitives) < 50
  unrolled = jax.make_jaxpr(lambda x: static_scan(step, Params(), x, h0))(x)
  assert len(unrolled.eqns) > 100


def test_dynamic_scan_rejects_a_param_created_after_the_first_step() -> None:
  calls: list[None] = []

  def late(params: Params, x: jax.Array, h: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Params]:
    calls.append(None)
    if len(calls) > 1:
      _, params = params.get_or_create(("late", "b"), (), init=jax.nn.initializers.zeros)
    return (x, h), params

  with pytest.raises(ValueError, match=r"^net/rnn: .*another structure.*created \('late', 'b'\)"):
    dynamic_scan(late, Params(), jnp.ones((1, 3, 1)), jnp.zeros((1, 1)), where="net/rnn")
  # The Python loop creates it when asked to.
  calls.clear()
  _, params = static_scan(late, Params(), jnp.ones((1, 3, 1)), jnp.zeros((1, 1)))
  assert ("late", "b") in params


def test_scans_over_pytree_inputs() -> None:
  def add(params: Params, xs: dict[str, jax.Array], total: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Params]:
    total = total + xs["a"] * xs["b"][:, :1]
    return (total, total), params

  xs = {"a": jnp.ones((2, 3, 4)), "b": jnp.full((2, 3, 1), 2.0)}
  for scan in (static_scan, dynamic_scan):
    (outputs, final), _ = scan(add, Params().locked(), xs, jnp.zeros((2, 4)))
    np.testing.assert_allclose(outputs[:, :, 0], [[2.0, 4.0, 6.0]] * 2)
    np.testing.assert_allclose(final, 6.0)


@pytest.mark.parametrize("scan", [static_scan, dynamic_scan])
def test_rank_below_two_raises(scan: Any) -> None:
  with pytest.raises(ValueError, match=r"\[batch, time, \.\.\.\].*shape \(4,\) \(rank 1 < 2\)"):
    scan(step, Params().locked(), jnp.ones(4), jnp.zeros(4))


@pytest.mark.parametrize("scan", [static_scan, dynamic_scan])
def test_mismatched_time_lengths_raise(scan: Any) -> None:
  xs = {"a": jnp.ones((2, 3, 1)), "b": jnp.ones((2, 4, 1))}
  with pytest.raises(ValueError, match=r"same time length.*\['a'\]: 3, \['b'\]: 4"):
    scan(step, Params().locked(), xs, jnp.zeros((2, 1)))


def test_time_length_edge_cases() -> None:
  assert time_length({"x": jnp.ones((1, 7, 2)), "r": jnp.ones((1, 7))}) == 7
  with pytest.raises(ValueError, match="no time steps"):
    time_length(jnp.ones((2, 0, 3)))
  with pytest.raises(ValueError, match="no input arrays"):
    time_length({})


def test_dynamic_scan_rejects_a_step_that_changes_the_params_structure() -> None:
  params = Params({("p", "x"): Param(jnp.zeros(()))}).locked()

  def retag(params: Params, x: jax.Array, h: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Params]:
    return (x, h), params.set(("p", "x"), metadata={"touched": True})

  with pytest.raises(ValueError, match="params with another structure"):
    dynamic_scan(retag, params, jnp.ones((1, 2, 1)), jnp.zeros((1, 1)))


def test_dynamic_scan_rejects_a_step_that_changes_the_state_structure() -> None:
  def grow(params: Params, x: jax.Array, h: Any) -> tuple[tuple[jax.Array, Any], Params]:
    return (x, (h, h)), params

  with pytest.raises(ValueError, match="^dynamic_scan: .*state must keep its structure"):
    dynamic_scan(grow, Params().locked(), jnp.ones((1, 2, 1)), jnp.zeros((1, 1)))


def _to_float32(params: Params, x: jax.Array, h: Any) -> tuple[tuple[jax.Array, Any], Params]:
  """Computes in float32 whatever the dtype of the state it is given."""
  new_h = {"h": h["h"].astype(jnp.float32) + x.astype(jnp.float32)}
  return (new_h["h"], new_h), params


def test_dynamic_scan_rejects_a_step_that_changes_a_state_dtype() -> None:
  x = jnp.ones((2, 3, 4), jnp.bfloat16)
  h0 = {"h": jnp.zeros((2, 4), jnp.bfloat16)}
  message = (
      r"^net/rnn: .*state leaf state\['h'\] with dtype float32 and shape \(2, 4\),"
      r" but received dtype bfloat16 and shape \(2, 4\).*same dtype"
  )
  with pytest.raises(ValueError, match=message):
    dynamic_scan(_to_float32, Params().locked(), x, h0, where="net/rnn")
  # The Python loop lets the dtype change; so does the first, Python, step
  # of an unlocked dynamic scan, after which the dtype holds.
  (_, static_final), _ = static_scan(_to_float32, Params().locked(), x, h0)
  (_, dynamic_final), _ = dynamic_scan(_to_float32, Params(), x, h0)
  assert static_final["h"].dtype == dynamic_final["h"].dtype == jnp.float32


def test_dynamic_scan_rejects_a_step_that_changes_a_state_shape() -> None:
  def widen(params: Params, x: jax.Array, h: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Params]:
    return (x, jnp.concatenate([h, x], axis=-1)), params

  with pytest.raises(ValueError, match=r"state leaf state with dtype float32 and shape \(1, 2\)"):
    dynamic_scan(widen, Params().locked(), jnp.ones((1, 2, 1)), jnp.zeros((1, 1)))


def test_dynamic_scan_promotes_a_weakly_typed_initial_state() -> None:
  def running_sum(params: Params, x: jax.Array, total: Any) -> tuple[tuple[jax.Array, jax.Array], Params]:
    total = total + jnp.sum(x)
    return (x, total), params

  # A Python 0 starts as a weak int; lax.scan promotes it to the step's float.
  (_, total), _ = dynamic_scan(running_sum, Params().locked(), jnp.full((1, 3), 0.5), 0)
  assert float(total) == 1.5 and total.dtype == jnp.float32


def test_static_scan_names_where_in_errors() -> None:
  with pytest.raises(ValueError, match=r"^net/rnn: sequence inputs"):
    static_scan(step, Params(), jnp.ones(4), jnp.zeros(4), where="net/rnn")
