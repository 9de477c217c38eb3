"""`Dropout`: zeroes inputs at random while training and rescales the rest.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> dropout = Dropout(graph.child('dropout'), rate=0.5, rng=rng)
  >>> y, params = dropout(rng.seed(Params(), seed=0), jnp.ones(4))
  >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
  True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Module, setting
from blox.nn._checks import check_float_inputs, check_is_training
from blox.nn._out_sharding import sharding_of
from blox.params import KeySource, Params

__all__ = ["Dropout"]


def check_rate(value: Any, name: str, where: str) -> Any:
  """`value`; raises ValueError unless it is a number in [0, 1) (a dropout rate)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
    raise ValueError(f"{where}: {name} must be in [0, 1), got {value!r}.")
  return value


def drop(key: jax.Array, inputs: jax.Array, rate: float, where: str) -> jax.Array:
  """`inputs` with each element kept with probability `1 - rate`, else zeroed.

  Kept elements are scaled by `1 / (1 - rate)`. The product is taken in at
  least float32 and rounded to the input dtype once, so a bfloat16 input is
  not scaled by a bfloat16-rounded factor. Shared by `Dropout` and the
  attention-weight dropout of `MultiHeadAttention`. Integer inputs are
  refused: `1 / (1 - rate)` has no integer value.
  """
  dtype = check_float_inputs(inputs, where)
  # Laid out like the inputs on Explicit mesh axes; the bits do not depend on
  # the layout (jax's partitionable threefry), so every mesh draws one mask.
  keep = jax.random.bernoulli(key, 1.0 - rate, jnp.shape(inputs), out_sharding=sharding_of(inputs))
  compute = jnp.promote_types(dtype, jnp.float32)
  # A Python float is weakly typed: it takes the compute dtype, not float64.
  kept = (jnp.asarray(inputs, compute) * (1.0 / (1.0 - rate))).astype(dtype)
  return jnp.where(keep, kept, jnp.zeros_like(kept))


# The former name, until the attention code that imports it moves to `drop`.
_drop = drop


class Dropout(Module):
  """Keeps each element with probability `1 - rate`, scaled by `1 / (1 - rate)`.

  Draws one key from `rng` per training call with `rate > 0`; otherwise it
  returns its inputs and params unchanged. Inputs must be floating point
  (or complex); `is_training` must be a Python bool (static under jit).
  """

  rate: float = setting(
      kw_only=False, check=check_rate, doc="the probability of zeroing each element, in [0, 1).")
  rng: KeySource = setting(doc="the key source of the masks.")

  def __call__(
      self, params: Params, inputs: jax.Array, is_training: bool = True
  ) -> tuple[jax.Array, Params]:
    where = self.where()
    check_is_training(is_training, where)
    # Checked in evaluation too, so that the mistake shows before training.
    check_float_inputs(inputs, where)
    # Checked again here: `rate` may have been changed since construction.
    rate = check_rate(self.rate, "rate", where)
    if not is_training or rate == 0.0:
      return inputs, params
    key, params = self.rng(params)
    return drop(key, inputs, rate, where), params
