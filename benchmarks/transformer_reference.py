"""The benchmarks' transformer (benchmarks/lm.py) hand-written in plain JAX.

Pure functions over a dict of arrays: the per-layer weights are stacked on a
leading layer axis and the layers run in one `jax.lax.scan`; decoding keeps
one key/value cache array per layer (stacked too), written with
`jax.lax.dynamic_update_slice`. The math and the dtypes are the example's:
float32 weights cast to bfloat16 for every product, norm statistics and
softmax in float32, rotary embeddings on queries and keys (the two halves of
each head rotated against each other), grouped-query attention with query
head `n` reading key/value head `n // (num_heads // num_kv_heads)`.

`weights_from(params, ...)` copies the weights out of the blox params, so
both sides compute the same function of the same numbers.

Example:
  >>> import jax.numpy as jnp
  >>> rotated = rope(jnp.ones((1, 3, 1, 4)), jnp.arange(3), 10_000.0)
  >>> rotated.shape, bool(jnp.allclose(rotated[0, 0], 1.0))  # position 0 is not rotated
  ((1, 3, 1, 4), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["decode", "forward", "init", "loss", "rope", "weights_from"]

Weights = dict[str, Any]  # 'embedding', 'final_norm', 'layers': {name: [num_layers, ...]}
COMPUTE = jnp.bfloat16
EPSILON = 1e-5
# The per-layer weights: the name in `Weights['layers']` and the path below
# the block in the blox params.
LAYER_PARAMS = {
    "attention_norm": ("attention_norm", "scale"),
    "query": ("attention", "query", "kernel"),
    "key": ("attention", "key", "kernel"),
    "value": ("attention", "value", "kernel"),
    "out": ("attention", "out", "kernel"),
    "mlp_norm": ("mlp_norm", "scale"),
    "gate": ("gate", "kernel"),
    "up": ("up", "kernel"),
    "down": ("down", "kernel"),
}


def weights_from(params: Any, model_path: tuple[str, ...], block_paths: Sequence[tuple[str, ...]],
                 *, stacked: bool) -> Weights:
  """Fresh copies of the weights in the blox `params` of the example's model.

  With `stacked`, `block_paths` is the one path of a `bx.Repeat`'s layer
  (its params already stacked); otherwise one path per block of an unrolled
  model, stacked here.
  """

  def value(path: tuple[str, ...]) -> jax.Array:
    return jnp.array(params[path].value)

  def layer_weight(below: tuple[str, ...]) -> jax.Array:
    if stacked:
      (block,) = block_paths
      return value((*block, *below))
    return jnp.stack([value((*block, *below)) for block in block_paths])

  return {
      "embedding": value((*model_path, "embed", "embedding")),
      "final_norm": value((*model_path, "final_norm", "scale")),
      "layers": {name: layer_weight(below) for name, below in LAYER_PARAMS.items()},
  }


def rms_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + EPSILON)
  return (normed * scale).astype(COMPUTE)


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary embeddings of `x [batch, length, heads, head_dim]` at `positions [length]`."""
  half = x.shape[-1] // 2
  frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * frequencies  # [..., length, half]
  cos, sin = jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]
  first, second = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention: q `[b, t, heads, d]`, k/v `[b, s, kv_heads, d]`, mask `[t, s]`."""
  b, t, heads, d = q.shape
  kv_heads = k.shape[2]
  grouped = q.reshape(b, t, kv_heads, heads // kv_heads, d)
  logits = jnp.einsum(
      "btkgd,bskd->bkgts", grouped, k, preferred_element_type=jnp.float32
  ) * (1.0 / d**0.5)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)  # type: ignore[no-untyped-call]
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", weights, v)
  return out.reshape(b, t, heads, d)


def _project(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jnp.einsum("btf,fhd->bthd", x, kernel.astype(COMPUTE))


def _mlp(x: jax.Array, layer: Weights) -> jax.Array:
  h = rms_norm(x, layer["mlp_norm"])
  gate = jnp.dot(h, layer["gate"].astype(COMPUTE))
  up = jnp.dot(h, layer["up"].astype(COMPUTE))
  return x + jnp.dot(jax.nn.silu(gate) * up, layer["down"].astype(COMPUTE))


def _scores(weights: Weights, x: jax.Array) -> jax.Array:
  x = rms_norm(x, weights["final_norm"])
  return jnp.dot(x, weights["embedding"].astype(COMPUTE).T)


def forward(weights: Weights, ids: jax.Array, rope_base: float) -> jax.Array:
  """Scores `[batch, length, vocab]` for ids `[batch, length]`, causal."""
  x = weights["embedding"].astype(COMPUTE)[ids]
  length = ids.shape[1]
  positions = jnp.arange(length)
  causal = jnp.tril(jnp.ones((length, length), jnp.bool_))

  def layer(x: jax.Array, w: Weights) -> tuple[jax.Array, None]:
    h = rms_norm(x, w["attention_norm"])
    q = rope(_project(h, w["query"]), positions, rope_base)
    k = rope(_project(h, w["key"]), positions, rope_base)
    v = _project(h, w["value"])
    attended = attend(q, k, v, causal)
    x = x + jnp.einsum("bthd,hdf->btf", attended, w["out"].astype(COMPUTE))
    return _mlp(x, w), None

  x, _ = jax.lax.scan(layer, x, weights["layers"])
  return _scores(weights, x)


def loss(weights: Weights, ids: jax.Array, targets: jax.Array, rope_base: float) -> jax.Array:
  """The mean next-token cross-entropy, in float32."""
  logits = forward(weights, ids, rope_base).astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))


Cache = tuple[jax.Array, jax.Array]  # keys, values: [num_layers, batch, max_length, kv_heads, d]


def empty_cache(weights: Weights, batch: int, max_length: int) -> Cache:
  num_layers, _, kv_heads, head_dim = weights["layers"]["key"].shape
  zeros = jnp.zeros((num_layers, batch, max_length, kv_heads, head_dim), COMPUTE)
  return zeros, zeros


def decode(
    weights: Weights, token: jax.Array, cache: Cache, position: jax.Array, rope_base: float
) -> tuple[jax.Array, Cache]:
  """Scores `[batch, vocab]` for one token per row `[batch]` at `position` (a scalar)."""
  x = weights["embedding"].astype(COMPUTE)[token][:, None]  # [batch, 1, features]
  max_length = cache[0].shape[2]
  positions = position[None]
  visible = (jnp.arange(max_length) <= position)[None, :]

  def layer(x: jax.Array, inputs: tuple[Weights, jax.Array, jax.Array]) -> tuple[Any, Any]:
    w, keys, values = inputs
    h = rms_norm(x, w["attention_norm"])
    q = rope(_project(h, w["query"]), positions, rope_base)
    k = rope(_project(h, w["key"]), positions, rope_base)
    v = _project(h, w["value"])
    start = (0, position, 0, 0)
    keys = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), start)
    values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), start)
    attended = attend(q, keys, values, visible)
    x = x + jnp.einsum("bthd,hdf->btf", attended, w["out"].astype(COMPUTE))
    return _mlp(x, w), (keys, values)

  x, cache = jax.lax.scan(layer, x, (weights["layers"], *cache))
  return _scores(weights, x[:, 0]), cache


def init(key: jax.Array, vocab_size: int, num_layers: int, features: int, num_heads: int,
         num_kv_heads: int, mlp_size: int) -> Weights:
  """Fresh weights of the example's shapes: normal, scaled by 1/sqrt(fan-in); norm scales 1."""
  d = features // num_heads
  shapes = {
      "query": (features, num_heads, d), "key": (features, num_kv_heads, d),
      "value": (features, num_kv_heads, d), "out": (num_heads, d, features),
      "gate": (features, mlp_size), "up": (features, mlp_size), "down": (mlp_size, features),
  }
  keys = jax.random.split(key, len(shapes) + 1)
  fan_in = {"out": num_heads * d, "down": mlp_size}
  layers = {
      name: jax.random.normal(k, (num_layers, *shape)) / fan_in.get(name, features) ** 0.5
      for k, (name, shape) in zip(keys[1:], shapes.items())
  }
  norms = {name: jnp.ones((num_layers, features)) for name in ("attention_norm", "mlp_norm")}
  return {
      "embedding": jax.random.normal(keys[0], (vocab_size, features)),
      "final_norm": jnp.ones((features,)),
      "layers": {**layers, **norms},
  }
