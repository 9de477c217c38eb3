"""Argument and input checks shared by the layers of `blox.nn`.

Each check takes `where`, the layer's `Module.where()` (such as
`"Linear 'net/out'"`), so that the error names the module at fault, and each
kind of mistake is worded the same way in every layer.

Example:
  >>> check_positive_int(3, "output_size", "Linear 'net/out'")
  3
  >>> check_positive_int(2.5, "hidden_size", "GRU 'net/gru'")
  Traceback (most recent call last):
  ...
  ValueError: GRU 'net/gru': hidden_size must be a positive int, got 2.5.
  >>> import jax.numpy as jnp
  >>> check_float_inputs(jnp.arange(3), "Linear 'net/out'")
  Traceback (most recent call last):
  ...
  TypeError: Linear 'net/out': inputs must be floating point, got dtype int32; cast them first, e.g. inputs.astype(jnp.float32).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "check_feature_axis",
    "check_float_inputs",
    "check_is_training",
    "check_positive_int",
]


def check_positive_int(value: Any, name: str, where: str) -> Any:
  """`value`; raises ValueError unless it is an int >= 1 (bools are refused).

  `True` is an int to Python, but `Linear(graph, True, rng=rng)` is surely a
  mistake, not a request for size 1; a float such as `2.5` would only fail
  later, deep inside an initializer.
  """
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{where}: {name} must be a positive int, got {value!r}.")
  return value


def check_is_training(value: object, where: str) -> None:
  """Raises TypeError unless `value` is a Python bool.

  `is_training` chooses which computation is traced, so it must be known
  while tracing; a traced value (a jit argument) would otherwise fail with a
  bare `TracerBoolConversionError` that names no module.
  """
  if isinstance(value, bool):
    return
  if isinstance(value, jax.core.Tracer):
    got = "a traced value (it was passed as a jax.jit argument)"
  else:
    got = type(value).__name__
  raise TypeError(
      f"{where}: is_training must be a Python bool, got {got}; mark it static"
      " under jax.jit, e.g. jax.jit(f, static_argnames='is_training')."
  )


def check_feature_axis(inputs: Any, where: str, name: str = "inputs") -> None:
  """Raises ValueError for a scalar: the layer works on a last (feature) axis."""
  if jnp.ndim(inputs) < 1:
    raise ValueError(
        f"{where}: {name} need a feature axis, shaped [..., features]; got a scalar."
    )


def check_float_inputs(inputs: Any, where: str, name: str = "inputs") -> jnp.dtype:
  """The dtype of `inputs`; raises TypeError unless it is floating or complex.

  Layers whose math needs real numbers (products with float kernels,
  normalisation, dropout's rescaling) refuse integers and bools instead of
  silently promoting them: an integer token id fed to a `Linear` instead of
  an `Embed` is a bug, not a request for a float cast.
  """
  dtype = jnp.result_type(inputs)
  if not jnp.issubdtype(dtype, jnp.inexact):
    raise TypeError(
        f"{where}: {name} must be floating point, got dtype {dtype}; cast them"
        f" first, e.g. {name}.astype(jnp.float32)."
    )
  return dtype
