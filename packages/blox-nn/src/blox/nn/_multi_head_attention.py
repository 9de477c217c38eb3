"""`MultiHeadAttention`: scaled dot-product attention over several heads.

The layer is a plain attention layer (`mha(params, query, key, value)`) and a
causal sequence model for autoregressive decoding: `initial_state` allocates
a `KVCache`, `decode_step` decodes one token into it, and `apply` runs a
whole sequence with a causal mask (a prefill when given a cache). Options of
modern transformers: grouped-query attention (`num_kv_heads`), query/key
RMS normalisation (`qk_norm`), rotary position embeddings (`rope_base`,
rescaled by `rope_scaling`), sliding-window attention (`sliding_window`),
soft-capped logits (`logit_soft_cap`) and the fused attention kernel
(`implementation='cudnn'`). The settings are declared in
`_attention_settings`; the forward pass itself is `_attention_forward`, its
steps live beside it.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> mha = MultiHeadAttention(
  ...     graph.child('mha'), 2, num_kv_heads=1, rope_base=10000.0, rng=rng)
  >>> x = jnp.ones((1, 5, 8))  # [batch, length, features]
  >>> y, params = mha(rng.seed(Params(), seed=0), x)
  >>> y.shape
  (1, 5, 8)
  >>> cache, params = mha.initial_state(params, x[:, 0], max_length=5)
  >>> (y0, cache), params = mha.decode_step(params, x[:, 0], cache)
  >>> y0.shape, cache.position.tolist()
  ((1, 8), [1])
  >>> cache.key.shape  # [batch, max_length, num_kv_heads, head_dim]
  (1, 5, 1, 4)
"""

from __future__ import annotations

from typing import Any, overload

import jax

from blox.nn._attention_checks import (
    PROJECTIONS, QK_NORMS, check_head_dim, check_kv_heads_divide, check_rope_lengths,
    check_rope_options, check_same_batch, check_sequence, check_token, check_window_lengths,
    refuse_misplaced,
)
from blox.nn._attention_forward import attention_forward, attention_head_dim, attention_kv_heads
from blox.nn._attention_settings import AttentionSettings
from blox.nn._attention_window import check_window_override
from blox.nn._checks import check_is_training, check_positive_int
from blox.nn._kv_cache import KVCache, allocate_cache
from blox.nn._masks import causal_mask
from blox.params import Params

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(AttentionSettings):
  """Multi-head scaled dot-product attention, `softmax(q k^T / sqrt(d)) v`.

  Params. The module owns its params itself (no child modules), with a
  per-head layout:

    query/kernel  [q_features, num_heads, head_dim]     query/bias [num_heads, head_dim]
    key/kernel    [kv_features, num_kv_heads, head_dim] key/bias   [num_kv_heads, head_dim]
    value/kernel  [kv_features, num_kv_heads, head_dim] value/bias [num_kv_heads, head_dim]
    out/kernel    [num_heads, head_dim, output_size]    out/bias   [output_size]
    query_norm/scale [head_dim], key_norm/scale [head_dim]  (with qk_norm)

  where `head_dim = qkv_size // num_heads`. The heads get their own axis,
  so a sharding over heads is one metadata entry per projection, e.g.
  `projection_kernel_metadata={'query': {SHARDING: (None, 'model', None)},
  ..., 'out': {SHARDING: ('model', None, None)}}`. Initializers are called
  with the flat 2-D shape `(fan_in, fan_out)` and the result is reshaped, so
  fan-based initializers scale as they would for a `Linear` of the same size.
  The graph node's children 'query', 'key', 'value', 'out', 'query_norm' and
  'key_norm' are reserved for these params.

  Shapes. Inputs carry at least one batch axis: `[*batch, length, features]`
  for `__call__` and `apply`, one token `[*batch, features]` for
  `decode_step` and `initial_state`. A rank-2 sequence is refused:
  `[length, features]` and `[batch, features]` (one token per example, which
  would attend across the batch) look alike. Add a batch axis (`x[None]`,
  also under `jax.vmap`), or decode one token with `decode_step`. Once the
  params exist, inputs must have the width they were made for.

  Masks are boolean (True = attend) and broadcast to
  `[*batch, num_heads, q_length, kv_length]` (see `causal_mask`,
  `padding_mask`, `combine_masks`). A query row whose keys are all masked out
  attends uniformly to every key. The math is `dot_product_attention`.

  Dropout acts on the attention weights: one key is drawn from `rng` per call
  with `is_training=True` and `dropout_rate > 0`, none otherwise.

  Grouped-query attention: `num_heads // num_kv_heads` query heads share each
  key/value head (query head `n` uses kv head `n // group`), which shrinks the
  KV cache by that factor; `num_kv_heads=1` is multi-query attention. With
  `qk_norm`, each query and key head is RMS-normalised over head_dim (float32
  statistics, epsilon `qk_norm_epsilon`) and scaled by a learned `[head_dim]`
  scale (plus `qk_norm_scale_offset`). With `rope_base`, `rope` rotates the
  queries and keys (after `qk_norm`) at their positions, `arange(length)`,
  or `cache.position + arange(length)` with a cache, so cached decoding
  equals the full forward; `__call__` then refuses a key of another length
  than the query (no self-attention). The frequencies are those of
  `rope_frequencies(head_dim, rope_base, rope_scaling)`.

  Logits. `q k^T` is scaled by `query_scale` (default `1 / sqrt(head_dim)`),
  then, with `logit_soft_cap`, capped to `cap * tanh(logits / cap)`, then
  masked. With `sliding_window=w`, a query at position q attends only to
  keys at positions k with `q - k < w`, on the positions above (the cache's
  with a cache, per batch element); under `apply`'s causal mask that is the
  query itself and the `w - 1` keys before it.

  Per-call overrides. A `blox.graph.Repeat` runs one module for all its
  layers; what differs between layers is passed to `__call__`, `apply` or
  `decode_step`, possibly traced (e.g. through `Repeat.scan`):
  `sliding_window` (None: the setting; an int or an int32 scalar; a window
  at least as long as the keys is none) and `rope_frequencies`
  (`[head_dim // 2]` floats used instead of the setting's; needs
  `rope_base`).

  Precision. `dtype` is that of the projections and of the attention
  products, and the default dtype of the `KVCache`; the softmax is computed
  in float32 whatever it is. Every product goes through `blox.nn.contract`:
  the projections under the weight names `('query', 'kernel')`, ...,
  `('out', 'kernel')`, and, when blox's formula computes the attention (see
  `dot_product_attention`), the logits and the weighted sum of the values
  with no weight name.

  Decoding. `initial_state(params, token, max_length=n)` allocates a
  `KVCache`; `decode_step(params, token, cache)` writes the token's key and
  value at `cache.position`, attends to the positions `<= cache.position`
  and returns `((output, new_cache), params)`. `apply` runs a whole sequence
  with a causal mask (into a cache when `prev_state` is given). Decoding
  token by token gives the same outputs as `apply` on the whole sequence.
  Writing past `max_length` is an error when the position is known outside
  of `jax.jit`; under jit tokens past the end are not written and their
  outputs are NaN (the tokens that fit are written and attended as usual).

  The layer is not a `blox.graph.SequenceBase` (whose single step is
  `module(params, inputs, prev_state)`: here the third argument is the
  `key`); its single step is `decode_step`, with the same result form.
  """

  def __post_init__(self) -> None:
    where = self.where()
    check_kv_heads_divide(self.num_heads, self.num_kv_heads, where)
    check_rope_options(self.rope_base, self.rope_scaling, where)
    if self.qkv_size is not None:
      check_head_dim(self.qkv_size, self.num_heads, self.rope_base, where)
    # The params live at (*path, 'query', 'kernel') and so on. A module bound
    # at one of those child nodes would share the paths (and take over their
    # summary group); creating the nodes, unbound, makes graph.child('query')
    # raise for anyone else.
    for name in (*PROJECTIONS, *QK_NORMS):
      self.graph.child(name)

  # Attention over whole sequences.

  def __call__(
      self,
      params: Params,
      query: jax.Array,
      key: jax.Array | None = None,
      value: jax.Array | None = None,
      *,
      mask: jax.Array | None = None,
      is_training: bool = True,
      sliding_window: int | jax.Array | None = None,
      rope_frequencies: jax.Array | None = None,
  ) -> tuple[jax.Array, Params]:
    """Attends from `query` to `key`/`value`.

    Args:
      params: the params (created on first use).
      query: `[*batch, q_length, q_features]`, at least one batch axis.
      key: `[*batch, kv_length, kv_features]`; defaults to `query`
        (self-attention).
      value: `[*batch, kv_length, kv_features]`; defaults to `key`.
      mask: booleans (True = attend) broadcasting to
        `[*batch, num_heads, q_length, kv_length]`.
      is_training: whether dropout applies; a Python bool (static under jit).
      sliding_window: None (the setting), or this call's window (see the
        class docstring); needs self-attention (the key's length the query's).
      rope_frequencies: None (the setting's), or this call's rotary frequencies.

    Returns:
      `(outputs [*batch, q_length, output_size], params)`.
    """
    where = self.where()
    check_is_training(is_training, where)
    for name, array in (("key", key), ("value", value)):
      refuse_misplaced(array, name, where)
    key = query if key is None else key
    value = key if value is None else value
    named = (("query", query), ("key", key), ("value", value))
    for name, array in named:
      check_sequence(array, name, where)
    check_same_batch(query, key, value, where)
    if self.rope_base is not None:
      check_rope_lengths(query, key, where)
    check_window_override(sliding_window, where)
    if sliding_window is not None or self.sliding_window is not None:
      check_window_lengths(query, key, where)
    masks = [] if mask is None else [mask]
    (outputs, _), params = attention_forward(
        self, params, named, masks, is_training, window=sliding_window,
        frequencies=rope_frequencies,
    )
    return outputs, params

  # The sequence-model interface.

  def initial_state(
      self,
      params: Params,
      inputs: jax.Array,
      *,
      max_length: int,
      dtype: Any = None,
  ) -> tuple[KVCache, Params]:
    """An empty `KVCache` for decoding up to `max_length` tokens.

    Args:
      params: returned unchanged (the cache holds no params).
      inputs: one token `[*batch, features]`, at least one batch axis; gives
        the batch shape, the default `qkv_size` and the default dtype.
      max_length: the number of positions of the cache.
      dtype: the cache dtype; defaults to the layer's compute dtype, else
        the dtype of `inputs`.
    """
    where = self.where()
    check_positive_int(max_length, "max_length", where)
    check_token(inputs, None, where, "initial_state", "inputs")
    head_dim = attention_head_dim(self, params, [("inputs", inputs)] * 3)
    if dtype is None:
      compute = self.dtypes().compute
      dtype = inputs.dtype if compute is None else compute
    key_path = self.param_path(("key", "kernel"))
    key_kernel = params[key_path].value if key_path in params else None
    cache = allocate_cache(
        tuple(inputs.shape[:-1]), max_length=max_length, num_heads=attention_kv_heads(self),
        head_dim=head_dim, dtype=dtype,
        like=None if key_kernel is None else (inputs, key_kernel),
    )
    return cache, params

  def decode_step(
      self,
      params: Params,
      token: jax.Array,
      cache: KVCache,
      *,
      mask: jax.Array | None = None,
      is_training: bool = False,
      sliding_window: int | jax.Array | None = None,
      rope_frequencies: jax.Array | None = None,
  ) -> tuple[tuple[jax.Array, KVCache], Params]:
    """Decodes one token of self-attention over the cache.

    Args:
      params: the params (created on first use).
      token: `[*batch, features]`, the batch axes of the cache.
      cache: the `KVCache` from `initial_state` or an earlier step.
      mask: booleans broadcasting to `[*batch, num_heads, 1, max_length]`,
        combined with the cache's own mask (positions written so far).
      is_training: whether dropout applies; False unless passed explicitly.
      sliding_window: None (the setting), or this call's window.
      rope_frequencies: None (the setting's), or this call's rotary frequencies.

    Returns:
      `((outputs [*batch, output_size], new_cache), params)`.
    """
    where = self.where()
    check_is_training(is_training, where)
    check_token(token, cache, where, "decode_step", "token")
    check_window_override(sliding_window, where)
    sequence = token[..., None, :]
    masks = [] if mask is None else [mask]
    (outputs, new_cache), params = attention_forward(
        self, params, [("token", sequence)] * 3, masks, is_training, cache,
        window=sliding_window, frequencies=rope_frequencies,
    )
    assert new_cache is not None  # given a cache, attention_forward returns one
    return (outputs[..., 0, :], new_cache), params

  @overload
  def apply(
      self, params: Params, inputs: jax.Array, prev_state: None = None, *,
      mask: jax.Array | None = None, is_training: bool = True,
      sliding_window: int | jax.Array | None = None, rope_frequencies: jax.Array | None = None,
      positions: jax.Array | None = None,
  ) -> tuple[tuple[jax.Array, None], Params]: ...

  @overload
  def apply(
      self, params: Params, inputs: jax.Array, prev_state: KVCache, *,
      mask: jax.Array | None = None, is_training: bool = True,
      sliding_window: int | jax.Array | None = None, rope_frequencies: jax.Array | None = None,
      positions: jax.Array | None = None,
  ) -> tuple[tuple[jax.Array, KVCache], Params]: ...

  def apply(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: KVCache | None = None,
      *,
      mask: jax.Array | None = None,
      is_training: bool = True,
      sliding_window: int | jax.Array | None = None,
      rope_frequencies: jax.Array | None = None,
      positions: jax.Array | None = None,
  ) -> tuple[tuple[jax.Array, KVCache | None], Params]:
    """Causal self-attention over a whole sequence `[*batch, length, features]`.

    Without `prev_state`, position `i` attends to positions `<= i` of `inputs`
    and the final state is None. With a `KVCache`, the sequence is written to
    the cache from `prev_state.position` on (a prefill) and each position also
    attends to the earlier cache entries; the final state is the new cache.
    `mask`, if given, is combined with the causal mask (its kv axis is the
    sequence length, or `max_length` with a cache). `sliding_window` and
    `rope_frequencies` override the layer's for this call, as for `__call__`.
    `positions` (int `[*batch, length]` or `[length]`; not with a cache,
    whose own positions count) are the tokens' positions for the rotary
    embeddings and the sliding window, instead of `0 .. length - 1`: e.g.
    `cumsum(valid) - 1` for a left-padded batch.

    Returns:
      `((outputs [*batch, length, output_size], final_state), params)`.
    """
    check_is_training(is_training, self.where())
    check_sequence(inputs, "inputs", self.where())
    check_window_override(sliding_window, self.where())
    if positions is not None and prev_state is not None:
      raise ValueError(
          f"{self.where()}: positions and a cache were both given; with a cache the"
          " tokens sit at the cache's positions. Drop one of them.")
    masks = [] if mask is None else [mask]
    if prev_state is None:
      # With a cache, attention_forward masks by cache position instead.
      masks.insert(0, causal_mask(inputs.shape[-2]))
    return attention_forward(
        self, params, [("inputs", inputs)] * 3, masks, is_training, prev_state,
        window=sliding_window, frequencies=rope_frequencies, positions=positions,
    )
