"""Tests of `LayerNorm` and `RMSNorm` against their formulas, computed in NumPy."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import LayerNorm, RMSNorm
from blox.params import SHARDING, Params

_names = itertools.count()


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _make(cls: type[Any], **kwargs: Any) -> Any:
  return cls(Graph(f"norm{next(_names)}").child("norm"), **kwargs)


def _data(shape: tuple[int, ...], offset: float = 0.0) -> np.ndarray:
  return np.random.default_rng(0).standard_normal(shape) * 3.0 + offset


def _layer_norm(x: np.ndarray, scale: Any, bias: Any, eps: float) -> np.ndarray:
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  result: np.ndarray = (x - mean) / np.sqrt(var + eps) * scale + bias
  return result


def _rms_norm(x: np.ndarray, scale: Any, eps: float) -> np.ndarray:
  result: np.ndarray = x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * scale
  return result


def _set_affine(norm: Any, params: Params, names: tuple[str, ...], features: int) -> Params:
  """Gives the scale and bias distinct non-trivial values."""
  for i, name in enumerate(names):
    params = norm.set_param(params, name, jnp.linspace(0.5 + i, 2.0 + i, features, dtype=jnp.float32))
  return params


def test_layer_norm_matches_formula() -> None:
  norm = _make(LayerNorm, epsilon=1e-3)
  x = _data((2, 3, 5), offset=100.0)  # a large mean must not hurt accuracy
  _, params = norm(Params(), jnp.asarray(x, jnp.float32))
  assert [path[-1] for path in params] == ["scale", "bias"]
  params = _set_affine(norm, params, ("scale", "bias"), 5)
  y, same = norm(params, jnp.asarray(x, jnp.float32))
  assert same is params
  scale = np.asarray(params[norm.param_path("scale")].value)
  bias = np.asarray(params[norm.param_path("bias")].value)
  np.testing.assert_allclose(y, _layer_norm(x, scale, bias, 1e-3), rtol=1e-4, atol=1e-4)


def test_rms_norm_matches_formula() -> None:
  norm = _make(RMSNorm, epsilon=1e-2)
  x = _data((4, 6))
  _, params = norm(Params(), jnp.asarray(x, jnp.float32))
  assert [path[-1] for path in params] == ["scale"]
  params = _set_affine(norm, params, ("scale",), 6)
  y, _ = norm(params, jnp.asarray(x, jnp.float32))
  scale = np.asarray(params[norm.param_path("scale")].value)
  np.testing.assert_allclose(y, _rms_norm(x, scale, 1e-2), rtol=1e-5, atol=1e-5)


def test_norms_without_params_and_metadata() -> None:
  x = jnp.asarray(_data((3, 4)), jnp.float32)
  layer = _make(LayerNorm, use_scale=False, use_bias=False)
  y, params = layer(Params(), x)
  assert len(params) == 0
  np.testing.assert_allclose(y, _layer_norm(np.asarray(x), 1.0, 0.0, 1e-5), rtol=1e-5, atol=1e-5)
  rms = _make(RMSNorm, use_scale=False)
  y, params = rms(Params(), x)
  assert len(params) == 0
  np.testing.assert_allclose(y, _rms_norm(np.asarray(x), 1.0, 1e-5), rtol=1e-5, atol=1e-5)
  layer = _make(LayerNorm, scale_metadata={SHARDING: ("model",)}, bias_metadata={SHARDING: (None,)})
  _, params = layer(Params(), x)
  assert params[layer.param_path("scale")].sharding == ("model",)
  assert params[layer.param_path("bias")].sharding == (None,)


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_norms_compute_in_float32_and_keep_the_dtype(cls: type[Any]) -> None:
  norm = _make(cls)
  x = jnp.asarray(_data((2, 64), offset=4.0), jnp.bfloat16)
  y, params = norm(Params(), x)
  assert y.dtype == jnp.bfloat16
  # The bfloat16 result is the float32 result rounded once, not the result of
  # bfloat16 arithmetic throughout.
  y32, _ = norm(params, x.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32)), np.asarray(y32.astype(jnp.bfloat16).astype(jnp.float32)))



@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_or_boolean_inputs_are_refused(cls: type[Any], dtype: Any) -> None:
  norm = _make(cls)
  with pytest.raises(TypeError, match=rf"{cls.__name__} '.*': inputs must be floating point, got dtype {jnp.dtype(dtype)}.*cast them first"):
    norm(Params(), jnp.ones((1, 64), dtype))


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_options_are_keyword_only(cls: type[Any]) -> None:
  with pytest.raises(TypeError, match="positional"):
    cls(Graph("positional").child("norm"), 1e-3)


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_norms_sync_statistics_across_sharded_features(cls: type[Any]) -> None:
  names = ("scale", "bias") if cls is LayerNorm else ("scale",)
  x = jnp.asarray(_data((3, 8), offset=1.0), jnp.float32)
  full_norm = _make(cls)
  _, params = full_norm(Params(), x)
  params = _set_affine(full_norm, params, names, 8)
  expected, _ = full_norm(params, x)
  # The 8 features split into 4 shards of 2, one per vmap lane, and each lane
  # holds its slice of the scale (and bias): params with a leading lane axis.
  sharded = _make(cls, axis_name="features")
  shards = jnp.moveaxis(x.reshape(3, 4, 2), 1, 0)
  # The first call (creation) must run where the axis name is bound too.
  shard_params = jax.vmap(lambda c: sharded(Params(), c)[1], axis_name="features")(shards)
  for name in names:
    full = params[full_norm.param_path(name)].value
    shard_params = sharded.set_param(shard_params, name, full.reshape(4, 2))
  y, _ = jax.vmap(sharded, axis_name="features")(shard_params, shards)
  np.testing.assert_allclose(jnp.moveaxis(y, 0, 1).reshape(3, 8), expected, rtol=1e-5, atol=1e-5)
  # Without the axis name, each shard would be normalised on its own.
  alone, _ = jax.vmap(_make(cls))(shard_params, shards)
  assert not np.allclose(jnp.moveaxis(alone, 0, 1).reshape(3, 8), expected, atol=1e-3)


def test_norm_errors_name_the_module() -> None:
  with pytest.raises(ValueError, match=r"LayerNorm 'bad_eps/norm': epsilon"):
    LayerNorm(Graph("bad_eps").child("norm"), epsilon=-1.0)
  norm = _make(RMSNorm)
  with pytest.raises(ValueError, match=r"RMSNorm 'norm\d+/norm'.*scalar"):
    norm(Params(), jnp.asarray(1.0))
  _, params = norm(Params(), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"'norm\d+', 'norm', 'scale'"):
    norm(params.locked(), jnp.ones((2, 4)))


TRANSFORM_CASES: list[tuple[str, Callable[[], Any]]] = [
    ("layer_norm", lambda: _make(LayerNorm)),
    ("rms_norm", lambda: _make(RMSNorm)),
]


@pytest.mark.parametrize("make", [c[1] for c in TRANSFORM_CASES], ids=[c[0] for c in TRANSFORM_CASES])
def test_norms_under_jit_grad_vmap(make: Callable[[], Any]) -> None:
  norm = make()
  x = jnp.asarray(_data((2, 5)), jnp.float32)
  y, params = norm(Params(), x)
  params = params.locked()
  y_jit, params_jit = jax.jit(norm)(params, x)
  np.testing.assert_allclose(y_jit, y, rtol=1e-5, atol=1e-5)
  assert _treedef(params_jit) == _treedef(params)
  trainable, rest = params.split()
  weights = jnp.arange(10.0).reshape(2, 5)
  grads = jax.grad(lambda t: jnp.sum(norm(t.merge(rest), x)[0] * weights))(trainable)
  assert set(grads) == set(trainable)
  assert all(bool(jnp.any(g.value != 0)) for g in grads.values())
  xs = jnp.stack([x, 3 * x + 1])
  ys, _ = jax.vmap(norm, in_axes=(None, 0), out_axes=(0, None))(params, xs)
  np.testing.assert_allclose(ys[0], y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ys[1], norm(params, 3 * x + 1)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_axis_name_outside_its_transform_names_the_module_and_axis(cls: type[Any]) -> None:
  norm = _make(cls, axis_name="features")
  with pytest.raises(NameError, match=rf"{cls.__name__} 'norm\d+/norm': axis_name='features' is not bound.*vmap"):
    norm(Params(), jnp.ones((2, 3)))


_SHARED = ["epsilon", "use_scale", "scale_init", "scale_metadata", "axis_name", "param_dtype", "dtype"]


@pytest.mark.parametrize(
    "cls,keywords",
    [(LayerNorm, ["use_bias", "bias_init", "bias_metadata"] + _SHARED), (RMSNorm, ["scale_offset"] + _SHARED)],
    ids=["LayerNorm", "RMSNorm"],
)
def test_signature_lists_every_setting_by_keyword(cls: type[Any], keywords: list[str]) -> None:
  parameters = inspect.signature(cls).parameters
  assert list(parameters) == ["graph"] + keywords
  assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in keywords)
  assert parameters["epsilon"].default == 1e-5


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_repr_and_config_follow_a_changed_setting(cls: type[Any]) -> None:
  norm = _make(cls, use_scale=False)
  assert repr(norm) == f"{cls.__name__}(use_scale=False)"
  x = jnp.asarray(_data((2, 4)), jnp.float32)
  y, params = norm(Params(), x)
  norm.epsilon = 100.0
  assert dict(norm.config) == {"epsilon": 100.0, "use_scale": False}
  assert repr(norm) == f"{cls.__name__}(epsilon=100.0, use_scale=False)"
  y_changed, _ = norm(params, x)  # a later call computes with the new epsilon
  assert float(jnp.max(jnp.abs(y_changed))) < 0.5 * float(jnp.max(jnp.abs(y)))


def test_rms_norm_scale_offset_is_gemmas_norm() -> None:
  norm = _make(RMSNorm, epsilon=1e-6, scale_offset=1.0, scale_init=jax.nn.initializers.zeros)
  x = _data((3, 8))
  y, params = norm(Params(), jnp.asarray(x, jnp.float32))
  # With the zero scale it starts as the plain normalisation.
  np.testing.assert_allclose(y, _rms_norm(x, 1.0, 1e-6), rtol=1e-5, atol=1e-5)
  params = _set_affine(norm, params, ("scale",), 8)
  y, _ = norm(params, jnp.asarray(x, jnp.float32))
  scale = np.asarray(params[norm.param_path("scale")].value, np.float64)
  np.testing.assert_allclose(y, _rms_norm(x, 1.0 + scale, 1e-6), rtol=1e-5, atol=1e-5)
  # bfloat16 inputs: float32 normalisation and (1 + scale), then one rounding.
  low = jnp.asarray(x, jnp.bfloat16)
  y_low, _ = norm(params, low)
  assert y_low.dtype == jnp.bfloat16
  x32 = np.asarray(low.astype(jnp.float32), np.float64)
  expected = jnp.asarray(_rms_norm(x32, 1.0 + scale, 1e-6), jnp.float32).astype(jnp.bfloat16)
  np.testing.assert_allclose(
      y_low.astype(jnp.float32), expected.astype(jnp.float32), rtol=1e-2, atol=1e-2)


def test_rms_norm_scale_offset_needs_a_scale_and_a_number() -> None:
  with pytest.raises(ValueError, match=r"RMSNorm 'norm\d+/norm': scale_offset=1.0 is added to the learned scale, but use_scale=False"):
    _make(RMSNorm, scale_offset=1.0, use_scale=False)
  with pytest.raises(TypeError, match=r"RMSNorm 'norm\d+/norm': scale_offset must be a number.*got '1'"):
    _make(RMSNorm, scale_offset="1")
  norm = _make(RMSNorm, use_scale=False)
  norm.scale_offset = 1.0  # changed after construction: refused at the call
  with pytest.raises(ValueError, match=r"scale_offset=1.0 is added to the learned scale"):
    norm(Params(), jnp.ones((2, 3)))
