"""Tests of `BatchNorm`: formulas, running statistics, gradients and axis sync."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import BatchNorm, initializers
from blox.params import SHARDING, Params

_names = itertools.count()


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _make(**kwargs: Any) -> BatchNorm:
  return BatchNorm(Graph(f"bn{next(_names)}").child("bn"), **kwargs)


def _data(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal(shape) * 2.0 + np.arange(shape[-1]), jnp.float32)


def _value(bn: BatchNorm, params: Params, name: str) -> np.ndarray:
  return np.asarray(params[bn.param_path(name)].value)


def test_training_normalises_with_batch_statistics_and_updates_running_ones() -> None:
  bn = _make(momentum=0.8, epsilon=1e-3)
  x = _data((2, 3, 4, 5))
  _, params = bn(Params(), x, is_training=False)
  params = bn.set_param(params, "scale", jnp.linspace(0.5, 2.0, 5))
  params = bn.set_param(params, "bias", jnp.linspace(-1.0, 1.0, 5))
  params = bn.set_param(params, "running_mean", jnp.full((5,), 0.5))
  params = bn.set_param(params, "running_var", jnp.full((5,), 2.0))
  y, new = bn(params.locked(), x, is_training=True)
  xs = np.asarray(x, np.float64)
  mean, var = xs.mean((0, 1, 2)), xs.var((0, 1, 2))
  scale, bias = _value(bn, params, "scale"), _value(bn, params, "bias")
  np.testing.assert_allclose(y, (xs - mean) / np.sqrt(var + 1e-3) * scale + bias, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(_value(bn, new, "running_mean"), 0.8 * 0.5 + 0.2 * mean, rtol=1e-5)
  np.testing.assert_allclose(_value(bn, new, "running_var"), 0.8 * 2.0 + 0.2 * var, rtol=1e-5)
  # Only the running statistics changed.
  assert new.is_locked
  for name in ("scale", "bias"):
    assert new[bn.param_path(name)].value is params[bn.param_path(name)].value


def test_eval_uses_running_statistics_and_changes_nothing() -> None:
  bn = _make(epsilon=1e-2)
  x = _data((6, 3))
  _, params = bn(Params(), x, is_training=True)
  params = params.locked()
  y, same = bn(params, x, is_training=False)
  assert same is params
  mean, var = _value(bn, params, "running_mean"), _value(bn, params, "running_var")
  np.testing.assert_allclose(y, (np.asarray(x) - mean) / np.sqrt(var + 1e-2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first_training", [True, False])
def test_running_statistics_are_created_by_any_first_call(first_training: bool) -> None:
  bn = _make(momentum=0.5)
  x = _data((4, 3))
  y, params = bn(Params(), x, is_training=first_training)
  assert set(path[-1] for path in params) == {"scale", "bias", "running_mean", "running_var"}
  mean, var = _value(bn, params, "running_mean"), _value(bn, params, "running_var")
  if first_training:
    # Updated once from the starting values zeros and ones.
    xs = np.asarray(x, np.float64)
    np.testing.assert_allclose(mean, 0.5 * xs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var, 0.5 + 0.5 * xs.var(0), rtol=1e-5)
  else:
    np.testing.assert_array_equal(mean, np.zeros(3))
    np.testing.assert_array_equal(var, np.ones(3))
    np.testing.assert_allclose(y, np.asarray(x) / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_split_keeps_running_statistics_out_of_the_gradients() -> None:
  bn = _make(running_mean_metadata={SHARDING: (None,)}, running_var_metadata={SHARDING: ("model",)})
  x = _data((8, 4))
  _, params = bn(Params(), x)
  params = params.locked()
  trainable, state = params.split()
  assert sorted(p[-1] for p in trainable) == ["bias", "scale"]
  assert sorted(p[-1] for p in state) == ["running_mean", "running_var"]
  assert params[bn.param_path("running_mean")].sharding == (None,)
  assert params[bn.param_path("running_var")].sharding == ("model",)

  def loss(t: Params, nt: Params) -> tuple[jax.Array, Params]:
    y, new = bn(t.merge(nt), x * 2.0, is_training=True)
    return jnp.sum(y * jnp.arange(4.0)), new.split()[1]

  grads, new_state = jax.grad(loss, has_aux=True)(trainable, state)
  assert set(grads) == set(trainable)
  merged = trainable.merge(new_state)
  assert _treedef(merged) == _treedef(params)
  np.testing.assert_allclose(
      merged[bn.param_path("running_mean")].value,
      0.9 * np.asarray(state[bn.param_path("running_mean")].value) + 0.1 * np.asarray(x * 2.0).mean(0),
      rtol=1e-5,
  )


def test_no_gradient_flows_into_the_running_statistics() -> None:
  bn = _make()
  x = _data((5, 3))
  _, params = bn(Params(), x)

  def written_statistics(inputs: jax.Array) -> jax.Array:
    _, new = bn(params, inputs, is_training=True)
    return jnp.sum(new[bn.param_path("running_mean")].value) + jnp.sum(
        new[bn.param_path("running_var")].value
    )

  grad = jax.grad(written_statistics)(x)
  np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize("lane_shape", [(8, 3), (4, 2, 3)], ids=["per_example", "chunks"])
def test_statistics_sync_across_a_vmapped_axis(lane_shape: tuple[int, ...]) -> None:
  x = _data((8, 3))
  plain = _make(momentum=0.7)
  _, params = plain(Params(), x, is_training=False)
  params = plain.set_param(params, "scale", jnp.array([0.5, 1.0, 2.0]))
  expected, expected_params = plain(params, x, is_training=True)

  synced = BatchNorm(Graph(f"bn_sync{lane_shape[0]}").child("bn"), momentum=0.7, axis_name="batch")
  # Evaluation communicates nothing, so it can create the params outside the axis.
  _, sync_params = synced(Params(), x, is_training=False)
  sync_params = synced.set_param(sync_params, "scale", jnp.array([0.5, 1.0, 2.0]))
  y, new = jax.vmap(
      lambda p, xb: synced(p, xb, is_training=True),
      in_axes=(None, 0), out_axes=(0, None), axis_name="batch",
  )(sync_params, x.reshape(lane_shape))
  np.testing.assert_allclose(y.reshape(8, 3), expected, rtol=1e-5, atol=1e-5)
  for name in ("running_mean", "running_var"):
    np.testing.assert_allclose(
        new[synced.param_path(name)].value, expected_params[plain.param_path(name)].value, rtol=1e-5
    )


def test_batch_norm_errors_name_the_module() -> None:
  with pytest.raises(ValueError, match=r"BatchNorm 'bad/bn': momentum"):
    BatchNorm(Graph("bad").child("bn"), momentum=1.5)
  with pytest.raises(ValueError, match=r"BatchNorm 'bad2/bn': epsilon"):
    BatchNorm(Graph("bad2").child("bn"), epsilon=-1e-5)
  bn = _make()
  with pytest.raises(ValueError, match=r"BatchNorm 'bn\d+/bn'.*scalar"):
    bn(Params(), jnp.asarray(1.0))
  with pytest.raises(TypeError, match=r"BatchNorm 'bn\d+/bn': is_training must be a Python bool"):
    bn(Params(), jnp.ones((2, 3)), is_training=jnp.asarray(True))  # type: ignore[arg-type]  # the misuse under test


@pytest.mark.parametrize("is_training", [True, False])
def test_batch_norm_under_jit_grad_vmap(is_training: bool) -> None:
  bn = _make()
  x = _data((4, 3))
  _, params = bn(Params(), x * 0.5)  # running statistics away from their start
  params = params.locked()
  y, new = bn(params, x, is_training=is_training)
  apply = jax.jit(bn, static_argnames="is_training")
  y_jit, new_jit = apply(params, x, is_training=is_training)
  np.testing.assert_allclose(y_jit, y, rtol=1e-5, atol=1e-5)
  for path in params:
    np.testing.assert_allclose(new_jit[path].value, new[path].value, rtol=1e-6)
  trainable, rest = params.split()
  weights = jnp.arange(12.0).reshape(4, 3)
  grads = jax.grad(
      lambda t: jnp.sum(bn(t.merge(rest), x, is_training=is_training)[0] * weights)
  )(trainable)
  assert set(grads) == set(trainable)
  assert all(bool(jnp.any(g.value != 0)) for g in grads.values())
  if not is_training:
    # Evaluation is per example, so it vmaps with replicated params.
    ys, _ = jax.vmap(
        lambda p, xb: bn(p, xb, is_training=False), in_axes=(None, 0), out_axes=(0, None)
    )(params, jnp.stack([x, -x]))
    np.testing.assert_allclose(ys[0], y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ys[1], bn(params, -x, is_training=False)[0], rtol=1e-5, atol=1e-5)


def test_axis_name_outside_its_transform_names_the_module_and_axis() -> None:
  bn = _make(axis_name="batch")
  x = _data((4, 3))
  # Evaluation reads the running averages: no axis needed.
  _, params = bn(Params(), x, is_training=False)
  message = r"BatchNorm 'bn\d+/bn': axis_name='batch' is not bound.*jax.vmap.*jax.shard_map"
  with pytest.raises(NameError, match=message):
    bn(params, x, is_training=True)
  with pytest.raises(NameError, match=message):
    jax.jit(lambda p, v: bn(p, v, is_training=True))(params, x)


def test_traced_is_training_is_reported() -> None:
  bn = _make()
  x = _data((4, 3))
  _, params = bn(Params(), x, is_training=False)
  with pytest.raises(TypeError, match=r"BatchNorm 'bn\d+/bn': is_training must be a Python bool, got a traced value"):
    jax.jit(lambda p, t: bn(p, x, is_training=t))(params, True)


def test_running_statistics_take_their_own_initializers() -> None:
  bn = _make(running_mean_init=initializers.constant(2.0), running_var_init=initializers.constant(4.0))
  x = _data((8, 3))
  y, params = bn(Params(), x, is_training=False)
  np.testing.assert_allclose(params[bn.param_path("running_mean")].value, 2.0)
  np.testing.assert_allclose(params[bn.param_path("running_var")].value, 4.0)
  np.testing.assert_allclose(y, (np.asarray(x) - 2.0) / np.sqrt(4.0 + 1e-5), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_or_boolean_inputs_are_refused(dtype: Any) -> None:
  bn = _make()
  with pytest.raises(TypeError, match=r"BatchNorm 'bn\d+/bn': inputs must be floating point.*cast them first"):
    bn(Params(), jnp.ones((4, 3), dtype))


def test_options_are_keyword_only() -> None:
  with pytest.raises(TypeError, match="positional"):
    BatchNorm(Graph("bn_positional").child("bn"), 0.9)  # type: ignore[call-arg]  # the misuse under test


def test_signature_lists_every_setting_by_keyword() -> None:
  parameters = inspect.signature(BatchNorm).parameters
  assert list(parameters) == [
      "graph", "momentum", "epsilon", "use_scale", "use_bias", "scale_init", "bias_init",
      "running_mean_init", "running_var_init", "scale_metadata", "bias_metadata",
      "running_mean_metadata", "running_var_metadata", "axis_name", "param_dtype", "dtype",
  ]
  assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(parameters.values())[1:])
  assert parameters["momentum"].default == 0.9


def test_repr_and_config_follow_a_changed_setting() -> None:
  bn = _make(momentum=0.5)
  assert repr(bn) == "BatchNorm(momentum=0.5)"
  x = jnp.array([[0.0], [2.0]])
  _, params = bn(Params(), x)
  assert float(params[bn.param_path("running_mean")].value[0]) == 0.5
  bn.momentum = 0.0
  assert dict(bn.config) == {"momentum": 0.0}
  assert repr(bn) == "BatchNorm(momentum=0.0)"
  _, params = bn(Params(), x)  # a later call averages with the new momentum
  assert float(params[bn.param_path("running_mean")].value[0]) == 1.0
