"""A Llama causal LM hand-written in plain JAX, the twin of `blox.models.CausalLM`.

Pure functions over a dict of arrays, the per-layer weights stacked on a
leading layer axis and the layers run in one `jax.lax.scan` (as blox's
`Repeat` runs them). The math is Llama's, all in float32: RMSNorm, grouped-
query attention with rotary embeddings on queries and keys (the two halves of
each head rotated against each other; query head `n` reads key/value head
`n // (num_heads // num_kv_heads)`), a causal mask, a SwiGLU MLP, a final
RMSNorm and a head (its own kernel, or the embedding table when tied).

`weights_from(params)` copies the weights out of the params that
`blox.models.load_pretrained` gives, so both sides compute the same function
of the same numbers. Nothing here calls blox. `next_token_loss` is the loss
of both sides' train steps, and `train_step` this model's, with the optax
optimizer blox's step uses too.

Example:
  >>> import jax.numpy as jnp
  >>> arch = Architecture(num_heads=2, num_kv_heads=1, head_dim=4, norm_epsilon=1e-6,
  ...                     rope_base=10_000.0, tie_embeddings=True)
  >>> rotated = rope(jnp.ones((1, 3, 1, 4)), jnp.arange(3), arch.rope_base)
  >>> rotated.shape, bool(jnp.allclose(rotated[0, 0], 1.0))  # position 0 is not rotated
  ((1, 3, 1, 4), True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "LAYER_PARAMS", "Architecture", "State", "Weights", "forward", "next_token_loss", "rope",
    "train_step", "weights_from",
]

# 'embedding', 'final_norm', 'head' (absent when tied), 'layers': {name: [num_layers, ...]}.
Weights = dict[str, Any]
# A train step's (params or weights, optimizer state, loss).
State = tuple[Any, optax.OptState, jax.Array]

# The per-layer weights: the name in `Weights['layers']` and the path below
# `layers/layer` in the blox params.
LAYER_PARAMS = {
    "attention_norm": ("attention_norm", "scale"),
    "query": ("attention", "query", "kernel"),  # [hidden, heads, head_dim]
    "key": ("attention", "key", "kernel"),  # [hidden, kv_heads, head_dim]
    "value": ("attention", "value", "kernel"),
    "out": ("attention", "out", "kernel"),  # [heads, head_dim, hidden]
    "mlp_norm": ("mlp_norm", "scale"),
    "gate": ("mlp", "gate", "kernel"),  # [hidden, intermediate]
    "up": ("mlp", "up", "kernel"),
    "down": ("mlp", "down", "kernel"),  # [intermediate, hidden]
}


class Architecture(NamedTuple):
  """The numbers of a Llama that the weights' shapes do not say."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  norm_epsilon: float
  rope_base: float
  tie_embeddings: bool


def weights_from(params: Any, root: tuple[str, ...] = ("model", "lm")) -> Weights:
  """Fresh copies of the weights of a Llama `CausalLM`'s params (under `root`).

  Copies, not the same buffers: each side of a benchmark donates its own.
  They go through the host and back to each param's devices (the copies
  are then committed there, as the params are, so that a jitted step
  compiles once; and no copy kernel is compiled per shape).
  """

  def value(*below: str) -> jax.Array:
    array = params[(*root, *below)].value
    copied: jax.Array = jax.device_put(np.array(array), array.sharding)
    return copied

  weights: Weights = {
      "embedding": value("embed", "embedding"),
      "final_norm": value("final_norm", "scale"),
      "layers": {name: value("layers", "layer", *below) for name, below in LAYER_PARAMS.items()},
  }
  if (*root, "head", "kernel") in params:
    weights["head"] = value("head", "kernel")
  return weights


def rms_norm(x: jax.Array, scale: jax.Array, epsilon: float) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon) * scale


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary embeddings of `x [batch, length, heads, head_dim]` at `positions [length]`."""
  half = x.shape[-1] // 2
  frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None, None] * frequencies  # [length, 1, half]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  first, second = x[..., :half], x[..., half:]
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention: q `[b, t, heads, d]`, k/v `[b, s, kv_heads, d]`, mask `[t, s]`."""
  b, t, heads, d = q.shape
  kv_heads = k.shape[2]
  grouped = q.reshape(b, t, kv_heads, heads // kv_heads, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", grouped, k) * (1.0 / d**0.5)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)  # type: ignore[no-untyped-call]
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(b, t, heads, d)


def forward(weights: Weights, ids: jax.Array, arch: Architecture) -> jax.Array:
  """Logits `[batch, length, vocab]` (float32) for token ids `[batch, length]`, causal."""
  x = weights["embedding"][ids]
  length = ids.shape[1]
  positions = jnp.arange(length)
  causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
  eps = arch.norm_epsilon

  def layer(x: jax.Array, w: Weights) -> tuple[jax.Array, None]:
    h = rms_norm(x, w["attention_norm"], eps)
    q = rope(jnp.einsum("btf,fhd->bthd", h, w["query"]), positions, arch.rope_base)
    k = rope(jnp.einsum("btf,fhd->bthd", h, w["key"]), positions, arch.rope_base)
    v = jnp.einsum("btf,fhd->bthd", h, w["value"])
    x = x + jnp.einsum("bthd,hdf->btf", attend(q, k, v, causal), w["out"])
    h = rms_norm(x, w["mlp_norm"], eps)
    hidden = jax.nn.silu(jnp.dot(h, w["gate"])) * jnp.dot(h, w["up"])
    return x + jnp.dot(hidden, w["down"]), None

  x, _ = jax.lax.scan(layer, x, weights["layers"])
  x = rms_norm(x, weights["final_norm"], eps)
  if arch.tie_embeddings:
    return jnp.dot(x, weights["embedding"].T)
  return jnp.dot(x, weights["head"])


def next_token_loss(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """The mean cross-entropy of each position's logits against the next token."""
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1))


def train_step(
    arch: Architecture, optimizer: optax.GradientTransformation
) -> Callable[[Weights, optax.OptState, jax.Array], State]:
  """The step `(weights, opt_state, ids) -> (weights, opt_state, loss)`."""

  def loss_fn(weights: Weights, ids: jax.Array) -> jax.Array:
    return next_token_loss(forward(weights, ids, arch), ids)

  def step(weights: Weights, opt_state: optax.OptState, ids: jax.Array) -> State:
    loss, grads = jax.value_and_grad(loss_fn)(weights, ids)
    updates, opt_state = optimizer.update(grads, opt_state, weights)
    return optax.apply_updates(weights, updates), opt_state, loss

  return step
