"""Tests of `rope_frequencies`, `RopeScaling` and `rope(..., frequencies=...)`
against NumPy re-derivations of their formulas."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.nn import RopeScaling, rope, rope_frequencies


def _np_plain(head_dim: int, base: float) -> np.ndarray:
  out: np.ndarray = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  return out


def _np_llama3(head_dim: int, base: float, factor: float, low: float, high: float, original: int) -> np.ndarray:
  """Llama 3.1's rule, one frequency at a time, in float64."""
  out = []
  for frequency in _np_plain(head_dim, base):
    wavelength = 2 * math.pi / frequency
    if wavelength < original / high:
      out.append(frequency)
    elif wavelength > original / low:
      out.append(frequency / factor)
    else:
      smooth = (original / wavelength - low) / (high - low)
      out.append((1 - smooth) * frequency / factor + smooth * frequency)
  return np.array(out)


def _np_rope(x: np.ndarray, positions: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
  half = x.shape[-1] // 2
  angle = positions[..., None, None] * frequencies  # [..., t, 1, half]
  first, second = x[..., :half], x[..., half:]
  out: np.ndarray = np.concatenate(
      [first * np.cos(angle) - second * np.sin(angle), second * np.cos(angle) + first * np.sin(angle)],
      axis=-1,
  )
  return out


def test_plain_frequencies_are_those_of_rope_bit_for_bit() -> None:
  frequencies = rope_frequencies(16, 500.0)
  assert frequencies.dtype == jnp.float32 and frequencies.shape == (8,)
  np.testing.assert_allclose(frequencies, _np_plain(16, 500.0), rtol=1e-6)
  x = jax.random.normal(jax.random.key(0), (2, 7, 3, 16))
  positions = jnp.arange(7)
  np.testing.assert_array_equal(
      rope(x, positions, frequencies=frequencies), rope(x, positions, base=500.0))


def test_linear_scaling_divides_every_frequency() -> None:
  scaled = rope_frequencies(8, 10000.0, RopeScaling("linear", factor=4.0))
  np.testing.assert_allclose(scaled, _np_plain(8, 10000.0) / 4.0, rtol=1e-6)
  # Dividing the frequencies is counting positions factor times slower.
  x = jax.random.normal(jax.random.key(1), (1, 5, 2, 8))
  np.testing.assert_allclose(
      rope(x, jnp.arange(5) * 4, frequencies=scaled), rope(x, jnp.arange(5)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "head_dim,base,factor,low,high,original",
    [(128, 500000.0, 8.0, 1.0, 4.0, 8192), (64, 10000.0, 32.0, 1.0, 4.0, 256), (32, 10000.0, 2.0, 2.0, 8.0, 64)],
)
def test_llama3_scaling_matches_its_rule(
    head_dim: int, base: float, factor: float, low: float, high: float, original: int
) -> None:
  scaling = RopeScaling("llama3", factor, low_freq_factor=low, high_freq_factor=high, original_max_position=original)
  got = np.asarray(rope_frequencies(head_dim, base, scaling))
  expected = _np_llama3(head_dim, base, factor, low, high, original)
  np.testing.assert_allclose(got, expected, rtol=2e-6)
  plain = _np_plain(head_dim, base)
  # Each of the three regimes occurs for the settings above: the fast
  # frequencies are kept, the slow divided, those between blended.
  kept = np.isclose(got, plain, rtol=1e-6)
  divided = np.isclose(got, plain / factor, rtol=1e-6)
  assert kept.any() and divided.any() and (~kept & ~divided).any(), got / plain


def test_rope_takes_traced_frequencies_under_jit() -> None:
  x = jax.random.normal(jax.random.key(2), (2, 4, 2, 6))
  positions = jnp.array([[0, 1, 2, 3], [5, 6, 7, 8]])
  frequencies = jnp.array([1.0, 0.25, 0.01])
  got = jax.jit(lambda f: rope(x, positions, frequencies=f))(frequencies)
  expected = _np_rope(np.asarray(x, np.float64), np.asarray(positions), np.asarray(frequencies, np.float64))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_rope_keeps_a_bfloat16_dtype_with_frequencies() -> None:
  x = jnp.ones((1, 3, 1, 4), jnp.bfloat16)
  assert rope(x, jnp.arange(3), frequencies=rope_frequencies(4)).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind": "yarn", "factor": 2.0}, r"RopeScaling: kind must be one of \('linear', 'llama3'\), got 'yarn'"),
        ({"kind": "linear", "factor": 0.0}, r"RopeScaling: factor must be a positive number, got 0.0"),
        ({"kind": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0},
         r"RopeScaling: high_freq_factor=4.0 must be larger than low_freq_factor=4.0"),
        ({"kind": "llama3", "factor": 8.0, "original_max_position": 8192.0},
         r"RopeScaling: original_max_position must be a positive int .* got 8192.0"),
    ],
)
def test_rope_scaling_is_validated(kwargs: dict[str, Any], message: str) -> None:
  with pytest.raises(ValueError, match=message):
    RopeScaling(**kwargs)


def test_rope_frequencies_errors_say_what_is_wrong() -> None:
  with pytest.raises(ValueError, match=r"rope_frequencies: head_dim must be a positive even int .* got 7"):
    rope_frequencies(7)
  with pytest.raises(ValueError, match=r"rope_frequencies: base must be a positive number, got -1.0"):
    rope_frequencies(8, -1.0)
  with pytest.raises(TypeError, match=r"rope_frequencies: scaling must be None or a RopeScaling.*got dict"):
    rope_frequencies(8, scaling={"kind": "linear"})  # type: ignore[arg-type]  # the misuse under test
  x = jnp.ones((1, 3, 1, 8))
  with pytest.raises(ValueError, match=r"rope: frequencies of shape \(3,\) do not fit a head_dim of 8.*\(4,\)"):
    rope(x, jnp.arange(3), frequencies=jnp.ones(3))
  with pytest.raises(TypeError, match=r"rope: frequencies must be floating point"):
    rope(x, jnp.arange(3), frequencies=jnp.ones(4, jnp.int32))
