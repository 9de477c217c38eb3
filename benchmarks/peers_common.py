"""What every library's module of the peers benchmark builds, and the pieces they share.

benchmarks/peers.py times the same two models in plain JAX, blox, Flax NNX,
Equinox and Haiku. Each library's module (peers_flax.py, peers_equinox.py,
peers_haiku.py) turns a model into a `Trainer`: its jitted train step in the
carried form of benchmarks/timing.py, the state it starts from, its
parameter count, and a function that compiles a fresh copy of the step.

The math no peer ships for this model - rotary embeddings and grouped-query
attention - is the hand-written reference's (`rope`, `attend` from
benchmarks/transformer_reference.py), called from inside each library's
modules, so that every side computes the same thing with the same FLOPs.

Example:
  >>> import jax.numpy as jnp
  >>> count_values({"w": jnp.ones((2, 3)), "b": jnp.ones(3), "step": 1})
  9
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.transformer_reference import COMPUTE, EPSILON, attend, rope

__all__ = [
    "COMPUTE",
    "EPSILON",
    "LEARNING_RATE",
    "Trainer",
    "attend",
    "causal_attention",
    "count_values",
    "cross_entropy",
    "head_dim",
    "rope",
    "sgd",
]

# The same learning rate as benchmarks/train_step.py and benchmarks/transformer.py.
LEARNING_RATE = 0.01


@dataclasses.dataclass
class Trainer:
  """One library's train step, ready to be timed.

  `step(*state)` returns the next state, its last entry the loss; it is
  jitted (the library's way) and donates the params where the library can.
  `compile()` traces, lowers and compiles a new copy of the step, so that no
  cache of JAX or of the library answers.
  """

  step: Callable[..., tuple[Any, ...]]
  state: tuple[Any, ...]
  param_count: int
  compile: Callable[[], None]
  note: str = ""


def count_values(tree: Any) -> int:
  """The number of floating-point values in the arrays of `tree` (the params)."""
  return sum(
      int(leaf.size) for leaf in jax.tree.leaves(tree)
      if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)
  )


def sgd(params: Any, grads: Any) -> Any:
  """One plain SGD update, as in the blox and hand-written steps."""
  return jax.tree.map(lambda w, g: w - LEARNING_RATE * g, params, grads)


def cross_entropy(scores: jax.Array, targets: jax.Array) -> jax.Array:
  """The mean next-token cross-entropy in float32, as the hand-written loss computes it."""
  log_probs = jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))


def head_dim(features: int, num_heads: int) -> int:
  """The per-head size of the example's attention: the features split over the query heads."""
  return features // num_heads


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, rope_base: float
) -> jax.Array:
  """Rotary positions on q and k, then causal grouped-query attention.

  q `[batch, length, heads, d]`, k and v `[batch, length, kv_heads, d]`;
  the reference's own functions, so every library rotates and groups alike.
  """
  length = q.shape[1]
  positions = jnp.arange(length)
  causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
  return attend(rope(q, positions, rope_base), rope(k, positions, rope_base), v, causal)
