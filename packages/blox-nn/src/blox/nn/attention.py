"""`MultiHeadAttention`: scaled dot-product attention over several heads.

The layer is both a plain attention layer and a sequence model for
autoregressive decoding: `initial_state` allocates a key/value cache,
`__call__(..., prev_state=cache)` decodes one token, and `apply` runs a whole
sequence with a causal mask.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> mha = MultiHeadAttention(graph.child('mha'), num_heads=2, rng=rng)
  >>> x = jnp.ones((1, 5, 8))  # [batch, length, features]
  >>> y, params = mha(rng.seed(Params(), seed=0), x)
  >>> y.shape
  (1, 5, 8)
  >>> cache, params = mha.initial_state(params, x[:, 0], max_length=5)
  >>> (y0, cache), params = mha(params, x[:, 0], prev_state=cache)
  >>> y0.shape, cache.position.tolist()
  ((1, 8), [1])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple, overload

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module, SequenceBase
from blox.nn._checks import check_is_training, check_positive_int
from blox.nn._dropout import _drop
from blox.nn.initializers import Initializer, lecun_normal, zeros
from blox.params import KeySource, Params

__all__ = ["KVCache", "MultiHeadAttention"]


class KVCache(NamedTuple):
  """The decoding state of `MultiHeadAttention`: the projected keys and values.

  Attributes:
    key: `[*batch, max_length, num_heads, head_dim]`.
    value: same shape as `key`.
    position: int32 `[*batch]`, the position the next token is written to,
      per batch element. Cache positions at or after it are masked out.

  Every leaf has the batch axes first, so a batch element can be reset to the
  empty cache on its own (e.g. with `blox.graph.sequence.maybe_reset_state`).
  """

  key: jax.Array
  value: jax.Array
  position: jax.Array


def _flat_init(init: Initializer, fan_in_dims: int) -> Initializer:
  """Runs `init` on the 2-D `(fan_in, fan_out)` shape and reshapes the result.

  Variance-scaling initializers read fan-in and fan-out from the last two axes;
  on a per-head kernel such as `[in, heads, head_dim]` they would take `heads`
  as the fan-in. Initialising the flat matrix keeps their scale the one a
  `Linear` of the same size would get.
  """

  def flat(key: Any, shape: Any, dtype: Any = jnp.float32) -> Any:
    fan_in = math.prod(shape[:fan_in_dims])
    fan_out = math.prod(shape[fan_in_dims:])
    flat_shape = (fan_in, fan_out) if fan_in_dims else (fan_out,)
    return jnp.reshape(init(key, flat_shape, dtype), shape)

  return flat


class _SplitHeads(Module):
  """Projects `[..., in]` to `[..., heads, head_dim]` (kernel `[in, heads, head_dim]`)."""

  def __init__(self, graph: Graph, owner: MultiHeadAttention) -> None:
    super().__init__(graph)
    self.owner = owner

  def __call__(
      self, params: Params, inputs: jax.Array, head_dim: int
  ) -> tuple[jax.Array, Params]:
    o = self.owner
    kernel, params = self.get_param(
        params, "kernel", (inputs.shape[-1], o.num_heads, head_dim),
        _flat_init(o.kernel_init, 1), rng=o.rng, metadata=o.kernel_metadata,
    )
    outputs = jnp.einsum("...i,ihd->...hd", inputs, kernel, precision=o.precision)
    if o.use_bias:
      bias, params = self.get_param(
          params, "bias", (o.num_heads, head_dim), _flat_init(o.bias_init, 0),
          rng=o.rng, metadata=o.bias_metadata,
      )
      outputs = outputs + bias
    return outputs, params


class _MergeHeads(Module):
  """Projects `[..., heads, head_dim]` to `[..., out]` (kernel `[heads, head_dim, out]`)."""

  def __init__(self, graph: Graph, owner: MultiHeadAttention) -> None:
    super().__init__(graph)
    self.owner = owner

  def __call__(
      self, params: Params, inputs: jax.Array, out_features: int
  ) -> tuple[jax.Array, Params]:
    o = self.owner
    kernel, params = self.get_param(
        params, "kernel", (*inputs.shape[-2:], out_features),
        _flat_init(o.kernel_init, 2), rng=o.rng, metadata=o.kernel_metadata,
    )
    outputs = jnp.einsum("...hd,hdo->...o", inputs, kernel, precision=o.precision)
    if o.use_bias:
      bias, params = self.get_param(
          params, "bias", (out_features,), o.bias_init,
          rng=o.rng, metadata=o.bias_metadata,
      )
      outputs = outputs + bias
    return outputs, params


class MultiHeadAttention(SequenceBase):
  """Multi-head scaled dot-product attention, `softmax(q k^T / sqrt(d)) v`.

  Params. The projections are child modules with a per-head layout, bound to
  the child nodes 'query', 'key', 'value' and 'out' of `graph`:

    query/kernel  [q_features, num_heads, head_dim]   query/bias [num_heads, head_dim]
    key/kernel    [kv_features, num_heads, head_dim]  key/bias   [num_heads, head_dim]
    value/kernel  [kv_features, num_heads, head_dim]  value/bias [num_heads, head_dim]
    out/kernel    [num_heads, head_dim, out_features] out/bias   [out_features]

  where `head_dim = qkv_features // num_heads`. The heads get their own axis,
  so a sharding over heads is one metadata entry (e.g. `(None, 'model', None)`
  for the input kernels). Initializers are called with the flat 2-D shape
  `(fan_in, fan_out)` and the result is reshaped, so fan-based initializers
  scale as they would for a `Linear` of the same size. `kernel_metadata` and
  `bias_metadata` are given to every kernel and bias alike.

  Masks are boolean (True = attend) and broadcast to
  `[*batch, num_heads, q_length, kv_length]`. A query row whose keys are all
  masked out attends uniformly to every key.

  Dropout acts on the attention weights: one key is drawn from `rng` per call
  with `is_training=True` and `dropout_rate > 0`, none otherwise.

  Decoding. `initial_state(params, step, max_length=n)` allocates a `KVCache`;
  `__call__(params, step, prev_state=cache)` takes one token `[*batch,
  features]`, writes its key and value at `cache.position`, attends to the
  positions `<= cache.position` and returns `((output, new_cache), params)`.
  `apply` runs a whole sequence with a causal mask (into a cache when
  `prev_state` is given). Decoding token by token gives the same outputs as
  `apply` on the whole sequence. Writing past `max_length` is an error when
  the position is known outside of `jax.jit`; under jit, where it is not
  known while tracing, tokens past the end are not written and their
  outputs are NaN (the tokens that fit are written and attended as usual).

  Args:
    graph: the node this layer binds to; it gets the children 'query', 'key',
      'value' and 'out'.
    num_heads: the number of attention heads.
    rng: the key source for initialisation and attention dropout.
    qkv_features: the total size of the query/key/value projections (all
      heads together); defaults to the last axis of the query. Must be
      divisible by `num_heads`.
    out_features: the size of the output's last axis; defaults to the last
      axis of the query.
    dropout_rate: the dropout rate on the attention weights, in [0, 1).
    use_bias: whether the projections add a bias.
    kernel_init, bias_init: initializers `(key, shape, dtype) -> array`.
    kernel_metadata, bias_metadata: metadata for the kernels and biases.
    precision: the matmul precision of the projections and attention.
  """

  def __init__(
      self,
      graph: Graph,
      num_heads: int,
      rng: KeySource,
      qkv_features: int | None = None,
      out_features: int | None = None,
      dropout_rate: float = 0.0,
      use_bias: bool = True,
      kernel_init: Initializer = lecun_normal(),
      bias_init: Initializer = zeros,
      kernel_metadata: Mapping[str, Any] | None = None,
      bias_metadata: Mapping[str, Any] | None = None,
      precision: jax.lax.PrecisionLike = None,
  ) -> None:
    super().__init__(graph)
    where = self.where()
    check_positive_int(num_heads, "num_heads", where)
    for name, size in (("qkv_features", qkv_features), ("out_features", out_features)):
      if size is not None:
        check_positive_int(size, f"{name} (or None)", where)
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"{where}: dropout_rate must be in [0, 1), got {dropout_rate}.")
    self.num_heads = num_heads
    self.rng = rng
    self.qkv_features = qkv_features
    self.out_features = out_features
    self.dropout_rate = dropout_rate
    self.use_bias = use_bias
    self.kernel_init = kernel_init
    self.bias_init = bias_init
    self.kernel_metadata = kernel_metadata
    self.bias_metadata = bias_metadata
    self.precision = precision
    if qkv_features is not None:
      self._head_dim(qkv_features)
    self.query_proj = _SplitHeads(graph.child("query"), self)
    self.key_proj = _SplitHeads(graph.child("key"), self)
    self.value_proj = _SplitHeads(graph.child("value"), self)
    self.out_proj = _MergeHeads(graph.child("out"), self)

  def _head_dim(self, qkv_features: int) -> int:
    if qkv_features % self.num_heads:
      raise ValueError(
          f"{self.where()}: qkv_features={qkv_features} is not"
          f" divisible by num_heads={self.num_heads}; pick qkv_features as a multiple"
          " of num_heads (it defaults to the query's last axis)."
      )
    return qkv_features // self.num_heads

  def _sizes(self, query: jax.Array) -> tuple[int, int]:
    """`(head_dim, out_features)` for this query."""
    features = query.shape[-1]
    head_dim = self._head_dim(self.qkv_features or features)
    return head_dim, self.out_features or features

  # Attention proper.

  def _check_mask(self, mask: Any, logits_shape: tuple[int, ...]) -> jax.Array:
    array = jnp.asarray(mask)
    if array.dtype != jnp.bool_:
      raise TypeError(
          f"{self.where()}: the mask must be boolean (True ="
          f" attend), got dtype {array.dtype}; convert it with mask.astype(bool)."
      )
    try:
      shape = jnp.broadcast_shapes(array.shape, logits_shape)
    except ValueError:
      shape = ()
    if shape != logits_shape:
      raise ValueError(
          f"{self.where()}: the mask of shape {array.shape} does"
          f" not broadcast to [*batch, heads, q_length, kv_length] = {logits_shape}."
      )
    return array

  def _attend(
      self,
      params: Params,
      query: jax.Array,
      key: jax.Array,
      value: jax.Array,
      masks: list[Any],
      is_training: bool,
  ) -> tuple[jax.Array, Params]:
    """Attention of `query [..., q, h, d]` over `key`/`value [..., k, h, d]`."""
    scale = jnp.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
    logits = jnp.einsum(
        "...qhd,...khd->...hqk", query * scale, key, precision=self.precision
    )
    if masks:
      allowed = jnp.ones((), jnp.bool_)
      for mask in masks:
        allowed = allowed & self._check_mask(mask, logits.shape)
      # The lowest finite value (not -inf) keeps a fully masked row finite.
      # jnp.finfo has no annotations.
      lowest = jnp.finfo(logits.dtype).min  # type: ignore[no-untyped-call]
      logits = jnp.where(allowed, logits, lowest)
    weights = jax.nn.softmax(logits, axis=-1)
    if is_training and self.dropout_rate > 0.0:
      dropout_key, params = self.rng(params)
      weights = _drop(dropout_key, weights, self.dropout_rate, self.where())
    outputs = jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=self.precision)
    return outputs, params

  # The signature differs from SequenceBase's: the third argument is `key`, as
  # attention layers have it; a KVCache given there is taken as prev_state.
  @overload  # type: ignore[override]
  def __call__(
      self,
      params: Params,
      query: jax.Array,
      key: jax.Array | None = None,
      value: jax.Array | None = None,
      mask: jax.Array | None = None,
      is_training: bool = True,
      prev_state: None = None,
  ) -> tuple[jax.Array, Params]: ...

  @overload
  def __call__(
      self,
      params: Params,
      query: jax.Array,
      key: None = None,
      value: None = None,
      mask: jax.Array | None = None,
      is_training: bool = True,
      *,
      prev_state: KVCache,
  ) -> tuple[tuple[jax.Array, KVCache], Params]: ...

  @overload
  def __call__(
      self,
      params: Params,
      query: jax.Array,
      key: KVCache,
      value: None = None,
      mask: jax.Array | None = None,
      is_training: bool = True,
      prev_state: None = None,
  ) -> tuple[tuple[jax.Array, KVCache], Params]: ...

  def __call__(
      self,
      params: Params,
      query: jax.Array,
      key: jax.Array | KVCache | None = None,
      value: jax.Array | None = None,
      mask: jax.Array | None = None,
      is_training: bool = True,
      prev_state: KVCache | None = None,
  ) -> tuple[Any, Params]:
    """Attends from `query` to `key`/`value`, or decodes one token.

    Without `prev_state`: `query [*batch, q_length, q_features]`, `key
    [*batch, kv_length, kv_features]` (defaults to `query`: self-attention)
    and `value` (defaults to `key`); returns `(outputs [*batch, q_length,
    out_features], params)`.

    With `prev_state` (a `KVCache` from `initial_state`): `query [*batch,
    features]` is one token of self-attention; returns `((outputs [*batch,
    out_features], new_cache), params)`. `mask`, if given, broadcasts to
    `[*batch, heads, 1, max_length]` and is combined with the cache's mask.

    A `KVCache` passed in the place of `key`, as in the `SequenceBase` call
    `module(params, inputs, prev_state)`, is taken as `prev_state`.
    `is_training` must be a Python bool (static under `jax.jit`).
    """
    check_is_training(is_training, self.where())
    if isinstance(key, KVCache):
      if prev_state is not None:
        raise ValueError(
            f"{self.where()}: got a KVCache both as key and"
            " as prev_state; pass it once, as prev_state."
        )
      key, prev_state = None, key
    if prev_state is not None:
      if key is not None or value is not None:
        raise ValueError(
            f"{self.where()}: decoding with prev_state is"
            " self-attention over the cache; do not pass key or value."
        )
      if jnp.ndim(query) < 1:
        raise ValueError(
            f"{self.where()}: a decoding step needs a query of"
            " shape [*batch, features]; got a scalar."
        )
      (outputs, cache), params = self._decode(
          params, query[..., None, :], prev_state, mask, is_training
      )
      return (outputs[..., 0, :], cache), params
    if key is None:
      key = query
    if value is None:
      value = key
    for name, array in (("query", query), ("key", key), ("value", value)):
      if jnp.ndim(array) < 2:
        raise ValueError(
            f"{self.where()}: {name} needs shape [*batch,"
            f" length, features]; got shape {jnp.shape(array)}. For one decoding"
            " step, pass prev_state=cache."
        )
    if key.shape[:-1] != value.shape[:-1]:
      raise ValueError(
          f"{self.where()}: key {key.shape} and value"
          f" {value.shape} must agree on every axis but the last."
      )
    head_dim, out_features = self._sizes(query)
    q, params = self.query_proj(params, query, head_dim)
    k, params = self.key_proj(params, key, head_dim)
    v, params = self.value_proj(params, value, head_dim)
    masks = [] if mask is None else [mask]
    attended, params = self._attend(params, q, k, v, masks, is_training)
    return self.out_proj(params, attended, out_features)

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
      inputs: one step `[*batch, features]`; gives the batch shape, the
        default `qkv_features` and the default dtype.
      max_length: the number of positions of the cache.
      dtype: the cache dtype; defaults to the dtype of `inputs`.
    """
    check_positive_int(max_length, "max_length", self.where())
    if jnp.ndim(inputs) < 1:
      raise ValueError(
          f"{self.where()}: initial_state needs one step of"
          " shape [*batch, features]; got a scalar."
      )
    head_dim, _ = self._sizes(inputs)
    shape = (*inputs.shape[:-1], max_length, self.num_heads, head_dim)
    dtype = inputs.dtype if dtype is None else dtype
    empty = jnp.zeros(shape, dtype)
    position = jnp.zeros(inputs.shape[:-1], jnp.int32)
    return KVCache(empty, empty, position), params

  @overload
  def apply(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: None = None,
      mask: jax.Array | None = None,
      is_training: bool = True,
  ) -> tuple[tuple[jax.Array, None], Params]: ...

  @overload
  def apply(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: KVCache,
      mask: jax.Array | None = None,
      is_training: bool = True,
  ) -> tuple[tuple[jax.Array, KVCache], Params]: ...

  def apply(
      self,
      params: Params,
      inputs: jax.Array,
      prev_state: KVCache | None = None,
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
    if jnp.ndim(inputs) < 2:
      raise ValueError(
          f"{self.where()}: apply needs inputs of shape"
          f" [*batch, length, features]; got shape {jnp.shape(inputs)}."
      )
    if prev_state is not None:
      return self._decode(params, inputs, prev_state, mask, is_training)
    length = inputs.shape[-2]
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
    head_dim, out_features = self._sizes(inputs)
    q, params = self.query_proj(params, inputs, head_dim)
    k, params = self.key_proj(params, inputs, head_dim)
    v, params = self.value_proj(params, inputs, head_dim)
    masks: list[Any] = [causal] if mask is None else [causal, mask]
    attended, params = self._attend(params, q, k, v, masks, is_training)
    outputs, params = self.out_proj(params, attended, out_features)
    return (outputs, None), params

  def _decode(
      self,
      params: Params,
      inputs: jax.Array,
      cache: KVCache,
      mask: jax.Array | None,
      is_training: bool,
  ) -> tuple[tuple[jax.Array, KVCache], Params]:
    """Writes `inputs [*batch, length, features]` into the cache and attends."""
    head_dim, out_features = self._sizes(inputs)
    length = inputs.shape[-2]
    batch = tuple(inputs.shape[:-2])
    max_length = self._check_cache(cache, batch, head_dim)
    position = jnp.asarray(cache.position, jnp.int32)
    if not isinstance(position, jax.core.Tracer):
      # Outside of jit the position is known: refuse to write past the end,
      # which under jit only shows as NaN outputs.
      last = int(jnp.max(position, initial=0)) + length
      if last > max_length:
        raise ValueError(
            f"{self.where()}: the cache is full: writing"
            f" {length} token(s) reaches position {last}, past its"
            f" max_length={max_length}. Make a longer cache with initial_state."
        )
    q, params = self.query_proj(params, inputs, head_dim)
    k, params = self.key_proj(params, inputs, head_dim)
    v, params = self.value_proj(params, inputs, head_dim)
    keys = _write(cache.key, k, position)
    values = _write(cache.value, v, position)
    # Query i of batch element b sits at position[b] + i and sees the
    # cache up to there: visible is [*batch, 1 (heads), length, max_length].
    q_positions = position[..., None] + jnp.arange(length, dtype=jnp.int32)
    kv_positions = jnp.arange(max_length, dtype=jnp.int32)
    visible = (kv_positions <= q_positions[..., None])[..., None, :, :]
    masks: list[Any] = [visible] if mask is None else [visible, mask]
    attended, params = self._attend(params, q, keys, values, masks, is_training)
    outputs, params = self.out_proj(params, attended, out_features)
    # Under jit the position is not known when tracing. _write drops the
    # tokens past the end (the ones that fit are stored where they belong);
    # make the outputs of the dropped ones NaN, so the mistake shows instead
    # of passing for a result.
    overflow = q_positions >= max_length
    outputs = jnp.where(overflow[..., None], jnp.nan, outputs)
    return (outputs, KVCache(keys, values, position + length)), params

  def _check_cache(self, cache: Any, batch: tuple[int, ...], head_dim: int) -> int:
    """Checks `cache` against the inputs and returns its `max_length`."""
    if not isinstance(cache, KVCache):
      raise TypeError(
          f"{self.where()}: prev_state must be the KVCache"
          f" from initial_state, got {type(cache).__name__}."
      )
    shape = tuple(cache.key.shape)
    if (
        len(shape) != len(batch) + 3
        or shape[:-3] != batch
        or shape[-2:] != (self.num_heads, head_dim)
        or tuple(cache.value.shape) != shape
        or tuple(jnp.shape(cache.position)) != batch
    ):
      raise ValueError(
          f"{self.where()}: the cache holds keys {shape},"
          f" values {tuple(cache.value.shape)} and position"
          f" {tuple(jnp.shape(cache.position))}, but inputs with batch axes {batch}"
          f" need keys and values [*batch, max_length, {self.num_heads},"
          f" {head_dim}] and position [*batch]. Make the cache with initial_state."
      )
    return shape[-3]


def _write(cache: jax.Array, update: jax.Array, position: jax.Array) -> jax.Array:
  """Writes `update [*batch, length, ...]` into `cache [*batch, max_length, ...]`
  from `position[b]` on, for every batch element `b`.

  A scatter, not `dynamic_update_slice`: the latter clamps its start so that
  the whole block fits, which would shift a block that runs past the end
  backwards over earlier tokens. Here the slots past `max_length` are
  dropped and the tokens that fit land at their own positions.
  """
  tail = cache.shape[-3:]
  flat_cache = jnp.reshape(cache, (-1, *tail))
  flat_update = jnp.reshape(update.astype(cache.dtype), (-1, *update.shape[-3:]))
  rows = jnp.arange(flat_cache.shape[0])[:, None]
  cols = jnp.reshape(position, (-1, 1)) + jnp.arange(flat_update.shape[1], dtype=position.dtype)
  written = flat_cache.at[rows, cols].set(flat_update, mode="drop")
  return jnp.reshape(written, cache.shape)
