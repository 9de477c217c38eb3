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

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module
from blox.params import KeySource, Params

__all__ = ["Dropout"]


class Dropout(Module):
  """Keeps each element with probability `1 - rate`, scaled by `1 / (1 - rate)`.

  Draws one key from `rng` per training call with `rate > 0`; otherwise it
  returns its inputs and params unchanged.
  """

  def __init__(self, graph: Graph, rate: float, rng: KeySource) -> None:
    super().__init__(graph)
    if not 0.0 <= rate < 1.0:
      raise ValueError(
          f"Dropout {graph.path!r}: rate must be in [0, 1), got {rate}."
      )
    self.rate = rate
    self.rng = rng

  def __call__(
      self, params: Params, inputs: jax.Array, is_training: bool = True
  ) -> tuple[jax.Array, Params]:
    if not is_training or self.rate == 0.0:
      return inputs, params
    key, params = self.rng(params)
    keep = jax.random.bernoulli(key, 1.0 - self.rate, jnp.shape(inputs))
    kept = inputs / jnp.asarray(1.0 - self.rate, jnp.result_type(inputs))
    return jnp.where(keep, kept, jnp.zeros_like(inputs)), params
