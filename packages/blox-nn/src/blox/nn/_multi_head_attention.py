"""`MultiHeadAttention`: scaled dot-product attention over several heads.

The layer is a plain attention layer (`mha(params, query, key, value)`) and a
causal sequence model for autoregressive decoding: `initial_state` allocates
a `KVCache`, `decode_step` decodes one token into it, and `apply` runs a
whole sequence with a causal mask (a prefill when given a cache). Options of
modern transformers: grouped-query attention (`num_kv_heads`), query/key
RMS normalisation (`qk_norm`), rotary position embeddings (`rope_base`) and
the fused attention kernel (`implementation='cudnn'`).

This module is long (about 470 lines) because it is one class whose
docstring documents the param layout and every option; the steps that can
stand alone already live beside it (`_attention_heads`, `_attention_checks`,
`_kv_cache`, `_dot_product_attention`, `_rope`, `_masks`).

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> mha = MultiHeadAttention(
  ...     graph.child('mha'), num_heads=2, num_kv_heads=1, rope_base=10000.0, rng=rng)
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

from collections.abc import Mapping
from typing import Any, overload

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module
from blox.nn._attention_checks import (
    PROJECTIONS, QK_NORMS, _check_head_dim, _check_options, _check_rope_lengths,
    _check_same_batch, _check_sequence, _check_token, _per_projection, _refuse_misplaced,
)
from blox.nn._attention_heads import merge_heads, normalize_heads, project_to_heads
from blox.nn._checks import check_is_training, check_positive_int
from blox.nn._dot_product_attention import _attend
from blox.nn._kv_cache import (
    KVCache, _allocate, _check_cache, _check_room, _overflow, _query_positions, _visible, _write,
)
from blox.nn._masks import causal_mask
from blox.nn._precision import check_dtype, resolve_dtypes, to_output
from blox.nn._rope import _rope
from blox.nn.initializers import lecun_normal, ones, zeros
from blox.params import Initializer, KeySource, Params

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(Module):
  """Multi-head scaled dot-product attention, `softmax(q k^T / sqrt(d)) v`.

  Params. The module owns its params itself (no child modules), with a
  per-head layout:

    query/kernel  [q_features, num_heads, head_dim]     query/bias [num_heads, head_dim]
    key/kernel    [kv_features, num_kv_heads, head_dim] key/bias   [num_kv_heads, head_dim]
    value/kernel  [kv_features, num_kv_heads, head_dim] value/bias [num_kv_heads, head_dim]
    out/kernel    [num_heads, head_dim, out_features]   out/bias   [out_features]
    query_norm/scale [head_dim], key_norm/scale [head_dim]  (with qk_norm)

  where `head_dim = qkv_features // num_heads`. The heads get their own axis,
  so a sharding over heads is one metadata entry per projection, e.g.
  `kernel_metadata={'query': {SHARDING: (None, 'model', None)}, ...,
  'out': {SHARDING: ('model', None, None)}}`. Initializers are called with
  the flat 2-D shape `(fan_in, fan_out)` and the result is reshaped, so
  fan-based initializers scale as they would for a `Linear` of the same size.

  Shapes. Inputs carry at least one batch axis: `[*batch, length, features]`
  for `__call__` and `apply`, one token `[*batch, features]` for
  `decode_step` and `initial_state`. A rank-2 sequence is refused:
  `[length, features]` and `[batch, features]` (one token per example, which
  would attend across the batch) look alike. Add a batch axis (`x[None]`,
  also under `jax.vmap`), or decode one token with `decode_step`.

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
  statistics, epsilon 1e-6) and scaled by a learned `[head_dim]` scale.
  With `rope_base`, `rope` rotates the queries and keys (after `qk_norm`) at
  their positions, `arange(length)`, or `cache.position + arange(length)`
  with a cache, so cached decoding equals the full forward; `__call__` then
  refuses a key of another length than the query (no self-attention).

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

  Args:
    graph: the node this layer binds to; its children 'query', 'key',
      'value' and 'out' are reserved for the projection params.
    num_heads: the number of attention (query) heads.
    rng: the key source for initialisation and attention dropout.
    num_kv_heads: the number of key/value heads, a divisor of `num_heads`;
      defaults to `num_heads`.
    qkv_features: the total size of the query/key/value projections (all
      heads together); defaults to the last axis of the query. Must be
      divisible by `num_heads`.
    out_features: the size of the output's last axis; defaults to the last
      axis of the query.
    dropout_rate: the dropout rate on the attention weights, in [0, 1).
    use_bias: whether the projections add a bias.
    qk_norm: whether queries and keys are RMS-normalised per head.
    rope_base: None for no rotary embeddings, else the `base` of `rope`
      (e.g. 10000.0); needs an even head_dim.
    implementation: that of `dot_product_attention`: None, 'xla' or 'cudnn'.
    precision: the matmul precision of the projections and attention (a
      precision other than None uses blox's attention formula, not jax's).
    kernel_init: the kernels' initializer `(key, shape, dtype) -> array`,
      shared by the four projections.
    bias_init: the biases' initializer, shared by the four projections.
    qk_norm_scale_init: the initializer of both qk_norm scales, called with
      `key=None` (default: ones).
    kernel_metadata: metadata per projection, a mapping from any of
      'query', 'key', 'value', 'out' to that projection's kernel metadata;
      projections left out get none.
    bias_metadata: the same for the biases.
    qk_norm_metadata: the same for the qk_norm scales, from 'query_norm' or
      'key_norm' to that scale's metadata.
    param_dtype: the dtype of the params when they are created; None: the
      policy's `param_dtype` (`Module.policy()`), else float32.
    dtype: the dtype of the projections and of the attention products (and
      the default dtype of the `KVCache`); None: the policy's
      `compute_dtype`, else the inputs' dtype promoted with the params'. The
      softmax is computed in float32 whatever this dtype. The outputs come
      out in the policy's `output_dtype` when it has one.
  """

  def __init__(
      self,
      graph: Graph,
      num_heads: int,
      *,
      rng: KeySource,
      num_kv_heads: int | None = None,
      qkv_features: int | None = None,
      out_features: int | None = None,
      dropout_rate: float = 0.0,
      use_bias: bool = True,
      qk_norm: bool = False,
      rope_base: float | None = None,
      implementation: str | None = None,
      precision: jax.lax.PrecisionLike = None,
      kernel_init: Initializer = lecun_normal(),
      bias_init: Initializer = zeros,
      qk_norm_scale_init: Initializer = ones,
      kernel_metadata: Mapping[str, Mapping[str, Any] | None] | None = None,
      bias_metadata: Mapping[str, Mapping[str, Any] | None] | None = None,
      qk_norm_metadata: Mapping[str, Mapping[str, Any] | None] | None = None,
      param_dtype: Any = None,
      dtype: Any = None,
  ) -> None:
    super().__init__(graph)
    where = self.where()
    _check_options(
        where, num_heads=num_heads, num_kv_heads=num_kv_heads, qkv_features=qkv_features,
        out_features=out_features, dropout_rate=dropout_rate, qk_norm=qk_norm,
        rope_base=rope_base, implementation=implementation,
    )
    self.num_heads = num_heads
    self.rng = rng
    self.num_kv_heads = num_kv_heads
    self.qk_norm = qk_norm
    self.rope_base = rope_base
    self.implementation = implementation
    self.qk_norm_scale_init = qk_norm_scale_init
    self.qk_norm_metadata = qk_norm_metadata
    self._kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    self._norm_metadata = _per_projection(qk_norm_metadata, "qk_norm_metadata", where, QK_NORMS)
    self.qkv_features = qkv_features
    self.out_features = out_features
    self.dropout_rate = dropout_rate
    self.use_bias = use_bias
    self.precision = precision
    self.kernel_init = kernel_init
    self.bias_init = bias_init
    self.kernel_metadata = kernel_metadata
    self.bias_metadata = bias_metadata
    self._kernel_metadata = _per_projection(kernel_metadata, "kernel_metadata", where)
    self._bias_metadata = _per_projection(bias_metadata, "bias_metadata", where)
    self.param_dtype = check_dtype(param_dtype, "param_dtype", where)
    self.dtype = check_dtype(dtype, "dtype", where)
    if qkv_features is not None:
      _check_head_dim(qkv_features, num_heads, rope_base, where)
    # The params live at (*path, 'query', 'kernel') and so on. A module bound
    # at one of those child nodes would share the paths (and take over their
    # summary group); creating the nodes, unbound, makes graph.child('query')
    # raise for anyone else.
    for name in (*PROJECTIONS, *QK_NORMS):
      graph.child(name)


  def _sizes(self, query: jax.Array) -> tuple[int, int]:
    """`(head_dim, out_features)` for this query."""
    features = query.shape[-1]
    head_dim = _check_head_dim(
        self.qkv_features or features, self.num_heads, self.rope_base, self.where()
    )
    return head_dim, self.out_features or features

  # The steps shared by every entry point.

  def _project(
      self, params: Params, name: str, inputs: jax.Array, head_dim: int
  ) -> tuple[jax.Array, Params]:
    num_heads = self.num_heads if name == "query" else self._kv_heads
    return project_to_heads(
        self, params, name, inputs, num_heads=num_heads, head_dim=head_dim,
        kernel_init=self.kernel_init, bias_init=self.bias_init, rng=self.rng,
        use_bias=self.use_bias, kernel_metadata=self._kernel_metadata.get(name),
        bias_metadata=self._bias_metadata.get(name), precision=self.precision,
        **self._dtype_arguments(),
    )

  def _merge(
      self, params: Params, attended: jax.Array, out_features: int
  ) -> tuple[jax.Array, Params]:
    return merge_heads(
        self, params, "out", attended, out_features=out_features,
        kernel_init=self.kernel_init, bias_init=self.bias_init, rng=self.rng,
        use_bias=self.use_bias, kernel_metadata=self._kernel_metadata.get("out"),
        bias_metadata=self._bias_metadata.get("out"), precision=self.precision,
        **self._dtype_arguments(),
    )

  def _dtype_arguments(self) -> dict[str, Any]:
    """`param_dtype` and `dtype` of the projections, resolved with the policy."""
    dtypes = resolve_dtypes(self, self.param_dtype, self.dtype)
    return {"param_dtype": dtypes.param, "dtype": dtypes.compute}

  def _attention(
      self,
      params: Params,
      query: jax.Array,
      key: jax.Array,
      value: jax.Array,
      masks: list[Any],
      is_training: bool,
      cache: KVCache | None = None,
  ) -> tuple[tuple[jax.Array, KVCache | None], Params]:
    """Projects, attends (over `cache` too, written first, if given) and merges.

    On first use the RNG draws come in the order query, key and value params,
    the dropout key (if any), then the out params (the qk_norm scales draw
    none).
    """
    where = self.where()
    head_dim, out_features = self._sizes(query)
    length = query.shape[-2]
    positions = jnp.arange(length, dtype=jnp.int32)
    if cache is not None:
      max_length = _check_cache(
          cache, tuple(query.shape[:-2]), num_heads=self._kv_heads,
          head_dim=head_dim, where=where,
      )
      position = jnp.asarray(cache.position, jnp.int32)
      _check_room(position, length, max_length, where)
      positions = q_positions = _query_positions(position, length)
    q, params = self._project(params, "query", query, head_dim)
    k, params = self._project(params, "key", key, head_dim)
    v, params = self._project(params, "value", value, head_dim)
    if self.qk_norm:
      q, params = self._normalize(params, "query_norm", q)
      k, params = self._normalize(params, "key_norm", k)
    if self.rope_base is not None:
      # __call__ made sure that key and query have the same length.
      q, k = (_rope(x, positions, self.rope_base, where) for x in (q, k))
    if cache is not None:
      k, v = _write(cache.key, k, position), _write(cache.value, v, position)
      masks = [_visible(q_positions, max_length), *masks]
      cache = KVCache(k, v, position + length)
    dropout_key = None
    if is_training and self.dropout_rate > 0.0:
      dropout_key, params = self.rng(params)
    attended = _attend(
        q, k, v, masks, where, dropout_rate=self.dropout_rate,
        dropout_key=dropout_key, precision=self.precision,
        implementation=self.implementation,
    )
    outputs, params = self._merge(params, attended, out_features)
    if cache is not None:
      outputs = _overflow(outputs, q_positions, max_length)
    outputs = to_output(resolve_dtypes(self, self.param_dtype, self.dtype), outputs)
    return (outputs, cache), params

  def _normalize(self, params: Params, name: str, x: jax.Array) -> tuple[jax.Array, Params]:
    return normalize_heads(
        self, params, name, x, scale_init=self.qk_norm_scale_init,
        scale_metadata=self._norm_metadata.get(name),
        param_dtype=self._dtype_arguments()["param_dtype"],
    )

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

    Returns:
      `(outputs [*batch, q_length, out_features], params)`.
    """
    where = self.where()
    check_is_training(is_training, where)
    for name, array in (("key", key), ("value", value)):
      _refuse_misplaced(array, name, where)
    key = query if key is None else key
    value = key if value is None else value
    for name, array in (("query", query), ("key", key), ("value", value)):
      _check_sequence(array, name, where)
    _check_same_batch(query, key, value, where)
    if self.rope_base is not None:
      _check_rope_lengths(query, key, where)
    masks = [] if mask is None else [mask]
    (outputs, _), params = self._attention(params, query, key, value, masks, is_training)
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
        the batch shape, the default `qkv_features` and the default dtype.
      max_length: the number of positions of the cache.
      dtype: the cache dtype; defaults to the layer's compute dtype, else
        the dtype of `inputs`.
    """
    where = self.where()
    check_positive_int(max_length, "max_length", where)
    _check_token(inputs, None, where, "initial_state", "inputs")
    head_dim, _ = self._sizes(inputs)
    cache = _allocate(
        tuple(inputs.shape[:-1]), max_length=max_length, num_heads=self._kv_heads,
        head_dim=head_dim, dtype=self._cache_dtype(inputs) if dtype is None else dtype,
    )
    return cache, params

  def _cache_dtype(self, inputs: jax.Array) -> Any:
    compute = self._dtype_arguments()["dtype"]
    return inputs.dtype if compute is None else compute

  def decode_step(
      self,
      params: Params,
      token: jax.Array,
      cache: KVCache,
      *,
      mask: jax.Array | None = None,
      is_training: bool = False,
  ) -> tuple[tuple[jax.Array, KVCache], Params]:
    """Decodes one token of self-attention over the cache.

    Args:
      params: the params (created on first use).
      token: `[*batch, features]`, the batch axes of the cache.
      cache: the `KVCache` from `initial_state` or an earlier step.
      mask: booleans broadcasting to `[*batch, num_heads, 1, max_length]`,
        combined with the cache's own mask (positions written so far).
      is_training: whether dropout applies; False unless passed explicitly.

    Returns:
      `((outputs [*batch, out_features], new_cache), params)`.
    """
    where = self.where()
    check_is_training(is_training, where)
    _check_token(token, cache, where, "decode_step", "token")
    sequence = token[..., None, :]
    masks = [] if mask is None else [mask]
    (outputs, new_cache), params = self._attention(
        params, sequence, sequence, sequence, masks, is_training, cache
    )
    assert new_cache is not None  # given a cache, _attention returns one
    return (outputs[..., 0, :], new_cache), params

  @overload
  def apply(
      self, params: Params, inputs: jax.Array, prev_state: None = None, *,
      mask: jax.Array | None = None, is_training: bool = True,
  ) -> tuple[tuple[jax.Array, None], Params]: ...

  @overload
  def apply(
      self, params: Params, inputs: jax.Array, prev_state: KVCache, *,
      mask: jax.Array | None = None, is_training: bool = True,
  ) -> tuple[tuple[jax.Array, KVCache], Params]: ...

  def apply(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: KVCache | None = None,
      *,
      mask: jax.Array | None = None,
      is_training: bool = True,
  ) -> tuple[tuple[jax.Array, KVCache | None], Params]:
    """Causal self-attention over a whole sequence `[*batch, length, features]`.

    Without `prev_state`, position `i` attends to positions `<= i` of `inputs`
    and the final state is None. With a `KVCache`, the sequence is written to
    the cache from `prev_state.position` on (a prefill) and each position also
    attends to the earlier cache entries; the final state is the new cache.
    `mask`, if given, is combined with the causal mask (its kv axis is the
    sequence length, or `max_length` with a cache).

    Returns:
      `((outputs [*batch, length, out_features], final_state), params)`.
    """
    check_is_training(is_training, self.where())
    _check_sequence(inputs, "inputs", self.where())
    masks = [] if mask is None else [mask]
    if prev_state is None:
      # With a cache, _attention masks by cache position instead.
      masks.insert(0, causal_mask(inputs.shape[-2]))
    return self._attention(params, inputs, inputs, inputs, masks, is_training, prev_state)
