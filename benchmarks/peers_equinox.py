"""The peers benchmark's models in Equinox, written the way its docs write them.

- Modules are `eqx.Module`s (immutable pytrees) built eagerly from a PRNG
  key; they act on one example, and the loss `jax.vmap`s them over the
  batch (and `eqx.nn.Linear`/`eqx.nn.RMSNorm` over the tokens). Layers are
  `eqx.nn.Linear`, `eqx.nn.RMSNorm` (statistics in float32) and
  `eqx.nn.Embedding`, whose table is also the weight-tied readout.
- `eqx.nn.MultiheadAttention` has no grouped-query heads (its key and value
  projections have `num_heads` heads), so the attention is built from
  `eqx.nn.Linear` projections around the shared `causal_attention`; the
  projections are `features -> heads * head_dim`, the same values as
  blox's `[features, heads, head_dim]` kernels.
- Equinox has no mixed-precision policy: the loss casts the model's float
  arrays to bfloat16 (`eqx.is_inexact_array`), so the params stay float32
  and every product runs in bfloat16, as in the example.
- The blocks are stacked as Equinox's docs recommend for compile time:
  created by `eqx.filter_vmap` over split keys, applied by `jax.lax.scan`
  over their arrays (`eqx.partition` / `eqx.combine`).
- The step is `eqx.filter_jit` around `eqx.filter_value_and_grad`,
  donating the model (`donate='all-except-first'`, the batch first).

Example:
  >>> import jax.numpy as jnp
  >>> model = MLP(2, 4, key=jax.random.key(0))
  >>> model(jnp.ones(4)).shape
  (4,)
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from benchmarks.peers_common import (
    COMPUTE,
    EPSILON,
    Trainer,
    causal_attention,
    count_values,
    cross_entropy,
    head_dim,
    sgd,
)
from benchmarks import lm

__all__ = ["MLP", "LanguageModel", "init", "mlp", "transformer"]

NAME = "Equinox"


class MLP(eqx.Module):
  """`depth` `eqx.nn.Linear` layers of `width` units, tanh in between; one example."""

  layers: list[eqx.nn.Linear]

  def __init__(self, depth: int, width: int, *, key: jax.Array) -> None:
    self.layers = [eqx.nn.Linear(width, width, key=k) for k in jax.random.split(key, depth)]

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i + 1 < len(self.layers):
        x = jnp.tanh(x)
    return x


def _trainer(model: Any, loss_fn: Any, batch: tuple[jax.Array, ...]) -> Trainer:
  def step(batch: tuple[jax.Array, ...], model: Any) -> tuple[Any, jax.Array]:
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, *batch)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return eqx.combine(sgd(params, grads), static), loss

  jitted = eqx.filter_jit(step, donate="all-except-first")

  def carry(model: Any, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = jitted(batch, model)
    return result

  def compile_fresh() -> None:
    eqx.filter_jit(lambda *a: step(*a)).lower(batch, model).compile()

  params = eqx.filter(model, eqx.is_inexact_array)
  return Trainer(
      carry, (model, jnp.zeros(())), count_values(params), compile_fresh,
      "eqx.filter_jit + eqx.filter_value_and_grad",
  )


def _mlp_loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def mlp(depth: int, width: int, x: jax.Array, y: jax.Array) -> Trainer:
  """The MLP's SGD step."""
  return _trainer(MLP(depth, width, key=jax.random.key(0)), _mlp_loss, (x, y))


class Attention(eqx.Module):
  """Grouped-query attention with rotary positions over one sequence `[length, features]`."""

  query: eqx.nn.Linear
  key: eqx.nn.Linear
  value: eqx.nn.Linear
  out: eqx.nn.Linear
  num_heads: int = eqx.field(static=True)
  num_kv_heads: int = eqx.field(static=True)
  rope_base: float = eqx.field(static=True)

  def __init__(self, sizes: lm.Sizes, *, key: jax.Array) -> None:
    features, heads, kv_heads = sizes.features, sizes.num_heads, sizes.num_kv_heads
    d = head_dim(features, heads)
    q, k, v, o = jax.random.split(key, 4)
    self.query = eqx.nn.Linear(features, heads * d, use_bias=False, key=q)
    self.key = eqx.nn.Linear(features, kv_heads * d, use_bias=False, key=k)
    self.value = eqx.nn.Linear(features, kv_heads * d, use_bias=False, key=v)
    self.out = eqx.nn.Linear(heads * d, features, use_bias=False, key=o)
    self.num_heads, self.num_kv_heads, self.rope_base = heads, kv_heads, sizes.rope_base

  def __call__(self, x: jax.Array) -> jax.Array:
    length = x.shape[0]

    def heads(layer: eqx.nn.Linear, count: int) -> jax.Array:
      projected: jax.Array = jax.vmap(layer)(x)
      return projected.reshape(1, length, count, -1)  # one sequence as a batch of 1

    attended = causal_attention(
        heads(self.query, self.num_heads), heads(self.key, self.num_kv_heads),
        heads(self.value, self.num_kv_heads), self.rope_base,
    )
    out: jax.Array = jax.vmap(self.out)(attended.reshape(length, -1))
    return out


class Block(eqx.Module):
  """The example's pre-norm block: attention, then a gated MLP, each around a residual."""

  attention_norm: eqx.nn.RMSNorm
  attention: Attention
  mlp_norm: eqx.nn.RMSNorm
  gate: eqx.nn.Linear
  up: eqx.nn.Linear
  down: eqx.nn.Linear

  def __init__(self, sizes: lm.Sizes, *, key: jax.Array) -> None:
    a, g, u, d = jax.random.split(key, 4)
    features, hidden = sizes.features, sizes.mlp_size
    self.attention_norm = eqx.nn.RMSNorm(features, eps=EPSILON, use_bias=False)
    self.attention = Attention(sizes, key=a)
    self.mlp_norm = eqx.nn.RMSNorm(features, eps=EPSILON, use_bias=False)
    self.gate = eqx.nn.Linear(features, hidden, use_bias=False, key=g)
    self.up = eqx.nn.Linear(features, hidden, use_bias=False, key=u)
    self.down = eqx.nn.Linear(hidden, features, use_bias=False, key=d)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(jax.vmap(self.attention_norm)(x))
    h = jax.vmap(self.mlp_norm)(x)
    hidden = jax.nn.silu(jax.vmap(self.gate)(h)) * jax.vmap(self.up)(h)
    out: jax.Array = x + jax.vmap(self.down)(hidden)
    return out


class LanguageModel(eqx.Module):
  """Embed -> blocks (`filter_vmap` to create, `lax.scan` to apply) -> RMSNorm -> tied readout."""

  embed: eqx.nn.Embedding
  blocks: Block  # every array with a leading layer axis
  final_norm: eqx.nn.RMSNorm

  def __init__(self, sizes: lm.Sizes, vocab_size: int, *, key: jax.Array) -> None:
    embed_key, blocks_key = jax.random.split(key)
    self.embed = eqx.nn.Embedding(vocab_size, sizes.features, key=embed_key)
    make_block = lambda k: Block(sizes, key=k)  # noqa: E731
    self.blocks = eqx.filter_vmap(make_block)(jax.random.split(blocks_key, sizes.num_layers))
    self.final_norm = eqx.nn.RMSNorm(sizes.features, eps=EPSILON, use_bias=False)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Scores `[length, vocab]` for one sequence of ids `[length]`."""
    arrays, static = eqx.partition(self.blocks, eqx.is_array)

    def layer(x: jax.Array, block_arrays: Any) -> tuple[jax.Array, None]:
      return eqx.combine(block_arrays, static)(x), None

    x, _ = jax.lax.scan(layer, jax.vmap(self.embed)(ids), arrays)
    x = jax.vmap(self.final_norm)(x)
    scores: jax.Array = x @ self.embed.weight.T
    return scores


def _in_compute_dtype(model: Any) -> Any:
  return jax.tree.map(lambda a: a.astype(COMPUTE) if eqx.is_inexact_array(a) else a, model)


def _lm_loss(model: LanguageModel, ids: jax.Array, targets: jax.Array) -> jax.Array:
  return cross_entropy(jax.vmap(_in_compute_dtype(model))(ids), targets)


def transformer(sizes: lm.Sizes, vocab_size: int, ids: jax.Array, targets: jax.Array) -> Trainer:
  """The example transformer's SGD step."""
  model = LanguageModel(sizes, vocab_size, key=jax.random.key(0))
  return _trainer(model, _lm_loss, (ids, targets))


def init(sizes: lm.Sizes, vocab_size: int, jitted: bool) -> Any:
  """The model, created eagerly (the docs' way) or under `eqx.filter_jit`."""

  def create() -> LanguageModel:
    return LanguageModel(sizes, vocab_size, key=jax.random.key(0))

  return eqx.filter_jit(create)() if jitted else create()
