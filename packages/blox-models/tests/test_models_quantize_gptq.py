"""Calibrated quantization (`quantize(..., calibration=...)`, GPTQ).

The rounding itself against numpy (inputs without correlations round to
nearest; correlated inputs err less than rounding to nearest; the stored
format is `quantize_array`'s), the inputs' second moments measured per layer
of a user-written `Repeat` stack against the same computed by hand, and the
whole path on a Llama: its params keep their format and run, follow the
float logits more closely than rounding to nearest, and the errors.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import blox.models as bm
from blox.graph import Graph, Module, Repeat
from blox.models._hooks import hooks_of
from blox.models._quantize import QUANTIZE_ORDER
from blox.models._quantize_format import quantize_array, unpack_int4
from blox.models._quantize_gptq import gptq_array, input_hessians
from blox.nn import Linear, Rng
from blox.params import Params

VOCAB = 64
SMALL = {
    "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
}


def _nearest(weight: np.ndarray, scales: np.ndarray, group_size: int, qmax: int) -> np.ndarray:
  rounded: np.ndarray = np.clip(np.round(weight / np.repeat(scales, group_size, axis=0)), -qmax, qmax)
  return rounded


def _output_error(x: np.ndarray, weight: np.ndarray, integers: np.ndarray, scales: np.ndarray,
                  group_size: int) -> float:
  return float(np.linalg.norm(x @ (weight - integers * np.repeat(scales, group_size, axis=0))))


def test_uncorrelated_inputs_round_each_weight_to_nearest() -> None:
  rng = np.random.default_rng(0)
  weight = rng.normal(size=(32, 6))
  hessian = np.diag(rng.uniform(0.5, 2.0, size=32))  # no correlation: no error to spread
  integers, scales = gptq_array(weight, hessian, bits=4, input_axes=1, group_size=8, stacked=0)
  assert integers.dtype == np.int8 and scales.dtype == np.float32
  np.testing.assert_array_equal(integers, _nearest(weight, scales.astype(np.float64), 8, 7))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits, group_size", [(4, 16), (8, None)])
def test_correlated_inputs_err_less_than_rounding_to_nearest(
    seed: int, bits: int, group_size: int | None,
) -> None:
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(64, 64)) * np.linspace(0.1, 2.0, 64)
  x = rng.normal(size=(512, 64)) @ mixing  # correlated inputs of unequal sizes
  weight = rng.normal(size=(64, 24))
  integers, scales = gptq_array(weight, x.T @ x, bits=bits, input_axes=1,
                                group_size=group_size, stacked=0)
  size = group_size or 64
  nearest, nearest_scales = quantize_array(
      jnp.asarray(weight, jnp.float32), bits=bits, input_axes=1, group_size=group_size, stacked=0)
  nearest_integers = np.asarray(unpack_int4(nearest) if bits == 4 else nearest)
  qmax = 7 if bits == 4 else 127
  assert np.abs(integers).max() <= qmax
  calibrated = _output_error(x, weight, integers, scales, size)
  rounded = _output_error(x, weight, nearest_integers, np.asarray(nearest_scales), size)
  assert calibrated < 0.8 * rounded


def test_stacked_weights_keep_quantize_arrays_layout() -> None:
  rng = np.random.default_rng(3)
  weight = rng.normal(size=(3, 4, 8, 16)).astype(np.float32)  # [layers, heads, head_dim, out]
  hessians = np.stack([np.eye(32)] * 3)
  integers, scales = gptq_array(weight, hessians, bits=8, input_axes=2, group_size=16, stacked=1)
  reference_integers, reference_scales = quantize_array(
      jnp.asarray(weight), bits=8, input_axes=2, group_size=16, stacked=1)
  assert integers.shape == reference_integers.shape
  assert scales.shape == reference_scales.shape == (3, 2, 16)


class _Tanh(Module):
  """A user-written layer: tanh of a bias-free dense layer."""

  def __init__(self, graph: Graph, rng: Rng) -> None:
    super().__init__(graph)
    self.dense = Linear(graph.child("dense"), 8, rng=rng, use_bias=False)

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    y, params = self.dense(params, x)
    return jnp.tanh(y), params


class _PerExample(Module):
  """A model that runs a stack on each example of the batch, under `vmap`."""

  def __init__(self, graph: Graph, stack: Repeat) -> None:
    super().__init__(graph)
    self.stack = stack

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    y: jax.Array = jax.vmap(lambda row: self.stack(params, row)[0])(x)
    return y, params


def test_each_layer_of_a_repeat_gets_the_second_moment_of_its_own_inputs() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  stack = Repeat(graph.child("blocks"), functools.partial(_Tanh, rng=rng), num_layers=3)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  _, params = stack(rng.seed(Params(), seed=0), x)
  layer = stack.layer
  assert isinstance(layer, _Tanh)
  path = layer.dense.param_path("kernel")
  batches = [x[:1], x[1:]]  # two batches: the moments add up
  hessians = input_hessians(stack, params, batches, [(layer.dense, ("kernel",), path)])
  assert hessians[path].shape == (3, 8, 8)
  per_example = _PerExample(graph.child("per_example"), stack)  # under vmap: one callback per example and layer
  np.testing.assert_allclose(
      input_hessians(per_example, params, batches, [(layer.dense, ("kernel",), path)])[path],
      hessians[path], rtol=1e-6)
  inputs = np.asarray(x, np.float64).reshape(-1, 8)
  for index in range(3):
    np.testing.assert_allclose(hessians[path][index], inputs.T @ inputs, rtol=1e-5, atol=1e-5)
    kernel = np.asarray(stack.layer_params(params, index)[path].value, np.float64)
    inputs = np.tanh(inputs @ kernel)


def test_calibrated_llama_runs_and_follows_the_float_logits_more_closely() -> None:
  model, params = bm.create(SMALL, seed=0)
  ids = jax.random.randint(jax.random.key(1), (8, 24), 0, VOCAB)
  reference, _ = model(params, ids)
  _, nearest = bm.quantize(model, params, bits=4, group_size=16)
  _, calibrated = bm.quantize(model, params, bits=4, group_size=16, calibration=ids)
  for path, param in nearest.items():  # the same stored format, entry by entry
    assert calibrated[path].value.shape == param.value.shape
    assert calibrated[path].value.dtype == param.value.dtype
    assert calibrated[path].metadata == param.metadata
  table = ("model", "lm", "embed", "embedding")  # not calibrated: rounded to nearest
  np.testing.assert_array_equal(calibrated[table].value, nearest[table].value)

  def error(quantized: Params) -> float:
    logits, _ = model(quantized, ids)
    return float(jnp.mean((logits - reference) ** 2))

  assert error(calibrated) < 0.8 * error(nearest)


class _Branches(Module):
  """Two dense layers, the second used only when `both`."""

  def __init__(self, graph: Graph, rng: Rng) -> None:
    super().__init__(graph)
    self.first = Linear(graph.child("first"), 4, rng=rng)
    self.second = Linear(graph.child("second"), 4, rng=rng)
    self.both = True

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    y, params = self.first(params, x)
    if self.both:
      y, params = self.second(params, y)
    return y, params


def test_a_target_the_calibration_never_reaches_is_named() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  model = _Branches(graph.child("model"), rng)
  x = jnp.ones((3, 4))
  _, params = model(rng.seed(Params(), seed=0), x)
  model.both = False
  with pytest.raises(ValueError, match=r"contracted \(.net., .model., .second., .kernel.\) never; give batches"):
    bm.quantize(model, params, bits=8, calibration=x)
  _, quantized = bm.quantize(model, params, bits=8, targets="first", calibration=x)
  assert quantized[("net", "model", "first", "kernel")].value.dtype == jnp.int8


def test_calibration_leaves_the_model_without_its_capture_hooks() -> None:
  model, params = bm.create(SMALL, seed=0)
  ids = jnp.ones((1, 4), jnp.int32)
  _, quantized = bm.quantize(model, params, bits=8, calibration=ids)
  # Run again under jit: a capture hook left behind would call back to a
  # finished accumulation (and slow every call).
  logits: Any = jax.jit(lambda p: model(p, ids)[0])(quantized)
  assert bool(jnp.all(jnp.isfinite(logits)))
  orders = {order for _, module in model.graph.walk()
            if (chain := hooks_of(module)) is not None for order, _, _ in chain.entries}
  assert orders == {QUANTIZE_ORDER}
