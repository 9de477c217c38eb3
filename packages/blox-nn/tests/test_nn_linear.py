"""Tests of `Linear` against a plain jnp reference."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import Linear, Rng, initializers
from blox.nn._contract import Contraction, contraction_hooks
from blox.params import SHARDING, Params


def _setup(name: str, **kwargs: Any) -> tuple[Rng, Linear, Params]:
  graph = Graph(name)
  rng = Rng(graph.child("rng"))
  linear = Linear(graph.child("linear"), rng=rng, **kwargs)
  return rng, linear, rng.seed(Params(), seed=0)


def test_matches_x_at_w_plus_b() -> None:
  _, linear, params = _setup("lin_ref", output_size=4)
  x = jax.random.normal(jax.random.key(1), (2, 5, 3))
  y, params = linear(params, x)
  kernel = params[("lin_ref", "linear", "kernel")].value
  bias = params[("lin_ref", "linear", "bias")].value
  assert kernel.shape == (3, 4) and bias.shape == (4,)
  np.testing.assert_allclose(y, x @ kernel + bias, rtol=1e-6)
  # A non-zero bias is really added.
  params = linear.set_param(params, "bias", jnp.arange(4.0))
  y, _ = linear(params, x)
  np.testing.assert_allclose(y, x @ kernel + jnp.arange(4.0), rtol=1e-6)


def test_kernel_is_created_before_bias() -> None:
  _, linear, params = _setup("lin_order", output_size=2)
  _, params = linear(params, jnp.ones(3))
  assert list(params) == [
      ("lin_order", "rng", "seed"),
      ("lin_order", "rng", "counter"),
      ("lin_order", "linear", "kernel"),
      ("lin_order", "linear", "bias"),
  ]


def test_lecun_normal_kernel_and_zero_bias_by_default() -> None:
  _, linear, params = _setup("lin_init", output_size=4)
  _, params = linear(params, jnp.ones(3))
  expected = initializers.lecun_normal()(
      jax.random.fold_in(jax.random.key(0), 0), (3, 4), jnp.float32
  )
  np.testing.assert_array_equal(params[("lin_init", "linear", "kernel")].value, expected)
  np.testing.assert_array_equal(params[("lin_init", "linear", "bias")].value, np.zeros(4))
  # Lecun normal has variance 1 / fan_in: check it statistically on a big kernel.
  _, big, big_params = _setup("lin_big", output_size=256)
  _, big_params = big(big_params, jnp.ones(400))
  std = float(jnp.std(big_params[("lin_big", "linear", "kernel")].value))
  assert abs(std - (1 / 400) ** 0.5) < 0.005


def test_without_bias() -> None:
  _, linear, params = _setup("lin_nobias", output_size=2, use_bias=False)
  x = jnp.arange(6.0).reshape(2, 3)
  y, params = linear(params, x)
  assert list(p[-1] for p in params if p[0] == "lin_nobias" and p[1] == "linear") == ["kernel"]
  np.testing.assert_allclose(y, x @ params[("lin_nobias", "linear", "kernel")].value, rtol=1e-6)


def test_custom_initializers() -> None:
  _, linear, params = _setup(
      "lin_custom", output_size=2, kernel_init=initializers.ones, bias_init=initializers.constant(0.5)
  )
  y, _ = linear(params, jnp.ones((1, 3)))
  np.testing.assert_allclose(y, [[3.5, 3.5]])


def test_scalar_input_raises() -> None:
  _, linear, params = _setup("lin_scalar", output_size=2)
  with pytest.raises(ValueError, match=r"Linear 'lin_scalar/linear'.*scalar"):
    linear(params, jnp.ones(()))


@pytest.mark.parametrize("size", [0, -2, True, 2.5, "3"])
def test_output_size_must_be_a_positive_int(size: Any) -> None:
  graph = Graph("lin_bad")
  message = rf"Linear 'lin_bad/linear': output_size must be a positive int, got {size!r}"
  with pytest.raises(ValueError, match=message):
    Linear(graph.child("linear"), size, rng=Rng(graph.child("rng")))


def test_metadata_hooks_reach_the_params() -> None:
  _, linear, params = _setup(
      "lin_meta", output_size=4,
      kernel_metadata={SHARDING: (None, "model")}, bias_metadata={SHARDING: ("model",)},
  )
  _, params = linear(params, jnp.ones(3))
  assert params[("lin_meta", "linear", "kernel")].sharding == (None, "model")
  assert params[("lin_meta", "linear", "bias")].sharding == ("model",)


def test_input_size_change_after_init_raises() -> None:
  _, linear, params = _setup("lin_shape", output_size=2)
  _, params = linear(params, jnp.ones(3))
  with pytest.raises(ValueError, match=r"exists with shape \(3, 2\)"):
    linear(params.locked(), jnp.ones(5))


def test_repr_shows_constructor_arguments() -> None:
  _, linear, _ = _setup("lin_repr", output_size=4)
  assert repr(linear) == "Linear(output_size=4, rng=Rng@lin_repr/rng)"


def test_signature_lists_the_size_by_position_and_the_rest_by_keyword() -> None:
  parameters = inspect.signature(Linear).parameters
  assert [n for n, p in parameters.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == [
      "graph", "output_size"]
  assert [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY] == [
      "rng", "use_bias", "kernel_init", "bias_init", "kernel_metadata", "bias_metadata",
      "precision", "param_dtype", "dtype"]


def test_repr_and_config_follow_a_changed_setting() -> None:
  _, linear, params = _setup("lin_change", output_size=4)
  linear.use_bias = False
  assert linear.config["use_bias"] is False
  assert repr(linear) == "Linear(output_size=4, rng=Rng@lin_change/rng, use_bias=False)"
  _, params = linear(params, jnp.ones(3))
  assert linear.param_path("bias") not in params


def test_the_product_goes_through_contract() -> None:
  _, linear, params = _setup("lin_contract", output_size=2)
  x = jnp.ones((2, 3))
  y, params = linear(params, x)
  seen: list[Contraction] = []

  def hook(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    seen.append(contraction)
    return contraction.compute(inputs, weight)

  with contraction_hooks(hook):
    hooked, _ = linear(params, x)
  np.testing.assert_array_equal(hooked, y)
  (contraction,) = seen
  assert contraction.module is linear and contraction.weight_name == ("kernel",)
  assert contraction.weight_path() == ("lin_contract", "linear", "kernel")
