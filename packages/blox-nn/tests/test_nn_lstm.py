"""Tests of `LSTM` against a hand-written cell, and of its scans."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import LSTM, Contraction, Dropout, LSTMState, Rng, contraction_hooks, set_contraction_hook
from blox.params import Params

_KERNEL = ("model", "lstm", "kernel")
_RECURRENT = ("model", "lstm", "recurrent_kernel")
_BIAS = ("model", "lstm", "bias")


def _create(is_static: bool, hidden_size: int = 4) -> tuple[Rng, LSTM]:
  graph = Graph("model")
  rng = Rng(graph.child("rng"))
  return rng, LSTM(graph.child("lstm"), hidden_size=hidden_size, rng=rng, is_static=is_static)


def _init(x: jax.Array) -> tuple[LSTM, Params]:
  rng, lstm = _create(is_static=True)
  params = rng.seed(Params(), seed=0)
  _, params = lstm.apply(params, x)
  # A non-zero bias, so that the reference checks its use.
  bias = jax.random.normal(jax.random.key(9), params[_BIAS].value.shape)
  return lstm, params.set(_BIAS, bias).locked()


def _weights(params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  return tuple(np.asarray(params[path].value) for path in (_KERNEL, _RECURRENT, _BIAS))  # type: ignore[return-value]  # three paths, three arrays


def _cell(
    weights: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray, h: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """The LSTM equations, written out with numpy."""
  def sigmoid(v: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-v)))

  kernel, recurrent_kernel, bias = weights
  z = x @ kernel + h @ recurrent_kernel + bias
  n = h.shape[-1]
  i, g, f, o = z[:, :n], z[:, n : 2 * n], z[:, 2 * n : 3 * n], z[:, 3 * n :]
  c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
  return sigmoid(o) * np.tanh(c_new), c_new


def _inputs(batch: int = 2, time: int = 5, features: int = 3) -> jax.Array:
  return jax.random.normal(jax.random.key(1), (batch, time, features))


def test_params_are_kernel_recurrent_kernel_and_bias_on_the_lstm_node() -> None:
  _, params = _init(_inputs())
  assert params[_KERNEL].value.shape == (3, 16)
  assert params[_RECURRENT].value.shape == (4, 16)
  assert params[_BIAS].value.shape == (16,)
  assert [p for p in params if p[1] == "lstm"] == [_KERNEL, _BIAS, _RECURRENT]


def test_initial_state_is_zeros() -> None:
  rng, lstm = _create(is_static=False)
  state, params = lstm.initial_state(Params(), jnp.ones((2, 3)))
  assert isinstance(state, LSTMState)
  for leaf in state:
    assert leaf.shape == (2, 4) and leaf.dtype == jnp.float32
    np.testing.assert_array_equal(leaf, 0.0)
  assert len(params) == 0


def test_single_step_matches_a_hand_written_cell() -> None:
  lstm, params = _init(_inputs())
  x = jax.random.normal(jax.random.key(2), (2, 3))
  h = jax.random.normal(jax.random.key(3), (2, 4))
  c = jax.random.normal(jax.random.key(4), (2, 4))
  (out, state), new_params = lstm(params, x, LSTMState(h, c))
  want_h, want_c = _cell(_weights(params), np.asarray(x), np.asarray(h), np.asarray(c))
  np.testing.assert_allclose(out, want_h, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.hidden, want_h, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.cell, want_c, rtol=1e-5, atol=1e-6)
  assert new_params is params


def test_static_and_dynamic_share_params_and_agree() -> None:
  x = _inputs()
  rng_static, lstm_static = _create(is_static=True)
  _, lstm_dynamic = _create(is_static=False)
  params = rng_static.seed(Params(), seed=42)
  state, params = lstm_static.initial_state(params, x[:, 0])
  _, params = lstm_static.apply(params, x, prev_state=state)
  params = params.locked()
  (out_s, final_s), _ = lstm_static.apply(params, x, prev_state=state)
  (out_d, final_d), _ = lstm_dynamic.apply(params, x, prev_state=state)
  assert out_s.shape == (2, 5, 4)
  np.testing.assert_allclose(out_s, out_d, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(final_s.cell, final_d.cell, rtol=1e-5, atol=1e-6)
  # And both equal the hand-written cell unrolled over time.
  weights = _weights(params)
  h = c = np.zeros((2, 4), np.float32)
  for t in range(5):
    h, c = _cell(weights, np.asarray(x[:, t]), h, c)
    np.testing.assert_allclose(out_d[:, t], h, rtol=1e-5, atol=1e-6)


def test_is_reset_restarts_the_state() -> None:
  x = _inputs()
  lstm, params = _init(x)
  _, dynamic = _create(is_static=False)
  is_reset = jnp.zeros((2, 5), bool).at[1, 3].set(True)
  (outputs, _), _ = dynamic.apply(params, x, is_reset=is_reset)
  (plain, _), _ = dynamic.apply(params, x)
  (fresh, _), _ = dynamic.apply(params, x[1:, 3:])
  np.testing.assert_allclose(outputs[0], plain[0], rtol=1e-6)
  np.testing.assert_allclose(outputs[1, :3], plain[1, :3], rtol=1e-6)
  np.testing.assert_allclose(outputs[1, 3:], fresh[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(outputs[1, 3:], plain[1, 3:])


def test_sequence_shape_errors() -> None:
  lstm, params = _init(_inputs())
  with pytest.raises(ValueError, match=r"LSTM 'model/lstm'.*rank 1 < 2"):
    lstm.apply(params, jnp.ones(3))
  with pytest.raises(ValueError, match=r"LSTM 'model/lstm': is_reset must have shape"):
    lstm.apply(params, _inputs(), is_reset=jnp.zeros((2, 4), bool))


@pytest.mark.parametrize("size", [0, -1, True, 2.5])
def test_hidden_size_must_be_a_positive_int(size: Any) -> None:
  graph = Graph("model")
  with pytest.raises(ValueError, match=rf"LSTM 'model/lstm': hidden_size must be a positive int, got {size!r}"):
    LSTM(graph.child("lstm"), size, rng=Rng(graph.child("rng")))


def test_repr() -> None:
  _, lstm = _create(is_static=True)
  assert repr(lstm) == "LSTM(hidden_size=4, rng=Rng@model/rng, is_static=True)"


def test_signature_hidden_size_positional_the_rest_keyword_only() -> None:
  parameters = list(inspect.signature(LSTM).parameters.values())
  assert [p.name for p in parameters[:3]] == ["graph", "hidden_size", "rng"]
  assert [p.kind for p in parameters[:2]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2
  assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[2:])
  names = {p.name for p in parameters}
  assert {"is_static", "recurrent_kernel_init", "recurrent_kernel_metadata", "param_dtype", "dtype"} <= names
  assert "num_gates" not in names  # a class constant, no setting
  graph = Graph("model")
  with pytest.raises(TypeError, match=r"^LSTM\(\.\.\.\): too many positional arguments"):
    LSTM(graph.child("lstm"), 4, Rng(graph.child("rng")))  # type: ignore[call-arg]  # the misuse under test


def test_both_products_go_through_contract() -> None:
  lstm, params = _init(_inputs())
  seen: list[tuple[Any, ...]] = []

  def record(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    seen.append((contraction.module, contraction.weight_path(), inputs.shape, weight.shape))
    return contraction.compute(inputs, weight)

  x, state = jnp.ones((2, 3)), LSTMState(jnp.ones((2, 4)), jnp.ones((2, 4)))
  (plain, _), _ = lstm(params, x, state)
  with contraction_hooks(record):
    (hooked, _), _ = lstm(params, x, state)
  assert seen == [(lstm, _KERNEL, (2, 3), (3, 16)), (lstm, _RECURRENT, (2, 4), (4, 16))]
  np.testing.assert_array_equal(hooked, plain)
  # A hook on the module changes what the step computes: here, no recurrence.
  def no_recurrence(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    if contraction.weight_name == ("recurrent_kernel",):
      weight = jnp.zeros_like(weight)
    return contraction.compute(inputs, weight)

  set_contraction_hook(lstm, no_recurrence)
  (cut, _), _ = lstm(params, x, state)
  set_contraction_hook(lstm, None)
  weights = _weights(params)
  want, _ = _cell((weights[0], np.zeros_like(weights[1]), weights[2]), np.asarray(x), np.ones((2, 4)), np.ones((2, 4)))
  np.testing.assert_allclose(cut, want, rtol=1e-5, atol=1e-6)


class _DropoutLSTM(LSTM):
  """An LSTM whose outputs pass through dropout: an Rng used inside the step."""

  def __init__(self, graph: Graph, hidden_size: int, rng: Rng, is_static: bool = False) -> None:
    super().__init__(graph, hidden_size, rng=rng, is_static=is_static)
    self.dropout = Dropout(graph.child("dropout"), rate=0.5, rng=rng)

  def __call__(
      self, params: Params, inputs: jax.Array, prev_state: LSTMState, is_training: bool = True
  ) -> tuple[tuple[jax.Array, LSTMState], Params]:
    (out, state), params = super().__call__(params, inputs, prev_state)
    out, params = self.dropout(params, out, is_training=is_training)
    return (out, state), params


@pytest.mark.parametrize("is_static", [True, False])
def test_an_rng_inside_the_step_advances_every_step(is_static: bool) -> None:
  graph = Graph("drop")
  rng = Rng(graph.child("rng"))
  lstm = _DropoutLSTM(graph.child("lstm"), 8, rng, is_static=is_static)
  x = jnp.ones((1, 4, 3))
  _, params = lstm.apply(rng.seed(Params(), seed=0), x[:, :1])
  params = rng.seed(params.locked(), counter=0)
  (outputs, _), new_params = lstm.apply(params, x)
  assert int(rng.get_counter(new_params)) == 4
  masks = [tuple(np.asarray(outputs[0, t] == 0).tolist()) for t in range(4)]
  assert len(set(masks)) > 1
  (evaluated, _), eval_params = lstm.apply(params, x, is_training=False)
  assert int(rng.get_counter(eval_params)) == 0
  assert not np.any(np.asarray(evaluated) == 0)
