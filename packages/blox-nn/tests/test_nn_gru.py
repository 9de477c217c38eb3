"""Tests of `GRU` against a hand-written cell, and of its scans."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import GRU, Contraction, GRUState, Rng, contraction_hooks
from blox.params import Params

_KERNEL = ("model", "gru", "kernel")
_RECURRENT = ("model", "gru", "recurrent_kernel")
_BIAS = ("model", "gru", "bias")


def _create(is_static: bool) -> tuple[Rng, GRU]:
  graph = Graph("model")
  rng = Rng(graph.child("rng"))
  return rng, GRU(graph.child("gru"), hidden_size=4, rng=rng, is_static=is_static)


def _inputs(batch: int = 2, time: int = 5, features: int = 3) -> jax.Array:
  return jax.random.normal(jax.random.key(1), (batch, time, features))


def _init(x: jax.Array) -> tuple[GRU, Params]:
  rng, gru = _create(is_static=True)
  _, params = gru.apply(rng.seed(Params(), seed=0), x)
  # A non-zero bias, so that the reference checks its use.
  params = params.set(_BIAS, jax.random.normal(jax.random.key(10), params[_BIAS].value.shape))
  return gru, params.locked()


def _cell(params: Params, x: np.ndarray, h: np.ndarray) -> np.ndarray:
  """The GRU equations, written out with numpy."""
  def sigmoid(v: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-v)))

  def value(path: tuple[str, ...]) -> np.ndarray:
    return np.asarray(params[path].value)

  # Blocks of 4 columns each: reset r, update z, candidate n.
  w, u, b = value(_KERNEL), value(_RECURRENT), value(_BIAS)
  w_r, w_z, w_n = w[:, :4], w[:, 4:8], w[:, 8:]
  u_r, u_z, u_n = u[:, :4], u[:, 4:8], u[:, 8:]
  b_r, b_z, b_n = b[:4], b[4:8], b[8:]
  r = sigmoid(x @ w_r + h @ u_r + b_r)
  z = sigmoid(x @ w_z + h @ u_z + b_z)
  n = np.tanh(x @ w_n + b_n + (r * h) @ u_n)
  return np.asarray((1 - z) * h + z * n)


def test_params_are_kernel_recurrent_kernel_and_bias_on_the_gru_node() -> None:
  _, params = _init(_inputs())
  assert [p for p in params if p[1] == "gru"] == [_KERNEL, _BIAS, _RECURRENT]
  assert params[_KERNEL].value.shape == (3, 12)
  assert params[_RECURRENT].value.shape == (4, 12)
  assert params[_BIAS].value.shape == (12,)


def test_initial_state_is_zeros() -> None:
  _, gru = _create(is_static=False)
  state, _ = gru.initial_state(Params(), jnp.ones((2, 3)))
  assert isinstance(state, GRUState)
  assert state.hidden.shape == (2, 4) and state.hidden.dtype == jnp.float32
  np.testing.assert_array_equal(state.hidden, 0.0)


def test_single_step_matches_a_hand_written_cell() -> None:
  gru, params = _init(_inputs())
  x = jax.random.normal(jax.random.key(2), (2, 3))
  h = jax.random.normal(jax.random.key(3), (2, 4))
  (out, state), new_params = gru(params, x, GRUState(h))
  want = _cell(params, np.asarray(x), np.asarray(h))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.hidden, want, rtol=1e-5, atol=1e-6)
  assert new_params is params


def test_static_and_dynamic_share_params_and_agree() -> None:
  x = _inputs()
  static, params = _init(x)
  _, dynamic = _create(is_static=False)
  (out_s, final_s), _ = static.apply(params, x)
  (out_d, final_d), _ = dynamic.apply(params, x)
  np.testing.assert_allclose(out_s, out_d, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(final_s.hidden, final_d.hidden, rtol=1e-5, atol=1e-6)
  h = np.zeros((2, 4), np.float32)
  for t in range(5):
    h = _cell(params, np.asarray(x[:, t]), h)
    np.testing.assert_allclose(out_d[:, t], h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("is_static", [True, False])
def test_is_reset_restarts_the_state(is_static: bool) -> None:
  x = _inputs()
  _, params = _init(x)
  _, gru = _create(is_static=is_static)
  is_reset = jnp.zeros((2, 5), bool).at[0, 2].set(True)
  start = GRUState(jnp.ones((2, 4)))
  (outputs, _), _ = gru.apply(params, x, prev_state=start, is_reset=is_reset)
  (plain, _), _ = gru.apply(params, x, prev_state=start)
  (fresh, _), _ = gru.apply(params, x[:1, 2:])
  np.testing.assert_allclose(outputs[1], plain[1], rtol=1e-6)
  np.testing.assert_allclose(outputs[0, :2], plain[0, :2], rtol=1e-6)
  np.testing.assert_allclose(outputs[0, 2:], fresh[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(outputs[0, 2:], plain[0, 2:])


def test_sequence_shape_errors() -> None:
  gru, params = _init(_inputs())
  with pytest.raises(ValueError, match=r"GRU 'model/gru'.*rank 1 < 2"):
    gru.apply(params, jnp.ones(3))
  with pytest.raises(ValueError, match=r"GRU 'model/gru': is_reset must have shape"):
    gru.apply(params, _inputs(), is_reset=jnp.zeros((2, 6), bool))


@pytest.mark.parametrize("size", [0, -1, True, 2.5])
def test_hidden_size_must_be_a_positive_int(size: Any) -> None:
  graph = Graph("model")
  with pytest.raises(ValueError, match=rf"GRU 'model/gru': hidden_size must be a positive int, got {size!r}"):
    GRU(graph.child("gru"), size, rng=Rng(graph.child("rng")))


def test_signature_hidden_size_positional_the_rest_keyword_only() -> None:
  parameters = list(inspect.signature(GRU).parameters.values())
  assert [p.name for p in parameters[:3]] == ["graph", "hidden_size", "rng"]
  assert [p.kind for p in parameters[:2]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2
  assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[2:])
  assert {"is_static", "recurrent_kernel_init", "param_dtype", "dtype"} <= {p.name for p in parameters}
  _, gru = _create(is_static=True)
  assert repr(gru) == "GRU(hidden_size=4, rng=Rng@model/rng, is_static=True)"


def test_the_products_go_through_contract() -> None:
  gru, params = _init(_inputs())
  seen: list[tuple[Any, ...]] = []

  def record(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    seen.append((contraction.module, contraction.weight_path(), contraction.equation, weight.shape))
    return contraction.compute(inputs, weight)

  x, h = jnp.ones((2, 3)), jnp.ones((2, 4))
  (plain, _), _ = gru(params, x, GRUState(h))
  with contraction_hooks(record):
    (hooked, _), _ = gru(params, x, GRUState(h))
  np.testing.assert_array_equal(hooked, plain)
  # The recurrent kernel comes in two column blocks: (U_r, U_z), then U_n.
  equation = "...i,io->...o"
  assert seen == [
      (gru, _KERNEL, equation, (3, 12)),
      (gru, _RECURRENT, equation, (4, 8)),
      (gru, _RECURRENT, equation, (4, 4)),
  ]
