"""Tests of `MLP` and `GatedMLP` against plain `jnp` computations with their params."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Policy
from blox.nn import MLP, GatedMLP, Rng, contraction_hooks
from blox.params import SHARDING, Params


def _make(cls: type[Any], *args: Any, graph: Graph | None = None, **kwargs: Any) -> tuple[Any, Rng, Params]:
  graph = Graph("net") if graph is None else graph
  rng = Rng(graph.child("rng"))
  kwargs.setdefault("bias_init", jax.nn.initializers.normal(1.0))
  return cls(graph.child("mlp"), *args, rng=rng, **kwargs), rng, rng.seed(Params(), seed=0)


def _get(params: Params, *path: str) -> jax.Array:
  value: jax.Array = params[("net", "mlp", *path)].value
  return value


def _x(*shape: int) -> jax.Array:
  return jax.random.normal(jax.random.key(1), shape)


def test_mlp_is_down_of_activation_of_up() -> None:
  mlp, _, params = _make(MLP, 12)
  x = _x(2, 3, 5)
  y, params = mlp(params, x)
  shapes = {path[2:]: params[path].value.shape for path in params if path[1] == "mlp"}
  assert shapes == {("up", "kernel"): (5, 12), ("up", "bias"): (12,),
                    ("down", "kernel"): (12, 5), ("down", "bias"): (5,)}
  hidden = jax.nn.gelu(x @ _get(params, "up", "kernel") + _get(params, "up", "bias"))
  expected = hidden @ _get(params, "down", "kernel") + _get(params, "down", "bias")
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_gated_mlp_is_swiglu_and_geglu() -> None:
  mlp, _, params = _make(GatedMLP, 8, 3, use_bias=False)
  x = _x(4, 6)
  y, params = mlp(params, x)
  assert y.shape == (4, 3)
  assert [path[2:] for path in params if path[1] == "mlp"] == [
      ("gate", "kernel"), ("up", "kernel"), ("down", "kernel")]
  assert _get(params, "down", "kernel").shape == (8, 3)
  gate, up, down = (_get(params, name, "kernel") for name in ("gate", "up", "down"))
  np.testing.assert_allclose(y, (jax.nn.silu(x @ gate) * (x @ up)) @ down, rtol=1e-5, atol=1e-5)
  tanh_gelu = functools.partial(jax.nn.gelu, approximate=True)
  mlp.activation = tanh_gelu  # GeGLU, on the same params
  y, _ = mlp(params, x)
  np.testing.assert_allclose(y, (tanh_gelu(x @ gate) * (x @ up)) @ down, rtol=1e-5, atol=1e-5)


def test_biases_enter_gate_up_and_down() -> None:
  mlp, _, params = _make(GatedMLP, 6)
  x = _x(3, 4)
  y, params = mlp(params, x)
  gate, up, down = (
      x @ _get(params, "gate", "kernel") + _get(params, "gate", "bias"),
      x @ _get(params, "up", "kernel") + _get(params, "up", "bias"),
      _get(params, "down", "kernel"),
  )
  expected = (jax.nn.silu(gate) * up) @ down + _get(params, "down", "bias")
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_every_product_goes_through_contract_under_the_childrens_names() -> None:
  mlp, _, params = _make(GatedMLP, 6)
  x = _x(3, 4)
  _, params = mlp(params, x)
  seen: list[tuple[str, ...] | None] = []

  def record(contraction: Any, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    seen.append(contraction.weight_path())
    out: jax.Array = contraction.compute(inputs, weight)
    return out

  with contraction_hooks(record):
    mlp(params, x)
  assert seen == [("net", "mlp", name, "kernel") for name in ("gate", "up", "down")]


def test_per_child_metadata_and_unknown_children() -> None:
  into, out_of = {SHARDING: (None, "model")}, {SHARDING: ("model", None)}
  mlp, _, params = _make(
      GatedMLP, 8, kernel_metadata={"gate": into, "up": into, "down": out_of},
      bias_metadata={"up": {SHARDING: ("model",)}})
  _, params = mlp(params, _x(2, 4))
  assert params[("net", "mlp", "gate", "kernel")].sharding == (None, "model")
  assert params[("net", "mlp", "down", "kernel")].sharding == ("model", None)
  assert params[("net", "mlp", "up", "bias")].sharding == ("model",)
  assert SHARDING not in params[("net", "mlp", "gate", "bias")].metadata
  with pytest.raises(ValueError, match=r"^MLP 'net/mlp': kernel_metadata maps the children \('up', 'down'\) to their metadata, but got \['gate'\]"):
    _make(MLP, 8, kernel_metadata={"gate": into})
  with pytest.raises(ValueError, match=r"^GatedMLP 'net/mlp': bias_metadata maps the children \('gate', 'up', 'down'\).*got \['sharding'\]"):
    _make(GatedMLP, 8, bias_metadata={SHARDING: ("model",)})
  with pytest.raises(TypeError, match=r"^MLP 'net/mlp': kernel_metadata must map child names to metadata.*got list"):
    _make(MLP, 8, kernel_metadata=[into])


def test_the_activation_is_computed_in_the_compute_dtype() -> None:
  policy = Policy(compute_dtype=jnp.bfloat16, output_dtype=jnp.float32)
  seen: list[Any] = []

  def activation(h: jax.Array) -> jax.Array:
    seen.append(h.dtype)
    return jax.nn.silu(h)

  mlp, _, params = _make(GatedMLP, 8, graph=Graph("net", policy=policy), activation=activation)
  x = _x(2, 4)
  y, params = mlp(params, x)
  assert seen == [jnp.bfloat16] and y.dtype == jnp.float32
  assert _get(params, "up", "kernel").dtype == jnp.float32

  def low(a: jax.Array) -> jax.Array:
    return a.astype(jnp.bfloat16)

  gate = low(x) @ low(_get(params, "gate", "kernel")) + low(_get(params, "gate", "bias"))
  up = low(x) @ low(_get(params, "up", "kernel")) + low(_get(params, "up", "bias"))
  expected = (jax.nn.silu(gate) * up) @ low(_get(params, "down", "kernel")) + low(_get(params, "down", "bias"))
  np.testing.assert_allclose(y, expected.astype(jnp.float32), rtol=2e-2, atol=2e-2)


def test_a_setting_changed_after_construction_reaches_the_children() -> None:
  mlp, _, params = _make(MLP, 6, use_bias=False)
  mlp.output_size = 2
  y, params = mlp(params, _x(3, 4))
  assert y.shape == (3, 2) and ("net", "mlp", "up", "bias") not in params
  assert mlp.up.output_size == 6 and mlp.down.output_size == 2


def test_inputs_and_settings_are_checked_naming_the_layer() -> None:
  mlp, _, params = _make(MLP, 6)
  with pytest.raises(TypeError, match=r"^MLP 'net/mlp': inputs must be floating point, got dtype int32; cast them first"):
    mlp(params, jnp.ones((2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"^GatedMLP 'net/mlp': hidden_size must be a positive int, got 0"):
    _make(GatedMLP, 0)
  with pytest.raises(ValueError, match=r"^MLP 'net/mlp': output_size \(or None\) must be a positive int, got 2.0"):
    _make(MLP, 4, 2.0)
  with pytest.raises(TypeError, match=r"^MLP 'net/mlp': activation must be a function array -> array.*got str"):
    _make(MLP, 4, activation="gelu")


@pytest.mark.parametrize("cls", [MLP, GatedMLP])
def test_signature_is_sizes_then_keywords(cls: type[Any]) -> None:
  parameters = inspect.signature(cls).parameters
  assert list(parameters)[:3] == ["graph", "hidden_size", "output_size"]
  assert all(p.kind is p.KEYWORD_ONLY for p in list(parameters.values())[3:])
  assert {"activation", "rng", "use_bias", "kernel_init", "kernel_metadata", "param_dtype", "dtype"} <= set(parameters)
  mlp, _, _ = _make(cls, 4)
  assert all(hasattr(mlp, name) for name in list(parameters)[1:])
