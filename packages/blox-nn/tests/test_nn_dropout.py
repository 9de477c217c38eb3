"""Tests of `Dropout`: the exact mask, the scaling and the no-op cases."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import Dropout, Rng
from blox.params import Params


def _setup(rate: float) -> tuple[Rng, Dropout, Params]:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  dropout = Dropout(graph.child("dropout"), rate=rate, rng=rng)
  return rng, dropout, rng.seed(Params(), seed=4, counter=2).locked()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_rate_outside_unit_interval_raises(rate: float) -> None:
  graph = Graph("net")
  with pytest.raises(ValueError, match=r"Dropout 'net/dropout': rate must be in \[0, 1\)"):
    Dropout(graph.child("dropout"), rate=rate, rng=Rng(graph.child("rng")))


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.9])
def test_mask_is_bernoulli_of_the_drawn_key(rate: float) -> None:
  rng, dropout, params = _setup(rate)
  x = jax.random.normal(jax.random.key(0), (4, 16)) + 3.0
  y, new_params = dropout(params, x)
  key = jax.random.fold_in(jax.random.key(4), 2)
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  np.testing.assert_allclose(y, np.where(keep, x / (1.0 - rate), 0.0), rtol=1e-6)
  assert int(rng.get_counter(new_params)) == 3
  # The next call draws the next key: another mask.
  y2, _ = dropout(new_params, x)
  assert not np.array_equal(np.asarray(y) == 0, np.asarray(y2) == 0)


def test_keeps_dtype_and_scales_kept_values() -> None:
  _, dropout, params = _setup(0.5)
  x = jnp.ones((64,), jnp.bfloat16)
  y, _ = dropout(params, x)
  assert y.dtype == jnp.bfloat16
  assert set(np.asarray(y, np.float32).tolist()) == {0.0, 2.0}


@pytest.mark.parametrize("rate, is_training", [(0.5, False), (0.0, True)])
def test_eval_or_zero_rate_returns_inputs_and_params_unchanged(rate: float, is_training: bool) -> None:
  _, dropout, params = _setup(rate)
  x = jnp.arange(6.0)
  y, new_params = dropout(params, x, is_training=is_training)
  assert y is x
  assert new_params is params


def test_under_jit_advances_the_counter() -> None:
  rng, dropout, params = _setup(0.5)
  run = jax.jit(dropout)
  y1, params1 = run(params, jnp.ones(32))
  y2, params2 = run(params1, jnp.ones(32))
  assert int(rng.get_counter(params2)) == 4
  assert not np.array_equal(y1, y2)


def test_integer_inputs_are_refused_naming_the_module() -> None:
  _, dropout, params = _setup(0.5)
  message = r"Dropout 'net/dropout': inputs must be floating point, got dtype int32; cast them first"
  with pytest.raises(TypeError, match=message):
    dropout(params, jnp.ones(4, jnp.int32))
  # Also in evaluation, so the mistake shows before training does.
  with pytest.raises(TypeError, match=message):
    dropout(params, jnp.ones(4, jnp.int32), is_training=False)


def test_bfloat16_is_scaled_by_the_exact_factor() -> None:
  # bfloat16(1 - 0.3) is 0.69921875: dividing by it would be off by 0.1%,
  # enough to round many products to a neighbouring bfloat16.
  rate = 0.3
  _, dropout, params = _setup(rate)
  x = jnp.linspace(1.0, 2.0, 256).astype(jnp.bfloat16)
  y, _ = dropout(params, x)
  key = jax.random.fold_in(jax.random.key(4), 2)
  keep = np.asarray(jax.random.bernoulli(key, 1.0 - rate, x.shape))
  exact = (np.asarray(x, np.float32) / np.float32(1.0 - rate)).astype(jnp.bfloat16)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y)[keep], exact[keep])
  assert bool(np.all(np.asarray(y, np.float32)[~keep] == 0.0))


def test_traced_is_training_is_reported() -> None:
  _, dropout, params = _setup(0.5)
  with pytest.raises(TypeError, match=r"Dropout 'net/dropout': is_training must be a Python bool.*static_argnames"):
    jax.jit(lambda p, t: dropout(p, jnp.ones(3), is_training=t))(params, True)
  y, _ = jax.jit(dropout, static_argnames="is_training")(params, jnp.ones(3), is_training=False)
  np.testing.assert_array_equal(y, jnp.ones(3))


def test_signature_takes_the_rate_by_position_and_rng_by_keyword() -> None:
  parameters = inspect.signature(Dropout).parameters
  assert [(n, p.kind) for n, p in parameters.items()] == [
      ("graph", inspect.Parameter.POSITIONAL_OR_KEYWORD),
      ("rate", inspect.Parameter.POSITIONAL_OR_KEYWORD),
      ("rng", inspect.Parameter.KEYWORD_ONLY),
  ]
  assert all(p.default is inspect.Parameter.empty for p in parameters.values())


def test_repr_and_config_follow_a_changed_rate() -> None:
  _, dropout, params = _setup(0.5)
  assert repr(dropout) == "Dropout(rate=0.5, rng=Rng@net/rng)"
  dropout.rate = 0.0
  assert dropout.config["rate"] == 0.0 and repr(dropout).startswith("Dropout(rate=0.0,")
  y, same = dropout(params, jnp.ones(8))  # a rate of 0 keeps everything
  np.testing.assert_array_equal(y, jnp.ones(8))
  assert same is params
  dropout.rate = 1.0
  with pytest.raises(ValueError, match=r"^Dropout 'net/dropout': rate must be in \[0, 1\), got 1.0"):
    dropout(params, jnp.ones(8))
