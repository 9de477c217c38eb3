"""The benchmarks' transformer language model, in blox: the examples' model, unsharded.

The same model as examples/transformer_model.py (tests/test_benchmark_model_smoke.py
checks that both compute the same scores from the same params), kept here so
that the benchmarks never import an example: pre-norm blocks of grouped-query
attention with rotary positions and a gated (SwiGLU) MLP, float32 params and
bfloat16 compute (`MIXED_PRECISION`), a weight-tied readout
(`embed.attend`). The params name no logical axes: nothing here is sharded.

- `LanguageModel`: the blocks stacked by `bx.Repeat` (one `lax.scan`), with
  cached decoding (`initial_caches`, `decode_step`) scanning the layers.
- `UnrolledLM`: the same blocks as separate modules in a Python loop.
- `build(sizes, vocab_size, unrolled=False)`: either, and its init function.

benchmarks/transformer_reference.py is this model hand-written in plain JAX;
benchmarks/peers_*.py write it in the other libraries.

Example:
  >>> import jax, jax.numpy as jnp
  >>> sizes = Sizes(num_layers=2, features=16, num_heads=4, num_kv_heads=2, mlp_size=48,
  ...               sequence_length=8, batch_size=2)
  >>> model, init = build(sizes, 32)
  >>> scores, _ = model(jax.jit(init)(), jnp.zeros((2, 8), jnp.int32))
  >>> scores.shape, scores.dtype
  ((2, 8, 32), dtype(bfloat16))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import blox as bx

__all__ = ["MIXED_PRECISION", "Block", "LanguageModel", "Model", "Sizes", "UnrolledLM", "build"]

# Params in float32, arithmetic in bfloat16.
MIXED_PRECISION = bx.Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The model's sizes and the shape of a batch."""

  num_layers: int
  features: int
  num_heads: int
  num_kv_heads: int
  mlp_size: int
  sequence_length: int
  batch_size: int
  rope_base: float = 10_000.0
  # None, 'full' or a name in jax.checkpoint_policies: what the backward pass
  # recomputes instead of keeping.
  remat_policy: str | None = None


class Block(bx.Module):
  """One pre-norm transformer block: attention, then a gated MLP, each around a residual."""

  features: int = bx.setting(kw_only=False, doc="the width of the residual stream.")
  num_heads: int = bx.setting(kw_only=False, doc="the query heads.")
  mlp_size: int = bx.setting(kw_only=False, doc="the width of the gated MLP.")
  rng: bx.KeySource = bx.setting(doc="draws every kernel.")
  num_kv_heads: int | None = bx.setting(default=None, doc="key/value heads; None: num_heads.")
  rope_base: float = bx.setting(default=10_000.0, doc="the base of the rotary positions.")

  def __post_init__(self) -> None:
    node, rng = self.graph.child, self.rng
    self.attention_norm = bx.RMSNorm(node("attention_norm"))
    self.attention = bx.MultiHeadAttention(
        node("attention"), self.num_heads, rng=rng, num_kv_heads=self.num_kv_heads,
        rope_base=self.rope_base, use_bias=False,
    )
    self.mlp_norm = bx.RMSNorm(node("mlp_norm"))
    self.gate = bx.Linear(node("gate"), self.mlp_size, rng=rng, use_bias=False)
    self.up = bx.Linear(node("up"), self.mlp_size, rng=rng, use_bias=False)
    self.down = bx.Linear(node("down"), self.features, rng=rng, use_bias=False)

  def mlp(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    """`x + down(silu(gate(h)) * up(h))` with `h = rms_norm(x)`."""
    h, params = self.mlp_norm(params, x)
    gate, params = self.gate(params, h)
    up, params = self.up(params, h)
    out, params = self.down(params, jax.nn.silu(gate) * up)
    return x + out, params

  def __call__(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    """The block over a whole sequence `x [batch, length, features]` (causal)."""
    h, params = self.attention_norm(params, x)
    (h, _), params = self.attention.apply(params, h, is_training=False)
    return self.mlp(params, x + h)

  def decode_step(
      self, params: bx.Params, x: jax.Array, cache: bx.KVCache
  ) -> tuple[tuple[jax.Array, bx.KVCache], bx.Params]:
    """The block for one token `x [batch, features]` at the cache's position."""
    h, params = self.attention_norm(params, x)
    (h, cache), params = self.attention.decode_step(params, h, cache)
    x, params = self.mlp(params, x + h)
    return (x, cache), params


class LanguageModel(bx.Module):
  """Embed -> `num_layers` blocks (`bx.Repeat`) -> RMSNorm -> scores against the embedding."""

  vocab_size: int = bx.setting(kw_only=False, doc="the number of distinct tokens.")
  sizes: Sizes = bx.setting(doc="the sizes of the blocks.")
  rng: bx.KeySource = bx.setting(doc="draws every param.")

  def __post_init__(self) -> None:
    s = self.sizes
    self.embed = bx.Embed(self.graph.child("embed"), self.vocab_size, s.features, rng=self.rng)
    self.blocks = bx.Repeat(self.graph.child("blocks"), lambda node: make_block(node, s, self.rng),
                            s.num_layers, remat_policy=s.remat_policy)
    self.final_norm = bx.RMSNorm(self.graph.child("final_norm"))

  def _scores(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    x, params = self.final_norm(params, x)
    return self.embed.attend(params, x)

  def __call__(self, params: bx.Params, ids: jax.Array) -> tuple[jax.Array, bx.Params]:
    """Next-token scores for ids `[batch, length]`: `[batch, length, vocab]`."""
    x, params = self.embed(params, ids)
    x, params = self.blocks(params, x)
    return self._scores(params, x)

  # Cached decoding: every layer has its own cache, so the stacked block
  # params and the stacked caches are scanned together, one slice per layer.

  def _split_layers(self, params: bx.Params) -> tuple[bx.Params, bx.Params]:
    prefix = self.blocks.layer_path
    return params.split(lambda path, _: path[: len(prefix)] == prefix)

  def initial_caches(
      self, params: bx.Params, ids: jax.Array, max_length: int
  ) -> tuple[bx.KVCache, bx.Params]:
    """Empty caches for `max_length` tokens of the batch of `ids [batch, ...]`, one per layer."""
    token, params = self.embed(params, ids[:, 0])
    block = self.blocks.layer
    assert isinstance(block, Block)
    # The attention checks the token against its params: give it one layer's slice.
    stacked, rest = self._split_layers(params)
    first = jax.tree.map(lambda leaf: leaf[0], stacked).merge(rest)
    cache, _ = block.attention.initial_state(first, token, max_length=max_length)
    stack = functools.partial(jnp.repeat, repeats=self.sizes.num_layers, axis=0)
    return jax.tree.map(lambda leaf: stack(leaf[None]), cache), params

  def decode_step(
      self, params: bx.Params, ids: jax.Array, caches: bx.KVCache
  ) -> tuple[tuple[jax.Array, bx.KVCache], bx.Params]:
    """Scores `[batch, vocab]` for one token per row, `ids [batch]`, at the caches' position."""
    x, params = self.embed(params, ids)
    stacked, rest = self._split_layers(params)
    block = self.blocks.layer
    assert isinstance(block, Block)

    def one_layer(x: jax.Array, layer: tuple[bx.Params, bx.KVCache]) -> tuple[jax.Array, Any]:
      layer_params, cache = layer
      (x, cache), _ = block.decode_step(layer_params.merge(rest), x, cache)
      return x, cache

    x, caches = jax.lax.scan(one_layer, x, (stacked, caches))
    scores, params = self._scores(params, x)
    return (scores, caches), params


def make_block(node: bx.Graph, sizes: Sizes, rng: bx.KeySource) -> Block:
  """One block of `sizes` on `node`."""
  return Block(node, sizes.features, sizes.num_heads, sizes.mlp_size, rng=rng,
               num_kv_heads=sizes.num_kv_heads, rope_base=sizes.rope_base)


class UnrolledLM(bx.Module):
  """`LanguageModel` with its blocks as separate modules in a Python loop."""

  vocab_size: int = bx.setting(kw_only=False, doc="the number of distinct tokens.")
  sizes: Sizes = bx.setting(doc="the sizes of the blocks.")
  rng: bx.KeySource = bx.setting(doc="draws every param.")

  def __post_init__(self) -> None:
    s = self.sizes
    self.embed = bx.Embed(self.graph.child("embed"), self.vocab_size, s.features, rng=self.rng)
    self.blocks = [make_block(self.graph.child(f"block{i}"), s, self.rng)
                   for i in range(s.num_layers)]
    self.final_norm = bx.RMSNorm(self.graph.child("final_norm"))

  def __call__(self, params: bx.Params, ids: jax.Array) -> tuple[jax.Array, bx.Params]:
    x, params = self.embed(params, ids)
    for block in self.blocks:
      x, params = block(params, x)
    x, params = self.final_norm(params, x)
    return self.embed.attend(params, x)


Model = Callable[[bx.Params, jax.Array], tuple[jax.Array, bx.Params]]


def build(
    sizes: Sizes, vocab_size: int, unrolled: bool = False
) -> tuple[LanguageModel | UnrolledLM, Callable[[], bx.Params]]:
  """The model (stacked blocks, or unrolled) under `lm/model`, and its init function."""
  graph = bx.Graph("lm", policy=MIXED_PRECISION)
  rng = bx.Rng(graph.child("rng"))
  kind = UnrolledLM if unrolled else LanguageModel
  model = kind(graph.child("model"), vocab_size, sizes=sizes, rng=rng)
  return model, lambda: rng.init(model, jnp.zeros((1, 1), jnp.int32), seed=0)
