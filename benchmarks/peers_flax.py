"""The peers benchmark's models in Flax NNX, written the way its guides write them.

- Modules are `nnx.Module`s built eagerly with `nnx.Rngs`; layers are
  `nnx.Linear`, `nnx.LinearGeneral` (the attention projections, kernels
  `[features, heads, head_dim]` like blox's), `nnx.RMSNorm` and `nnx.Embed`
  (whose `attend` is the weight-tied readout). Mixed precision is each
  layer's `dtype=bfloat16, param_dtype=float32`.
- The blocks are stacked as in the NNX "scan over layers" guide: created by
  `nnx.vmap` under `nnx.split_rngs`, applied by `nnx.scan`.
- `nnx.MultiHeadAttention` has neither grouped-query heads nor rotary
  embeddings, so the attention is built from `nnx.LinearGeneral`
  projections around the shared `causal_attention`.
- Cached decoding keeps `nnx.Cache` variables on the attention, as
  `nnx.MultiHeadAttention(decode=True)` does, stacked like the layers.
- The train step is the "functional training loop" of Flax's performance
  guide (its fast path): `graphdef, state = nnx.split(model)` once, then a
  `jax.jit` step that `nnx.merge`s, takes `nnx.value_and_grad` and returns
  `nnx.state`. The MLP is also timed under `nnx.jit` (the default style,
  which walks the object graph in Python on every call).
- Init is eager construction, `LanguageModel(..., rngs=nnx.Rngs(0))`, as the
  guides do it; jitted, it is `nnx.jit` of the constructor.

Example:
  >>> import jax.numpy as jnp
  >>> model = MLP(2, 4, rngs=nnx.Rngs(0))
  >>> model(jnp.ones((3, 4))).shape
  (3, 4)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.peers_common import (
    COMPUTE,
    EPSILON,
    Trainer,
    attend,
    causal_attention,
    count_values,
    cross_entropy,
    head_dim,
    rope,
    sgd,
)
from benchmarks import lm

__all__ = ["MLP", "LanguageModel", "decoder", "init", "mlp", "mlp_nnx_jit", "transformer"]

NAME = "Flax NNX"


class MLP(nnx.Module):
  """`depth` `nnx.Linear` layers of `width` units, tanh in between."""

  def __init__(self, depth: int, width: int, *, rngs: nnx.Rngs) -> None:
    self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])

  def __call__(self, x: jax.Array) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i + 1 < len(self.layers):
        x = jnp.tanh(x)
    return x


def _functional_step(graphdef: Any, loss_fn: Any) -> Any:
  """The performance guide's step: merge, `nnx.value_and_grad`, SGD, split back."""

  def step(state: Any, *batch: jax.Array) -> tuple[Any, jax.Array]:
    model = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn)(model, *batch)
    nnx.update(model, sgd(nnx.state(model, nnx.Param), grads))
    return nnx.state(model), loss

  return step


def _trainer(model: nnx.Module, loss_fn: Any, batch: tuple[jax.Array, ...], note: str) -> Trainer:
  graphdef, state = nnx.split(model)
  jitted = jax.jit(_functional_step(graphdef, loss_fn), donate_argnums=0)

  def carry(state: Any, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = jitted(state, *batch)
    return result

  def compile_fresh() -> None:
    fresh = _functional_step(graphdef, loss_fn)
    jax.jit(lambda *a: fresh(*a)).trace(state, *batch).lower().compile()

  return Trainer(
      carry, (state, jnp.zeros(())), count_values(nnx.state(model, nnx.Param)), compile_fresh,
      note,
  )


def _mlp_loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean((model(x) - y) ** 2)


def mlp(depth: int, width: int, x: jax.Array, y: jax.Array) -> Trainer:
  """The MLP's SGD step, split/merge around `jax.jit` (the performance guide's fast path)."""
  model = MLP(depth, width, rngs=nnx.Rngs(0))
  return _trainer(model, _mlp_loss, (x, y), "nnx.split/merge + jax.jit")


def mlp_nnx_jit(depth: int, width: int, x: jax.Array, y: jax.Array) -> Trainer:
  """The MLP's SGD step under `nnx.jit`, the model mutated in place (NNX's default style)."""
  model = MLP(depth, width, rngs=nnx.Rngs(0))

  def step(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    loss: jax.Array
    loss, grads = nnx.value_and_grad(_mlp_loss)(model, x, y)
    nnx.update(model, sgd(nnx.state(model, nnx.Param), grads))
    return loss

  jitted = nnx.jit(step)

  def carry(model: MLP, _: Any) -> tuple[Any, ...]:
    return model, jitted(model, x, y)

  def compile_fresh() -> None:
    nnx.jit(lambda *a: step(*a)).trace(model, x, y).lower().compile()

  return Trainer(
      carry, (model, jnp.zeros(())), count_values(nnx.state(model, nnx.Param)), compile_fresh,
      "nnx.jit + nnx.value_and_grad",
  )


class Attention(nnx.Module):
  """Grouped-query attention with rotary positions, from `nnx.LinearGeneral` projections."""

  def __init__(self, sizes: lm.Sizes, *, rngs: nnx.Rngs) -> None:
    features, heads, kv_heads = sizes.features, sizes.num_heads, sizes.num_kv_heads
    d = head_dim(features, heads)

    def project(inputs: Any, outputs: Any, axis: Any = -1) -> nnx.LinearGeneral:
      return nnx.LinearGeneral(
          inputs, outputs, axis=axis, use_bias=False, dtype=COMPUTE, param_dtype=jnp.float32,
          rngs=rngs,
      )

    self.query = project(features, (heads, d))
    self.key = project(features, (kv_heads, d))
    self.value = project(features, (kv_heads, d))
    self.out = project((heads, d), features, axis=(-2, -1))
    self.rope_base = sizes.rope_base
    # Filled by `LanguageModel.init_cache`, as nnx.MultiHeadAttention's `init_cache` does.
    self.cached_key: nnx.Cache | None = nnx.data(None)
    self.cached_value: nnx.Cache | None = nnx.data(None)
    self.cache_index: nnx.Cache | None = nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    attended = causal_attention(self.query(x), self.key(x), self.value(x), self.rope_base)
    out: jax.Array = self.out(attended)
    return out

  def decode(self, x: jax.Array) -> jax.Array:
    """One token per row, `x [batch, 1, features]`, written into the cache at its index."""
    if self.cached_key is None or self.cached_value is None or self.cache_index is None:
      raise ValueError("Attention.decode: no cache; call LanguageModel.init_cache first.")
    index = self.cache_index[...]
    positions = index[None]
    q = rope(self.query(x), positions, self.rope_base)
    k = rope(self.key(x), positions, self.rope_base)
    start = (0, index, 0, 0)
    keys = jax.lax.dynamic_update_slice(self.cached_key[...], k.astype(COMPUTE), start)
    values = jax.lax.dynamic_update_slice(
        self.cached_value[...], self.value(x).astype(COMPUTE), start
    )
    self.cached_key[...], self.cached_value[...] = keys, values
    self.cache_index[...] = index + 1
    visible = (jnp.arange(keys.shape[1]) <= index)[None, :]
    out: jax.Array = self.out(attend(q, keys, values, visible))
    return out


class Block(nnx.Module):
  """The example's pre-norm block: attention, then a gated MLP, each around a residual."""

  def __init__(self, sizes: lm.Sizes, *, rngs: nnx.Rngs) -> None:
    def norm() -> nnx.RMSNorm:
      return nnx.RMSNorm(sizes.features, epsilon=EPSILON, dtype=COMPUTE, rngs=rngs)

    def dense(inputs: int, outputs: int) -> nnx.Linear:
      return nnx.Linear(
          inputs, outputs, use_bias=False, dtype=COMPUTE, param_dtype=jnp.float32, rngs=rngs
      )

    self.attention_norm = norm()
    self.attention = Attention(sizes, rngs=rngs)
    self.mlp_norm = norm()
    self.gate = dense(sizes.features, sizes.mlp_size)
    self.up = dense(sizes.features, sizes.mlp_size)
    self.down = dense(sizes.mlp_size, sizes.features)

  def __call__(self, x: jax.Array, decode: bool = False) -> jax.Array:
    attention = self.attention.decode if decode else self.attention
    x = x + attention(self.attention_norm(x))
    h = self.mlp_norm(x)
    out: jax.Array = x + self.down(jax.nn.silu(self.gate(h)) * self.up(h))
    return out


class LanguageModel(nnx.Module):
  """Embed -> blocks (`nnx.vmap` to create, `nnx.scan` to apply) -> RMSNorm -> tied readout."""

  def __init__(self, sizes: lm.Sizes, vocab_size: int, *, rngs: nnx.Rngs) -> None:
    self.embed = nnx.Embed(
        vocab_size, sizes.features, dtype=COMPUTE, param_dtype=jnp.float32, rngs=rngs
    )

    @nnx.split_rngs(splits=sizes.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create_block(rngs: nnx.Rngs) -> Block:
      return Block(sizes, rngs=rngs)

    self.blocks = create_block(rngs)
    self.final_norm = nnx.RMSNorm(sizes.features, epsilon=EPSILON, dtype=COMPUTE, rngs=rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x: jax.Array, block: Block) -> jax.Array:
      return block(x)

    x = forward(self.embed(ids), self.blocks)
    scores: jax.Array = self.embed.attend(self.final_norm(x))
    return scores

  def init_cache(self, batch: int, max_length: int) -> None:
    """Empty key/value caches for every layer, stacked like the layers' params."""
    attention = self.blocks.attention
    num_layers, _, kv_heads, d = attention.key.kernel.shape
    shape = (num_layers, batch, max_length, kv_heads, d)
    attention.cached_key = nnx.Cache(jnp.zeros(shape, COMPUTE))
    attention.cached_value = nnx.Cache(jnp.zeros(shape, COMPUTE))
    attention.cache_index = nnx.Cache(jnp.zeros((num_layers,), jnp.int32))

  def decode(self, token: jax.Array) -> jax.Array:
    """Scores `[batch, vocab]` for one token per row `[batch]`, through the caches."""
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x: jax.Array, block: Block) -> jax.Array:
      return block(x, decode=True)

    x = forward(self.embed(token)[:, None], self.blocks)
    scores: jax.Array = self.embed.attend(self.final_norm(x[:, 0]))
    return scores


def _lm_loss(model: LanguageModel, ids: jax.Array, targets: jax.Array) -> jax.Array:
  return cross_entropy(model(ids), targets)


def transformer(sizes: lm.Sizes, vocab_size: int, ids: jax.Array, targets: jax.Array) -> Trainer:
  """The example transformer's SGD step, split/merge around `jax.jit`."""
  model = LanguageModel(sizes, vocab_size, rngs=nnx.Rngs(0))
  return _trainer(model, _lm_loss, (ids, targets), "nnx.split/merge + jax.jit")


def init(sizes: lm.Sizes, vocab_size: int, jitted: bool) -> Any:
  """The model's params, created eagerly (the guides' way) or under `nnx.jit`."""

  def create() -> LanguageModel:
    return LanguageModel(sizes, vocab_size, rngs=nnx.Rngs(0))

  model = nnx.jit(create)() if jitted else create()
  return nnx.state(model, nnx.Param)


def decoder(
    sizes: lm.Sizes, vocab_size: int, tokens: jax.Array
) -> tuple[Any, tuple[Any, ...], int]:
  """Cached decoding of `tokens [tokens per call, batch]`, in benchmarks/transformer.py's form.

  Each call decodes the given tokens into the empty caches (teacher forcing,
  one `lax.scan` of `decode` steps, split/merge around each) and returns
  the greedy choices, which the next call is fed. Returns the carried step,
  its first state and the parameter count.
  """
  model = LanguageModel(sizes, vocab_size, rngs=nnx.Rngs(0))
  model.init_cache(tokens.shape[1], tokens.shape[0])
  graphdef, state = nnx.split(model)

  @jax.jit
  def decode(state: Any, forced: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
    def one(state: Any, token: jax.Array) -> tuple[Any, jax.Array]:
      model = nnx.merge(graphdef, state)
      scores = model.decode(token)
      return nnx.state(model), scores

    _, scores = jax.lax.scan(one, state, forced)
    return state, jnp.argmax(scores, axis=-1), scores

  def carry(state: Any, forced: jax.Array, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = decode(state, forced)
    return result

  return carry, (state, tokens, None), count_values(nnx.state(model, nnx.Param))
