"""Tests of `SequenceBase`, `RecurrenceBase`, `maybe_reset_state` and `with_reset`."""

from __future__ import annotations

from typing import Any, NamedTuple

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, RecurrenceBase, SequenceBase, dynamic_scan, maybe_reset_state, static_scan
from blox.graph._sequence import with_reset
from blox.params import Params


class _State(NamedTuple):
  total: jax.Array  # [batch, features]
  grid: jax.Array  # [batch, 2, features]: a state leaf with two feature axes


class _Leaky(RecurrenceBase):
  """total' = decay * total + x (decay a param); grid follows total.

  Every step advances a counter param, like a dropout Rng would, and records
  the `is_training` flag it was given.
  """

  def __init__(self, graph: Graph, is_static: bool = False) -> None:
    super().__init__(graph, is_static=is_static)
    self.initial_inputs: list[tuple[int, ...]] = []
    self.training_flags: list[bool] = []

  def initial_state(self, params: Params, inputs: jax.Array, **kwargs: Any) -> tuple[_State, Params]:
    self.initial_inputs.append(tuple(inputs.shape))
    batch, features = inputs.shape
    return _State(jnp.zeros((batch, features)), jnp.zeros((batch, 2, features))), params

  def __call__(
      self, params: Params, inputs: jax.Array, prev_state: _State, is_training: bool = True
  ) -> tuple[tuple[jax.Array, _State], Params]:
    self.training_flags.append(is_training)
    decay, params = self.get_param(params, "decay", (), init=jax.nn.initializers.constant(0.5))
    count, params = self.get_param(
        params, "count", (), init=jax.nn.initializers.zeros, param_dtype=jnp.uint32, trainable=False
    )
    params = self.set_param(params, "count", count + jnp.uint32(1))
    total = decay * prev_state.total + inputs
    grid = prev_state.grid + total[:, None, :]
    return (total, _State(total, grid)), params


def _reference(x: np.ndarray) -> np.ndarray:
  """Per-sequence totals with decay 0.5 from a zero state."""
  total = np.zeros(x.shape[-1], np.float32)
  outs = []
  for t in range(x.shape[0]):
    total = 0.5 * total + x[t]
    outs.append(total)
  return np.stack(outs)


def _inputs() -> jax.Array:
  return jax.random.normal(jax.random.key(0), (3, 5, 2))


def test_sequence_base_is_abstract() -> None:
  class Incomplete(SequenceBase):
    def initial_state(self, params: Params, inputs: Any, **kwargs: Any) -> tuple[Any, Params]:
      return None, params

  with pytest.raises(TypeError, match="abstract"):
    Incomplete(Graph("net").child("seq"))  # type: ignore[abstract]  # the error under test


def test_apply_starts_from_initial_state_of_the_first_step() -> None:
  module = _Leaky(Graph("net").child("leaky"), is_static=True)
  x = _inputs()
  (outputs, final), params = module.apply(Params(), x)
  assert module.initial_inputs == [(3, 2)]
  assert outputs.shape == (3, 5, 2)
  for b in range(3):
    np.testing.assert_allclose(outputs[b], _reference(np.asarray(x[b])), rtol=1e-6)
  np.testing.assert_allclose(final.total, outputs[:, -1])
  assert final.grid.shape == (3, 2, 2)
  assert int(params[("net", "leaky", "count")].value) == 5


def test_static_and_dynamic_agree_and_thread_params() -> None:
  static = _Leaky(Graph("net").child("leaky"), is_static=True)
  dynamic = _Leaky(Graph("net").child("leaky"), is_static=False)
  x = _inputs()
  _, params = static.apply(Params(), x[:, :1])
  params = params.locked()
  prev = _State(jnp.ones((3, 2)), jnp.ones((3, 2, 2)))
  (out_s, final_s), params_s = static.apply(params, x, prev_state=prev)
  (out_d, final_d), params_d = dynamic.apply(params, x, prev_state=prev)
  np.testing.assert_allclose(out_s, out_d, rtol=1e-6)
  for a, b in zip(final_s, final_d):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  count = ("net", "leaky", "count")
  assert int(params_s[count].value) == int(params_d[count].value) == 6
  # A given prev_state means no call to initial_state.
  assert static.initial_inputs == [(3, 2)] and dynamic.initial_inputs == []


@pytest.mark.parametrize("is_static", [True, False])
def test_is_reset_restarts_flagged_batch_elements(is_static: bool) -> None:
  module = _Leaky(Graph("net").child("leaky"), is_static=is_static)
  x = _inputs()
  _, params = module.apply(Params(), x)
  params = params.locked()
  is_reset = np.zeros((3, 5), bool)
  is_reset[0, 2] = True  # element 0 starts a new sequence at step 2
  is_reset[2, 0] = True  # a reset at step 0 restarts from the initial state
  is_reset[2, 4] = True
  start = _State(jnp.full((3, 2), 7.0), jnp.full((3, 2, 2), 7.0))
  (outputs, final), _ = module.apply(params, x, prev_state=start, is_reset=jnp.asarray(is_reset))
  (plain, _), _ = module.apply(params, x, prev_state=start)
  xs = np.asarray(x)
  np.testing.assert_allclose(outputs[0, :2], plain[0, :2], rtol=1e-6)
  np.testing.assert_allclose(outputs[0, 2:], _reference(xs[0, 2:]), rtol=1e-6)
  np.testing.assert_allclose(outputs[1], plain[1], rtol=1e-6)
  np.testing.assert_allclose(outputs[2, :4], _reference(xs[2, :4]), rtol=1e-6)
  np.testing.assert_allclose(outputs[2, 4:], _reference(xs[2, 4:]), rtol=1e-6)
  # The grid leaf (two feature axes) was reset too: it restarted from zeros.
  np.testing.assert_allclose(final.grid[2], np.broadcast_to(outputs[2, 4], (2, 2)), rtol=1e-6)
  assert not np.allclose(final.grid[1], final.grid[2])


def test_is_training_reaches_every_step() -> None:
  module = _Leaky(Graph("net").child("leaky"), is_static=True)
  module.apply(Params(), _inputs(), is_training=False)
  assert module.training_flags == [False] * 5


def test_apply_rejects_inputs_of_rank_below_two() -> None:
  module = _Leaky(Graph("net").child("leaky"))
  with pytest.raises(ValueError, match=r"_Leaky 'net/leaky'.*rank 1 < 2"):
    module.apply(Params(), jnp.ones(3))


def test_apply_rejects_is_reset_of_another_time_length() -> None:
  module = _Leaky(Graph("net").child("leaky"))
  with pytest.raises(ValueError, match=r"_Leaky 'net/leaky': is_reset must have shape \[batch, time\] = \(3, 5\).*\(3, 4\)"):
    module.apply(Params(), _inputs(), is_reset=jnp.zeros((3, 4), bool))
  with pytest.raises(ValueError, match="is_reset must have shape"):
    module.apply(Params(), _inputs(), is_reset=jnp.zeros((3,), bool))


def test_maybe_reset_state_broadcasts_over_feature_axes() -> None:
  state = _State(jnp.full((3, 2), 5.0), jnp.full((3, 2, 4), 5.0))
  initial = _State(jnp.zeros((3, 2)), jnp.zeros((3, 2, 4)))
  reset = maybe_reset_state(state, initial, jnp.array([True, False, True]))
  assert isinstance(reset, _State)
  np.testing.assert_array_equal(reset.total[:, 0], [0.0, 5.0, 0.0])
  np.testing.assert_array_equal(reset.grid[:, 1, 3], [0.0, 5.0, 0.0])
  assert reset.grid.shape == (3, 2, 4) and reset.grid.dtype == jnp.float32
  # Numeric flags are read as booleans.
  again = maybe_reset_state(state, initial, jnp.array([0, 1, 0]))
  np.testing.assert_array_equal(again.total[:, 1], [5.0, 0.0, 5.0])


def test_maybe_reset_state_errors() -> None:
  state = (jnp.ones((3, 2)),)
  with pytest.raises(ValueError, match=r"is_reset must have shape \[batch\]"):
    maybe_reset_state(state, state, jnp.zeros((3, 1), bool))
  with pytest.raises(ValueError, match="is_reset has 2 batch elements"):
    maybe_reset_state(state, state, jnp.zeros((2,), bool))
  with pytest.raises(ValueError, match="another structure"):
    maybe_reset_state(state, [jnp.ones((3, 2))], jnp.zeros((3,), bool))
  with pytest.raises(ValueError, match=r"shape \(3, 2\) to an initial value of shape \(3, 4\)"):
    maybe_reset_state(state, (jnp.ones((3, 4)),), jnp.zeros((3,), bool))


def test_dynamic_apply_under_jit() -> None:
  module = _Leaky(Graph("net").child("leaky"))
  x = _inputs()
  _, params = module.apply(Params(), x)
  params = params.locked()

  @jax.jit
  def run(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    (outputs, _), params = module.apply(params, x)
    return outputs, params

  outputs, new_params = run(params, x)
  np.testing.assert_allclose(outputs[1], _reference(np.asarray(x[1])), rtol=1e-5)
  assert int(new_params[("net", "leaky", "count")].value) == 10


class _Float32Sum(RecurrenceBase):
  """total' = total + x, computed in float32 whatever the state's dtype."""

  def initial_state(self, params: Params, inputs: jax.Array, **kwargs: Any) -> tuple[jax.Array, Params]:
    return jnp.zeros(inputs.shape, jnp.float32), params

  def __call__(
      self, params: Params, inputs: jax.Array, prev_state: jax.Array, is_training: bool = True
  ) -> tuple[tuple[jax.Array, jax.Array], Params]:
    total = prev_state.astype(jnp.float32) + inputs.astype(jnp.float32)
    return (total, total), params


def test_dynamic_apply_names_the_module_when_the_step_changes_the_state_dtype() -> None:
  module = _Float32Sum(Graph("net").child("sum"))
  x = jnp.ones((2, 4, 3), jnp.bfloat16)
  state = jnp.zeros((2, 3), jnp.bfloat16)
  message = (
      r"^_Float32Sum 'net/sum': .*state leaf state with dtype float32 and shape"
      r" \(2, 3\), but received dtype bfloat16.*same dtype"
  )
  with pytest.raises(ValueError, match=message):
    module.apply(Params().locked(), x, state)
  # An initial state of the step's dtype works, and matches the Python loop.
  (outputs, final), _ = module.apply(Params().locked(), x)
  static = _Float32Sum(Graph("net").child("sum"), is_static=True)
  (static_outputs, static_final), _ = static.apply(Params().locked(), x, state)
  np.testing.assert_array_equal(outputs, static_outputs)
  assert final.dtype == static_final.dtype == jnp.float32
  np.testing.assert_array_equal(final, np.full((2, 3), 4.0))



def test_is_static_is_a_keyword_only_setting() -> None:
  assert str(inspect.signature(RecurrenceBase)) == "(graph, *, is_static=False)"
  node = Graph("net").child("sum")
  with pytest.raises(TypeError, match=r"^_Float32Sum\(\.\.\.\): too many positional arguments"):
    _Float32Sum(node, True)  # type: ignore[call-arg]  # the misuse under test
  # The refused constructor left the node free for a correct one.
  module = _Float32Sum(node, is_static=True)
  assert module.is_static is True
  assert repr(module) == "_Float32Sum(is_static=True)"
  assert repr(_Float32Sum(Graph("net").child("other"))) == "_Float32Sum()"


def test_a_hand_written_init_passes_is_static_on() -> None:
  static = _Leaky(Graph("net").child("leaky"), is_static=True)
  assert static.is_static is True and dict(static.config) == {"is_static": True}
  assert _Leaky(Graph("net").child("leaky")).is_static is False


def test_is_static_is_read_at_each_apply() -> None:
  module = _Leaky(Graph("net").child("leaky"), is_static=True)
  x = _inputs()
  _, params = module.apply(Params(), x[:, :1])
  params = params.locked()
  module.training_flags.clear()
  (looped, _), _ = module.apply(params, x)
  assert len(module.training_flags) == 5  # a Python loop runs the step per time step
  module.is_static = False
  module.training_flags.clear()
  (scanned, _), _ = module.apply(params, x)
  assert len(module.training_flags) == 1  # lax.scan traces the step once
  np.testing.assert_allclose(looped, scanned, rtol=1e-6)


@pytest.mark.parametrize("scan", [static_scan, dynamic_scan])
def test_with_reset_restarts_flagged_elements_before_the_step(scan: Any) -> None:
  def running_sum(params: Params, x: jax.Array, total: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Params]:
    total = total + x
    return (total, total), params

  flags = jnp.array([[False, False, True, False], [True, False, False, False]])
  start = jnp.full((2,), 10.0)
  step = with_reset(running_sum, jnp.zeros(2))
  (sums, last), _ = scan(step, Params().locked(), (jnp.ones((2, 4)), flags), start)
  assert sums.tolist() == [[11.0, 12.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0]]
  assert last.tolist() == [2.0, 4.0]
