"""The forward pass of `MultiHeadAttention`, shared by its entry points.

`attention_forward` projects the inputs to heads, normalises and rotates the
queries and keys as the layer's settings ask, writes the keys and values
into a cache and attends over it when given one, and merges the heads. The
layer (`_multi_head_attention`) keeps its settings, their checks and its
entry points (`__call__`, `apply`, `decode_step`, `initial_state`), which
check their own arguments and call this. The settings are read here, at
each call, so that a setting changed after construction takes effect.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.nn import MultiHeadAttention, Rng
  >>> graph = Graph('net')
  >>> rng = Rng(graph.child('rng'))
  >>> mha = MultiHeadAttention(graph.child('mha'), 2, num_kv_heads=1, rng=rng)
  >>> x = jnp.ones((1, 3, 4))
  >>> (y, cache), params = attention_forward(
  ...     mha, rng.seed(Params(), seed=0), [('x', x)] * 3, [], is_training=False)
  >>> y.shape, cache, attention_head_dim(mha, params, [('x', x)] * 3)
  ((1, 3, 4), None, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from blox.nn._attention_checks import (
    PROJECTIONS, QK_NORMS, check_head_dim, check_input_width, check_rope_options, per_projection,
)
from blox.nn._attention_heads import merge_heads, normalize_heads, project_to_heads
from blox.nn._attention_window import check_frequencies_override, window_mask
from blox.nn._dot_product_attention import attend
from blox.nn._kv_cache import KVCache, cache_positions, extend_cache, overflow_to_nan
from blox.nn._precision import Dtypes, to_output
from blox.nn._rope import apply_rope, rope_frequencies
from blox.params import Params

if TYPE_CHECKING:
  from blox.nn._multi_head_attention import MultiHeadAttention

__all__ = ["Named", "attention_forward", "attention_head_dim", "attention_kv_heads"]

# The attended inputs, each with the name its caller gave it (for errors):
# `((name, query), (name, key), (name, value))`.
Named = Sequence[tuple[str, jax.Array]]


def attention_kv_heads(layer: MultiHeadAttention) -> int:
  """The number of key/value heads: `num_kv_heads`, else `num_heads`."""
  return layer.num_heads if layer.num_kv_heads is None else layer.num_kv_heads


def attention_head_dim(layer: MultiHeadAttention, params: Params, named: Named) -> int:
  """head_dim for these inputs, once each is checked against existing params.

  The widths are checked first: a query of another width than the params
  were made for would otherwise give another head_dim, and the error would
  blame the configuration rather than the input.
  """
  for projection, (name, array) in zip(PROJECTIONS, named):
    check_input_width(layer, params, projection, array, name)
  query = named[0][1]
  return check_head_dim(
      layer.qkv_size or query.shape[-1], layer.num_heads, layer.rope_base, layer.where(),
      from_query=layer.qkv_size is None,
  )


def attention_forward(
    layer: MultiHeadAttention,
    params: Params,
    named: Named,
    masks: list[Any],
    is_training: bool,
    cache: KVCache | None = None,
    *,
    window: Any = None,
    frequencies: Any = None,
    positions: Any = None,
) -> tuple[tuple[jax.Array, KVCache | None], Params]:
  """`((outputs, new_cache), params)`: `layer` applied to the checked inputs.

  Projects, attends (over `cache` too, written first, if given) and merges.
  On first use the RNG draws come in the order query, key and value params,
  the dropout key (if any), then the out params (the qk_norm scales draw
  none). `masks` are combined with the cache's own mask and the sliding
  window's. `window` and `frequencies` are the per-call overrides of the
  `sliding_window` setting and of the rotary frequencies (None: the
  layer's), checked by the caller. `positions` (no cache) are the tokens'
  positions for the rotary embeddings and the window (None: `arange`).
  """
  where = layer.where()
  head_dim = attention_head_dim(layer, params, named)
  check_rope_options(layer.rope_base, layer.rope_scaling, where)
  check_frequencies_override(frequencies, layer.rope_base, head_dim, where)
  (_, query), (_, key), (_, value) = named
  length = query.shape[-2]
  given = positions is not None
  positions = check_positions(positions, query, where) if given else jnp.arange(length, dtype=jnp.int32)
  if cache is not None:
    positions = cache_positions(
        cache, tuple(query.shape[:-2]), length, num_heads=attention_kv_heads(layer),
        head_dim=head_dim, where=where,
    )
  dtypes = layer.dtypes()
  q, params = _project(layer, params, "query", query, head_dim, dtypes)
  k, params = _project(layer, params, "key", key, head_dim, dtypes)
  v, params = _project(layer, params, "value", value, head_dim, dtypes)
  if layer.qk_norm:
    q, params = _normalize(layer, params, "query_norm", q, dtypes)
    k, params = _normalize(layer, params, "key_norm", k, dtypes)
  if layer.rope_base is not None:
    if frequencies is None and layer.rope_scaling is not None:
      frequencies = rope_frequencies(head_dim, layer.rope_base, layer.rope_scaling)
    # The caller made sure that key and query have the same length. Without
    # frequencies, those of the base (as `rope` makes them, bit for bit).
    q, k = (apply_rope(x, positions, layer.rope_base, where, frequencies) for x in (q, k))
  if cache is not None:
    cache, visible = extend_cache(cache, k, v)
    k, v, masks = cache.key, cache.value, [visible, *masks]
  # Self-attention without a cache: the keys sit where the queries do.
  kv_positions = positions if given else jnp.arange(k.shape[-3], dtype=jnp.int32)
  window = layer.sliding_window if window is None else window
  # A window as long as the keys hides none of them: left out, so that the
  # attention keeps the mask (and the fused path) it has without one.
  if window is not None and not (isinstance(window, int) and window >= k.shape[-3]):
    masks = [*masks, window_mask(positions, kv_positions, window)]
  dropout_key = None
  if is_training and layer.dropout_rate > 0.0:
    dropout_key, params = layer.rng(params)
  attended = attend(
      q, k, v, masks, where, scale=layer.query_scale, logit_soft_cap=layer.logit_soft_cap,
      dropout_rate=layer.dropout_rate, dropout_key=dropout_key,
      precision=layer.precision, implementation=layer.implementation, module=layer,
      params=params,
  )
  outputs, params = merge_heads(
      layer, params, "out", attended, output_size=layer.output_size or query.shape[-1],
      **_options(layer, "out", dtypes),
  )
  if cache is not None:
    outputs = overflow_to_nan(outputs, positions, cache.key.shape[-3])
  return (to_output(dtypes, outputs), cache), params


def check_positions(positions: Any, query: jax.Array, where: str) -> jax.Array:
  """`positions` as int32 `[*batch, length]` or `[length]` for `query`'s tokens."""
  positions = jnp.asarray(positions)
  shape, length = tuple(positions.shape), query.shape[-2]
  if not jnp.issubdtype(positions.dtype, jnp.integer) or shape not in (
      (length,), (*query.shape[:-2], length)):
    raise ValueError(
        f"{where}: positions must be integers [*batch, length] or [length] for inputs"
        f" of shape {tuple(query.shape)}; got {positions.dtype}{list(shape)}.")
  return jnp.astype(positions, jnp.int32)


def _project(
    layer: MultiHeadAttention,
    params: Params,
    name: str,
    inputs: jax.Array,
    head_dim: int,
    dtypes: Dtypes,
) -> tuple[jax.Array, Params]:
  """The query, key or value projection of `inputs` to heads."""
  num_heads = layer.num_heads if name == "query" else attention_kv_heads(layer)
  return project_to_heads(
      layer, params, name, inputs, num_heads=num_heads, head_dim=head_dim,
      **_options(layer, name, dtypes),
  )


def _options(layer: MultiHeadAttention, name: str, dtypes: Dtypes) -> dict[str, Any]:
  """The arguments of projection `name` but its sizes."""
  where = layer.where()
  kernels = per_projection(layer.projection_kernel_metadata, "projection_kernel_metadata", where)
  biases = per_projection(layer.projection_bias_metadata, "projection_bias_metadata", where)
  use_bias = layer.use_bias
  if name == "out" and layer.out_bias is not None:
    use_bias = layer.out_bias
  return {
      "kernel_init": layer.kernel_init, "bias_init": layer.bias_init, "rng": layer.rng,
      "use_bias": use_bias, "kernel_metadata": kernels.get(name),
      "bias_metadata": biases.get(name), "precision": layer.precision,
      "param_dtype": dtypes.param, "dtype": dtypes.compute,
  }


def _normalize(
    layer: MultiHeadAttention, params: Params, name: str, x: jax.Array, dtypes: Dtypes
) -> tuple[jax.Array, Params]:
  """Query or key heads `x` RMS-normalised (`qk_norm`)."""
  metadata = per_projection(layer.qk_norm_metadata, "qk_norm_metadata", layer.where(), QK_NORMS)
  return normalize_heads(
      layer, params, name, x, scale_init=layer.qk_norm_scale_init,
      scale_metadata=metadata.get(name), epsilon=layer.qk_norm_epsilon,
      scale_offset=layer.qk_norm_scale_offset, param_dtype=dtypes.param,
  )
