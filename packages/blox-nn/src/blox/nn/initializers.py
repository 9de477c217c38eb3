"""Initializers: JAX's own, re-exported under one name for blox layers.

An initializer is `init(key, shape, dtype) -> array`, the same contract as
`jax.nn.initializers`, so any of those (or your own function) can be passed.
`Initializer` is the type of such a function, `blox.params.Initializer`.

Example:
  >>> import jax
  >>> lecun_normal()(jax.random.key(0), (3, 4)).shape
  (3, 4)
"""

from __future__ import annotations

from jax.nn.initializers import (
    constant,
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    lecun_normal,
    lecun_uniform,
    normal,
    ones,
    orthogonal,
    truncated_normal,
    uniform,
    variance_scaling,
    zeros,
)

from blox.params import Initializer

__all__ = [
    "Initializer",
    "constant",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "zeros",
]

