"""The peers benchmark's models in Haiku, written the way its docs write them.

- Models are functions of `hk.Module`s turned into pure `init`/`apply`
  pairs by `hk.transform` (`hk.without_apply_rng`: nothing is random after
  init); params are Haiku's nested dict. Layers are `hk.Linear`,
  `hk.RMSNorm` and `hk.Embed`, whose table is also the weight-tied readout.
- `hk.MultiHeadAttention` has neither grouped-query heads nor rotary
  embeddings, so the attention is an `hk.Module` of `hk.Linear` projections
  (`features -> heads * head_dim`, as `hk.MultiHeadAttention` projects)
  around the shared `causal_attention`.
- Mixed precision is Haiku's `hk.mixed_precision.set_policy` with a `jmp`
  policy (float32 params, bfloat16 compute) on the model's class, and a
  float32 policy on `hk.RMSNorm`, as Haiku's mixed-precision docs keep
  normalisation in full precision.
- The blocks are stacked with `hk.layer_stack` (one `lax.scan` over
  stacked params).
- The step is `jax.jit` of `jax.value_and_grad(apply)`, donating the
  params; init is `transformed.init(key, ids)`, eagerly as in Haiku's
  README, or under `jax.jit`.

Example:
  >>> import jax.numpy as jnp
  >>> net = mlp_transform(2)
  >>> params = net.init(jax.random.key(0), jnp.ones((3, 4)))
  >>> net.apply(params, jnp.ones((3, 4))).shape
  (3, 4)
"""

from __future__ import annotations

from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import jmp

from benchmarks.peers_common import (
    EPSILON,
    Trainer,
    causal_attention,
    count_values,
    cross_entropy,
    head_dim,
    sgd,
)
from benchmarks import lm

__all__ = ["init", "lm_transform", "mlp", "mlp_transform", "transformer"]

NAME = "Haiku"

MIXED = jmp.get_policy("params=float32,compute=bfloat16,output=bfloat16")
FULL = jmp.get_policy("params=float32,compute=float32,output=bfloat16")


def mlp_transform(depth: int) -> Any:
  """`depth` `hk.Linear` layers of the input's width, tanh in between."""

  def forward(x: jax.Array) -> jax.Array:
    for i in range(depth):
      x = hk.Linear(x.shape[-1], name=f"layer{i}")(x)
      if i + 1 < depth:
        x = jnp.tanh(x)
    return x

  return hk.without_apply_rng(hk.transform(forward))


def _trainer(transformed: Any, loss_fn: Any, batch: tuple[jax.Array, ...]) -> Trainer:
  params = transformed.init(jax.random.key(0), batch[0])

  def step(params: Any, *batch: jax.Array) -> tuple[Any, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    return sgd(params, grads), loss

  jitted = jax.jit(step, donate_argnums=0)

  def carry(params: Any, _: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = jitted(params, *batch)
    return result

  def compile_fresh() -> None:
    jax.jit(lambda *a: step(*a)).trace(params, *batch).lower().compile()

  return Trainer(
      carry, (params, jnp.zeros(())), count_values(params), compile_fresh,
      "hk.transform + jax.jit",
  )


def mlp(depth: int, width: int, x: jax.Array, y: jax.Array) -> Trainer:
  """The MLP's SGD step."""
  net = mlp_transform(depth)

  def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((net.apply(params, x) - y) ** 2)

  return _trainer(net, loss, (x, y))


class Attention(hk.Module):
  """Grouped-query attention with rotary positions, from `hk.Linear` projections."""

  def __init__(self, sizes: lm.Sizes, name: str | None = None) -> None:
    super().__init__(name=name)
    self.sizes = sizes

  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.sizes
    d = head_dim(s.features, s.num_heads)
    batch, length, _ = x.shape

    def heads(count: int, name: str) -> jax.Array:
      projected: jax.Array = hk.Linear(count * d, with_bias=False, name=name)(x)
      return projected.reshape(batch, length, count, d)

    attended = causal_attention(
        heads(s.num_heads, "query"), heads(s.num_kv_heads, "key"),
        heads(s.num_kv_heads, "value"), s.rope_base,
    )
    out: jax.Array = hk.Linear(s.features, with_bias=False, name="out")(
        attended.reshape(batch, length, -1)
    )
    return out


class Block(hk.Module):
  """The example's pre-norm block: attention, then a gated MLP, each around a residual."""

  def __init__(self, sizes: lm.Sizes, name: str | None = None) -> None:
    super().__init__(name=name)
    self.sizes = sizes

  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.sizes
    h = hk.RMSNorm(-1, eps=EPSILON, name="attention_norm")(x)
    x = x + Attention(s, name="attention")(h)
    h = hk.RMSNorm(-1, eps=EPSILON, name="mlp_norm")(x)
    gate = hk.Linear(s.mlp_size, with_bias=False, name="gate")(h)
    up = hk.Linear(s.mlp_size, with_bias=False, name="up")(h)
    out: jax.Array = x + hk.Linear(s.features, with_bias=False, name="down")(
        jax.nn.silu(gate) * up
    )
    return out


class LanguageModel(hk.Module):
  """Embed -> `hk.layer_stack` of blocks -> RMSNorm -> scores from the embedding table."""

  def __init__(self, sizes: lm.Sizes, vocab_size: int, name: str | None = None) -> None:
    super().__init__(name=name)
    self.sizes = sizes
    self.vocab_size = vocab_size

  def __call__(self, ids: jax.Array) -> jax.Array:
    embed = hk.Embed(self.vocab_size, self.sizes.features, name="embed")
    x = embed(ids)
    x = hk.layer_stack(self.sizes.num_layers)(lambda x: Block(self.sizes, name="block")(x))(x)
    x = hk.RMSNorm(-1, eps=EPSILON, name="final_norm")(x)
    scores: jax.Array = x @ embed.embeddings.T.astype(x.dtype)
    return scores


def lm_transform(sizes: lm.Sizes, vocab_size: int) -> Any:
  """The example's model as an `init`/`apply` pair, under the mixed-precision policies."""
  # A module's policy holds for the modules it calls, unless they have their own.
  hk.mixed_precision.set_policy(LanguageModel, MIXED)
  hk.mixed_precision.set_policy(hk.RMSNorm, FULL)
  return hk.without_apply_rng(hk.transform(lambda ids: LanguageModel(sizes, vocab_size)(ids)))


def transformer(sizes: lm.Sizes, vocab_size: int, ids: jax.Array, targets: jax.Array) -> Trainer:
  """The example transformer's SGD step."""
  net = lm_transform(sizes, vocab_size)

  def loss(params: Any, ids: jax.Array, targets: jax.Array) -> jax.Array:
    return cross_entropy(net.apply(params, ids), targets)

  return _trainer(net, loss, (ids, targets))


def init(sizes: lm.Sizes, vocab_size: int, jitted: bool) -> Any:
  """The params from `init(key, ids)`, eagerly (the README's way) or under `jax.jit`."""
  net = lm_transform(sizes, vocab_size)
  ids = jnp.zeros((1, 1), jnp.int32)
  return (jax.jit(net.init) if jitted else net.init)(jax.random.key(0), ids)
