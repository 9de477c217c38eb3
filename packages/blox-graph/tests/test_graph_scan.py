"""Tests of `static_scan`, `dynamic_scan` and `time_length`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import dynamic_scan, static_scan
from blox.graph.scan import time_length
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
  w, params = params.get_or_create(_W, x.shape[-1:], jax.nn.initializers.ones)
  count, params = params.get_or_create(
      _COUNT, (), jax.nn.initializers.zeros, dtype=jnp.uint32, trainable=False
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


def test_dynamic_scan_falls_back_to_the_loop_while_unlocked() -> None:
  x = _inputs(time=3)
  (outputs, _), params = dynamic_scan(step, Params(), x, jnp.zeros((2, 3)))
  # The step created its params, which a lax.scan body could not do.
  assert list(params) == [_W, _COUNT]
  assert not params.is_locked
  np.testing.assert_allclose(outputs[0], _reference(x))


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

  with pytest.raises(ValueError, match="state must keep its structure"):
    dynamic_scan(grow, Params().locked(), jnp.ones((1, 2, 1)), jnp.zeros((1, 1)))
