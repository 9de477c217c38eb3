"""Tests of `soft_cap`, `cap * tanh(x / cap)`, against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.nn import soft_cap


def test_soft_cap_matches_its_formula_and_bounds_the_logits() -> None:
  x = jax.random.normal(jax.random.key(0), (3, 5)) * 100.0
  y = soft_cap(x, 30.0)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, 30.0 * np.tanh(np.asarray(x, np.float64) / 30.0), rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(y))) <= 30.0
  # Near zero it is the identity.
  np.testing.assert_allclose(soft_cap(jnp.array([1e-3, -2e-3]), 50.0), [1e-3, -2e-3], rtol=1e-5)


def test_soft_cap_computes_bfloat16_in_float32_and_keeps_the_dtype() -> None:
  x = (jax.random.normal(jax.random.key(1), (64,)) * 40.0).astype(jnp.bfloat16)
  y = soft_cap(x, 30.0)
  assert y.dtype == jnp.bfloat16
  wide = np.asarray(x.astype(jnp.float32), np.float64)
  expected = jnp.asarray(30.0 * np.tanh(wide / 30.0), jnp.float32).astype(jnp.bfloat16)
  np.testing.assert_array_equal(y.astype(jnp.float32), expected.astype(jnp.float32))


def test_soft_cap_under_jit_and_grad() -> None:
  grad = jax.grad(lambda x: soft_cap(x, 10.0))(jnp.float32(5.0))
  np.testing.assert_allclose(grad, 1.0 - np.tanh(0.5) ** 2, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(soft_cap, static_argnums=1)(jnp.ones(2), 2.0), 2.0 * np.tanh(0.5), rtol=1e-6)


def test_soft_cap_errors_say_what_is_wrong() -> None:
  with pytest.raises(ValueError, match=r"soft_cap: cap must be a positive number such as 50.0.*got 0.0"):
    soft_cap(jnp.ones(2), 0.0)
  with pytest.raises(TypeError, match=r"soft_cap: x must be floating point, got dtype int32"):
    soft_cap(jnp.ones(2, jnp.int32), 1.0)
