"""Layers and helpers shared by the Repeat tests (split by concept over several files).

Imported by module name (`packages/blox-graph/tests` is on pytest's and mypy's path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module, Repeat
from blox.params import Params

__all__ = ["Affine", "Counting", "make", "same_structure"]


class Affine(Module):
  """`x * scale + shift`, both created from a counter param outside the layer."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    scale, params = self.get_param(params, "scale", x.shape[-1:], init=jax.nn.initializers.ones)
    shift, params = self.get_param(
        params, "shift", x.shape[-1:], init=lambda key, shape, dtype: jnp.full(shape, 0.5, dtype)
    )
    return x * scale + shift, params


class Counting(Module):
  """Adds its own counter (state) to x and increments it."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    count, params = self.get_param(
        params, "count", (), init=jax.nn.initializers.zeros, trainable=False
    )
    return x + count, self.set_param(params, "count", count + 1)


def same_structure(a: Any, b: Any) -> bool:
  # Typed as object: jax's stubs leave PyTreeDef unresolved for mypy.
  structure: object = jax.tree.structure(a)
  return structure == jax.tree.structure(b)


def make(layer: Callable[[Graph], Module], num_layers: int = 3, **options: Any) -> Repeat:
  return Repeat(Graph("net").child("stack"), layer, num_layers, **options)
