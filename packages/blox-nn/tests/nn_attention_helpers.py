"""Helpers shared by the attention tests: a layer, inputs, and a NumPy reference.

Imported by module name (`packages/blox-nn/tests` is on pytest's and mypy's
path): the attention tests are split by concept over several files.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.graph import Graph
from blox.nn import MultiHeadAttention, Rng
from blox.params import Params

__all__ = ["FEATURES", "HEADS", "build", "causal", "init_params", "random_inputs", "reference", "softmax"]

HEADS = 2
FEATURES = 8


def build(
    num_heads: int = HEADS, **kwargs: Any
) -> tuple[MultiHeadAttention, Rng]:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  # Non-zero biases, so that a bias left out of the computation shows.
  kwargs.setdefault("bias_init", jax.nn.initializers.normal(1.0))
  mha = MultiHeadAttention(graph.child("mha"), num_heads, rng=rng, **kwargs)
  return mha, rng


# Test inputs are drawn with NumPy: jax.random compiles its threefry kernel
# anew for every shape (over a second each on a CPU); any draw serves here.
def random_inputs(*shape: int, seed: int = 1) -> jax.Array:
  """Standard normal float32 values of `shape`."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def random_mask(p: float, shape: tuple[int, ...], seed: int) -> jax.Array:
  """A boolean mask of `shape`, each entry True with probability `p`."""
  return jnp.asarray(np.random.default_rng(seed).random(shape) < p)


def init_params(
    mha: MultiHeadAttention,
    rng: Rng,
    query: jax.Array,
    kv: jax.Array | None = None,
    **kwargs: Any,
) -> tuple[jax.Array, Params]:
  y, params = mha(rng.seed(Params(), seed=0), query, kv, **kwargs)
  return y, params.locked()


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  out: np.ndarray = shifted / shifted.sum(axis=-1, keepdims=True)
  return out


def reference(
    params: Params,
    query: Any,
    kv: Any,
    mask: Any = None,
    num_heads: int = HEADS,
) -> np.ndarray:
  """Per-head softmax(Q K^T / sqrt(d)) V with plain matmuls, batch axis 0.

  Written with NumPy (float64): no JAX compilation, so the tests stay fast.
  """

  def get(*path: str) -> np.ndarray:
    return np.asarray(params[("net", "mha") + path].value, np.float64)

  query, kv = np.asarray(query, np.float64), np.asarray(kv, np.float64)
  heads = []
  for h in range(num_heads):
    q = query @ get("query", "kernel")[:, h] + get("query", "bias")[h]
    k = kv @ get("key", "kernel")[:, h] + get("key", "bias")[h]
    v = kv @ get("value", "kernel")[:, h] + get("value", "bias")[h]
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
      head_mask = np.broadcast_to(mask, (query.shape[0], num_heads) + logits.shape[-2:])
      logits = np.where(head_mask[:, h], logits, -1e30)
    heads.append(softmax(logits) @ v)
  concat = np.concatenate(heads, axis=-1)
  out_kernel = get("out", "kernel")
  flat = out_kernel.reshape(-1, out_kernel.shape[-1])
  out: np.ndarray = concat @ flat + get("out", "bias")
  return out


def causal(length: int) -> np.ndarray:
  return np.tril(np.ones((length, length), bool))
