"""`CausalLM`: a pretrained decoder-only language model as one blox module.

    ids -> Embed [+ learned positions] [* sqrt(hidden)]
        -> Repeat of DecoderBlock (one scan over the layers)
        -> final norm -> head (or the embedding table, tied) [-> soft cap]

The decoding interface, shared with everything that generates from a model:
`init_cache(batch_size, max_length)` makes one cache for the whole stack
(keys and values `[layers, batch, max_length, num_kv_heads, head_dim]`,
a position per example), `prefill(params, ids, cache, lengths=...)` runs a
right-padded prompt batch into it, and `decode_step(params, tokens, cache)`
one token per example, each at its own position.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.models._config import ModelConfig
  >>> config = ModelConfig.from_hf({
  ...     'model_type': 'llama', 'vocab_size': 16, 'hidden_size': 8, 'intermediate_size': 16,
  ...     'num_hidden_layers': 2, 'num_attention_heads': 2, 'num_key_value_heads': 1})
  >>> model = CausalLM(Graph('model').child('lm'), config)
  >>> logits, params = model(Params(), jnp.zeros((1, 5), jnp.int32))
  >>> logits.shape, params[('model', 'lm', 'layers', 'layer', 'attention', 'key', 'kernel')].value.shape
  ((1, 5, 16), (2, 8, 1, 4))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.graph import Module, Repeat, setting
from blox.models._config import ModelConfig
from blox.models._decoder_block import DecoderBlock, axes, constant_keys, layer_inputs, make_norm
from blox.nn import Embed, KVCache, Linear, padding_mask, soft_cap
from blox.params import KeySource, Params

__all__ = ["CausalLM"]


class CausalLM(Module):
  """A pretrained family's causal LM; see the module docstring.

  Params (paths under the module's node): `embed/embedding [vocab, hidden]`,
  `positions/embedding [max_positions, hidden]` (GPT-2), the layers stacked
  under `layers/layer/...` (`attention_norm`, `attention/{query,key,value,out}`,
  `mlp_norm`, `mlp/{gate,up,down}`, Gemma's `post_attention_norm` and
  `post_mlp_norm`), `final_norm`, and `head/kernel [hidden, vocab]` unless the
  head is the embedding table. Every param names its logical axes ('vocab',
  'embed', 'heads', 'kv_heads', 'head_dim', 'mlp'); the layer axis of the
  stack is left unsharded.
  """

  architecture: ModelConfig = setting(kw_only=False, doc="what it computes (`ModelConfig.from_hf`).")
  rng: KeySource = setting(
      default=constant_keys,
      doc="draws initial values when params are created; the default draws nothing"
      " random (for params that a checkpoint fills in).")
  param_dtype: Any = setting(default=None, doc="the dtype params are created in (None: float32).")
  remat_policy: str | None = setting(
      default=None, doc="what the layers' backward pass recomputes (see `Repeat`).")

  def __post_init__(self) -> None:
    config, node = self.architecture, self.graph.child
    self.embed = Embed(
        node("embed"), config.vocab_size, config.hidden_size, rng=self.rng,
        embedding_metadata=axes("vocab", "embed"), param_dtype=self.param_dtype)
    self.positions = None
    if config.learned_positions:
      self.positions = Embed(
          node("positions"), config.max_positions, config.hidden_size, rng=self.rng,
          embedding_metadata=axes(None, "embed"), param_dtype=self.param_dtype)
    self.layers = Repeat(
        node("layers"),
        lambda graph: DecoderBlock(graph, config, rng=self.rng, param_dtype=self.param_dtype),
        config.num_layers, remat_policy=self.remat_policy)
    self.final_norm = make_norm(config, self.param_dtype, node("final_norm"))
    self.head = None
    if not config.tie_embeddings:
      self.head = Linear(
          node("head"), config.vocab_size, rng=self.rng, use_bias=False,
          kernel_metadata=axes("embed", "vocab"), param_dtype=self.param_dtype)

  @property
  def block(self) -> DecoderBlock:
    """The layer the stack repeats (built once; its params are stacked)."""
    block = self.layers.layer
    assert isinstance(block, DecoderBlock)
    return block

  def _embed(self, params: Params, ids: jax.Array, positions: jax.Array) -> tuple[jax.Array, Params]:
    x, params = self.embed(params, ids)
    if self.positions is not None:
      p, params = self.positions(params, positions)
      x = x + p
    if self.architecture.scale_embeddings:
      # Gemma's normalizer is sqrt(hidden) rounded to the weights' dtype.
      x = x * jnp.asarray(np.sqrt(self.architecture.hidden_size), x.dtype)
    return x, params

  def _logits(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    x, params = self.final_norm(params, x)
    if self.head is None:
      logits, params = self.embed.attend(params, x)
    else:
      logits, params = self.head(params, x)
    if self.architecture.final_soft_cap is not None:
      logits = soft_cap(logits, self.architecture.final_soft_cap)
    return logits, params

  def __call__(
      self, params: Params, ids: jax.Array, *, mask: jax.Array | None = None,
      positions: jax.Array | None = None,
  ) -> tuple[jax.Array, Params]:
    """Logits `[batch, length, vocab]` for token ids `[batch, length]` (int).

    `mask [batch, length]` (1/True for real tokens) hides padding from every
    query; the logits at padded positions are not meaningful. `positions`
    (int `[batch, length]` or `[length]`) place the tokens, by default
    `0 .. length - 1` in every row; for a left-padded batch pass
    `maximum(cumsum(mask, -1) - 1, 0)`, as Hugging Face's generate does.
    """
    ids = self._check_ids(ids)
    length = ids.shape[-1]
    given = positions is not None
    positions = jnp.asarray(positions) if given else jnp.arange(length, dtype=jnp.int32)
    x, params = self._embed(params, ids, positions)
    keys_mask = None if mask is None else padding_mask(jnp.asarray(mask).astype(bool))
    (x, _), params = self.layers.scan(
        params, x, (layer_inputs(self.architecture), None), mask=keys_mask,
        positions=positions if given else None)
    return self._logits(params, x)

  def init_cache(self, batch_size: int, max_length: int, *, dtype: Any = None) -> KVCache:
    """An empty cache for the whole stack: `max_length` positions per example.

    `dtype` is that of the keys and values (None: the params' dtype, else float32).
    """
    config = self.architecture
    if max_length > config.max_positions and config.learned_positions:
      raise ValueError(
          f"{self.where()}: max_length={max_length} is past the learned positions"
          f" ({config.max_positions}); make a shorter cache.")
    shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
    empty = jnp.zeros(shape, dtype or self.param_dtype or jnp.float32)
    return KVCache(empty, empty, jnp.zeros((config.num_layers, batch_size), jnp.int32))

  def prefill(
      self, params: Params, ids: jax.Array, cache: KVCache, *, lengths: jax.Array | None = None
  ) -> tuple[tuple[jax.Array, KVCache], Params]:
    """Runs prompts `ids [batch, length]` into `cache` from its positions on.

    `lengths [batch]` are the prompts' true lengths in a right-padded batch:
    each example's next token then goes to position `start + lengths[b]`,
    over its padding. Returns `((logits [batch, length, vocab], cache), params)`.
    """
    ids = self._check_ids(ids)
    length = ids.shape[-1]
    start = cache.position[0]
    positions = start[:, None] + jnp.arange(length, dtype=jnp.int32)
    x, params = self._embed(params, ids, positions)
    (x, cache), params = self.layers.scan(params, x, (layer_inputs(self.architecture), cache))
    if lengths is not None:
      lengths = jnp.asarray(lengths, jnp.int32)
      cache = cache._replace(position=jnp.broadcast_to(start + lengths, cache.position.shape))
    logits, params = self._logits(params, x)
    return (logits, cache), params

  def decode_step(
      self, params: Params, tokens: jax.Array, cache: KVCache
  ) -> tuple[tuple[jax.Array, KVCache], Params]:
    """One token per example, `tokens [batch]`, at each example's cache position.

    Returns `((logits [batch, vocab], cache), params)`.
    """
    (logits, cache), params = self.prefill(params, jnp.asarray(tokens)[:, None], cache)
    return (logits[:, 0], cache), params

  def _check_ids(self, ids: Any) -> jax.Array:
    ids = jnp.asarray(ids)
    assert isinstance(ids, jax.Array)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(
          f"{self.where()}: token ids must be integers [batch, length]; got"
          f" {ids.dtype}{list(ids.shape)}. Add a batch axis with ids[None].")
    return ids
