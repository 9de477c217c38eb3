"""Greedy generation from a Llama, hand-written in plain JAX: the baseline of benchmarks/generation.py.

The model is benchmarks/models_reference.py's (the same weights dict,
`rms_norm`, `rope`, `attend`), decoded the way a JAX programmer would write
it for prompts of one length:

- one jitted program: a prefill over the prompts, then a `lax.fori_loop` of
  decode steps, each the layers' `lax.scan`;
- the key/value cache is two arrays `[layers, batch, max_length, kv_heads,
  head_dim]`, scanned over with the layer weights, each step writing its key
  and value with one `lax.dynamic_update_slice` at a scalar position (every
  row is at the same position: the prompts have one length);
- a step attends over the whole cache behind the mask `arange(max_length)
  <= position`; the prefill attends over the prompt's own keys (causal) and
  computes the logits of the last position only;
- the next token is the argmax of the logits (greedy, float32).

`empty_cache`, `prefill` and `decode_step` are the pieces of `generate`
(benchmarks/generation.py counts the primitives of one decode step with
them). Nothing here calls blox.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from benchmarks.models_reference import Architecture
  >>> arch = Architecture(num_heads=2, num_kv_heads=1, head_dim=4, norm_epsilon=1e-6,
  ...                     rope_base=10_000.0, tie_embeddings=True)
  >>> shapes = {'attention_norm': (8,), 'query': (8, 2, 4), 'key': (8, 1, 4),
  ...           'value': (8, 1, 4), 'out': (2, 4, 8), 'mlp_norm': (8,), 'gate': (8, 16),
  ...           'up': (8, 16), 'down': (16, 8)}
  >>> weights = {'embedding': jnp.ones((32, 8)), 'final_norm': jnp.ones(8),
  ...            'layers': {n: jnp.full((1, *s), 0.1) for n, s in shapes.items()}}
  >>> generate(weights, jnp.array([[1, 2, 3]]), arch, max_new_tokens=4).shape
  (1, 4)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from benchmarks.models_reference import Architecture, Weights, attend, rms_norm, rope

__all__ = ["Cache", "decode_step", "empty_cache", "generate", "prefill"]

# Keys and values of every layer: `[layers, batch, max_length, kv_heads, head_dim]` each.
Cache = tuple[jax.Array, jax.Array]


def _logits(weights: Weights, x: jax.Array, arch: Architecture) -> jax.Array:
  """The logits `[batch, vocab]` of the last hidden states `x [batch, hidden]`."""
  x = rms_norm(x, weights["final_norm"], arch.norm_epsilon)
  head = weights["embedding"].T if arch.tie_embeddings else weights["head"]
  return jnp.dot(x, head)


def _mlp(x: jax.Array, w: Weights, arch: Architecture) -> jax.Array:
  h = rms_norm(x, w["mlp_norm"], arch.norm_epsilon)
  return x + jnp.dot(jax.nn.silu(jnp.dot(h, w["gate"])) * jnp.dot(h, w["up"]), w["down"])


def _layers(
    weights: Weights, x: jax.Array, cache: Cache, position: jax.Array, arch: Architecture,
    *, prefill: bool,
) -> tuple[jax.Array, Cache]:
  """`x [batch, length, hidden]` at positions `position ...` through every layer.

  Writes the new keys and values into the cache at `position`. The prefill
  (position 0) attends over its own keys causally; a decode step (length 1)
  over the cache up to itself.
  """
  length, max_length = x.shape[1], cache[0].shape[2]
  positions = position + jnp.arange(length)
  if prefill:
    mask = jnp.tril(jnp.ones((length, length), jnp.bool_))
  else:
    mask = (jnp.arange(max_length) <= position)[None, :]
  eps = arch.norm_epsilon

  def layer(x: jax.Array, inputs: tuple[Weights, jax.Array, jax.Array]) -> tuple[jax.Array, Cache]:
    w, keys, values = inputs
    h = rms_norm(x, w["attention_norm"], eps)
    q = rope(jnp.einsum("btf,fhd->bthd", h, w["query"]), positions, arch.rope_base)
    k = rope(jnp.einsum("btf,fhd->bthd", h, w["key"]), positions, arch.rope_base)
    v = jnp.einsum("btf,fhd->bthd", h, w["value"])
    start = (0, position, 0, 0)
    keys = jax.lax.dynamic_update_slice(keys, k, start)
    values = jax.lax.dynamic_update_slice(values, v, start)
    attended = attend(q, k, v, mask) if prefill else attend(q, keys, values, mask)
    x = x + jnp.einsum("bthd,hdf->btf", attended, w["out"])
    return _mlp(x, w, arch), (keys, values)

  x, cache = jax.lax.scan(layer, x, (weights["layers"], *cache))
  return x, cache


def empty_cache(weights: Weights, batch: int, max_length: int, arch: Architecture) -> Cache:
  """Zero keys and values for `max_length` positions of `batch` rows, every layer."""
  num_layers = weights["layers"]["key"].shape[0]
  shape = (num_layers, batch, max_length, arch.num_kv_heads, arch.head_dim)
  return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)


def prefill(
    weights: Weights, prompts: jax.Array, cache: Cache, arch: Architecture
) -> tuple[jax.Array, Cache]:
  """The logits `[batch, vocab]` after `prompts [batch, length]` (its last position only),
  and the cache holding the prompts' keys and values from position 0 on."""
  x, cache = _layers(weights, weights["embedding"][prompts], cache, jnp.int32(0), arch,
                     prefill=True)
  return _logits(weights, x[:, -1], arch), cache


def decode_step(
    weights: Weights, token: jax.Array, cache: Cache, position: jax.Array, arch: Architecture
) -> tuple[jax.Array, Cache]:
  """The logits `[batch, vocab]` after one token per row `[batch]` at `position` (a
  scalar: every row is at the same place), and the cache holding its key and value."""
  x, cache = _layers(weights, weights["embedding"][token][:, None], cache, position, arch,
                     prefill=False)
  return _logits(weights, x[:, 0], arch), cache


@functools.partial(jax.jit, static_argnames=("arch", "max_new_tokens"))
def generate(
    weights: Weights, prompts: jax.Array, arch: Architecture, *, max_new_tokens: int
) -> jax.Array:
  """`max_new_tokens` greedy tokens after `prompts [batch, length]`: int32 `[batch, max_new_tokens]`."""
  batch, length = prompts.shape
  logits, cache = prefill(
      weights, prompts, empty_cache(weights, batch, length + max_new_tokens, arch), arch)
  first = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  tokens = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(first)

  def step(i: jax.Array, state: tuple[jax.Array, Cache, jax.Array]) -> tuple[jax.Array, Cache,
                                                                              jax.Array]:
    token, cache, tokens = state
    # New token `i - 1` sits right after the prompt and the new tokens before it.
    logits, cache = decode_step(weights, token, cache, length + i - 1, arch)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return token, cache, jax.lax.dynamic_update_index_in_dim(tokens, token, i, axis=1)

  final: tuple[jax.Array, Cache, jax.Array] = jax.lax.fori_loop(
      1, max_new_tokens, step, (first, cache, tokens))
  return final[2]
