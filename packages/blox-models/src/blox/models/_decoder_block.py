"""`DecoderBlock`: one layer of a pretrained causal LM, every family's switches in one place.

    x + attention(norm(x))        [Gemma: x + post_norm(attention(norm(x)))]
    x + mlp(norm(x))              [Gemma: x + post_norm(mlp(norm(x)))]

The attention is `blox.nn.MultiHeadAttention` (grouped-query, rotary
positions, q/k norms, a sliding window, soft-capped logits as the config
says) and the MLP `blox.nn.GatedMLP` or `blox.nn.MLP`. What differs from
one layer of a stack to the next (Gemma's local and global layers: the
window and the rotary frequencies) comes in as data, `LayerInputs`, so that
one `Repeat` scan runs every layer.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> from blox.models._config import ModelConfig
  >>> config = ModelConfig.from_hf({
  ...     'model_type': 'llama', 'vocab_size': 16, 'hidden_size': 8, 'intermediate_size': 16,
  ...     'num_hidden_layers': 1, 'num_attention_heads': 2, 'num_key_value_heads': 1})
  >>> block = DecoderBlock(Graph('net').child('block'), config, rng=constant_keys)
  >>> inputs = layer_inputs(config)
  >>> (y, _), params = block(Params(), jnp.ones((1, 3, 8)), (inputs.slice(0), None))
  >>> y.shape
  (1, 3, 8)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module, setting
from blox.models._config import ModelConfig
from blox.nn import GatedMLP, KVCache, LayerNorm, MLP, MultiHeadAttention, RMSNorm, rope_frequencies
from blox.params import SHARDING, KeySource, Params

__all__ = [
    "NO_WINDOW", "DecoderBlock", "LayerInputs", "axes", "constant_keys", "layer_inputs", "make_norm",
]

# A window no sequence reaches: the layer attends to every earlier position.
NO_WINDOW = 2**30


def constant_keys(params: Params) -> tuple[jax.Array, Params]:
  """A key source for params whose values come from a checkpoint: it draws
  nothing (one fixed key), so the model's structure can be traced without
  an `Rng` in the params."""
  return jax.random.key(0), params


def axes(*names: str | None) -> dict[str, tuple[str | None, ...]]:
  """Sharding metadata naming each dimension's logical axis."""
  return {SHARDING: names}


class LayerInputs(NamedTuple):
  """What one layer of the stack gets besides the activations (stacked
  over layers, each leaf with a leading `num_layers` axis).

  A field every layer would get alike is None instead, and the attention
  uses its own settings: no window mask, rotary frequencies as constants.
  Fed as data, each would cost every layer of every decoded token a slice
  and a mask computed at run time.
  """

  window: jax.Array | None
  """int32: the sliding window, `NO_WINDOW` for a global layer; None when no
  layer has one."""
  frequencies: jax.Array | None
  """float32 `[head_dim // 2]`: the rotary frequencies; None without rotary
  positions, or when every layer has the same ones (the attention's own)."""

  def slice(self, index: int) -> LayerInputs:
    """Layer `index`'s inputs."""
    return LayerInputs(*(None if leaf is None else leaf[index] for leaf in self))


def layer_inputs(config: ModelConfig) -> LayerInputs:
  """Every layer's window and rotary frequencies, stacked over layers (None
  for what every layer shares: see `LayerInputs`)."""
  windows = None
  if any(w is not None for w in config.sliding_windows):
    windows = jnp.asarray(
        [NO_WINDOW if w is None else w for w in config.sliding_windows], jnp.int32)
  frequencies = None
  if config.rope is not None and len(set(config.rope)) > 1:
    frequencies = jnp.stack([
        rope_frequencies(config.head_dim, layer.base, layer.scaling) for layer in config.rope])
  return LayerInputs(windows, frequencies)


def make_norm(config: ModelConfig, param_dtype: Any, graph: Graph) -> RMSNorm | LayerNorm:
  """The family's norm: RMSNorm (Gemma's with `1 + scale`) or LayerNorm."""
  if config.norm == "layer":
    return LayerNorm(graph, epsilon=config.norm_epsilon, scale_metadata=axes("embed"),
                     bias_metadata=axes("embed"), param_dtype=param_dtype)
  offset = config.norm_offset
  return RMSNorm(
      graph, epsilon=config.norm_epsilon, scale_offset=offset,
      scale_init=jax.nn.initializers.zeros if offset else jax.nn.initializers.ones,
      scale_metadata=axes("embed"), param_dtype=param_dtype,
  )


class DecoderBlock(Module):
  """One pre-norm decoder layer, as `config` describes it (see the module docstring)."""

  architecture: ModelConfig = setting(kw_only=False, doc="what it computes.")
  rng: KeySource = setting(doc="draws the initial values of freshly created params.")
  param_dtype: Any = setting(default=None, doc="the dtype params are created in.")

  def __post_init__(self) -> None:
    config, node = self.architecture, self.graph.child
    self.attention_norm = make_norm(config, self.param_dtype, node("attention_norm"))
    head_axes = {"query": axes("embed", "heads", "head_dim"),
                 "key": axes("embed", "kv_heads", "head_dim"),
                 "value": axes("embed", "kv_heads", "head_dim"),
                 "out": axes("heads", "head_dim", "embed")}
    bias_axes = {"query": axes("heads", "head_dim"), "key": axes("kv_heads", "head_dim"),
                 "value": axes("kv_heads", "head_dim"), "out": axes("embed")}
    gemma_scale = config.norm_offset != 0.0
    self.attention = MultiHeadAttention(
        node("attention"), config.num_heads, rng=self.rng, num_kv_heads=config.num_kv_heads,
        qkv_size=config.num_heads * config.head_dim, output_size=config.hidden_size,
        use_bias=config.qkv_bias, out_bias=config.out_bias, qk_norm=config.qk_norm,
        qk_norm_epsilon=config.norm_epsilon, qk_norm_scale_offset=config.norm_offset,
        qk_norm_scale_init=jax.nn.initializers.zeros if gemma_scale else jax.nn.initializers.ones,
        qk_norm_metadata={"query_norm": axes("head_dim"), "key_norm": axes("head_dim")},
        rope_base=None if config.rope is None else config.rope[0].base,
        # Used when every layer has the same rotary positions (see LayerInputs).
        rope_scaling=None if config.rope is None else config.rope[0].scaling,
        query_scale=config.query_scale, logit_soft_cap=config.attention_soft_cap,
        projection_kernel_metadata=head_axes, projection_bias_metadata=bias_axes,
        param_dtype=self.param_dtype,
    )
    self.post_attention_norm = make_norm(config, self.param_dtype, node("post_attention_norm")) if config.sandwich_norms else None
    self.mlp_norm = make_norm(config, self.param_dtype, node("mlp_norm"))
    activation: Callable[[jax.Array], jax.Array] = (
        jax.nn.silu if config.activation == "silu"
        else functools.partial(jax.nn.gelu, approximate=True))
    kernels = {"up": axes("embed", "mlp"), "down": axes("mlp", "embed")}
    biases = {"up": axes("mlp"), "down": axes("embed")}
    if config.gated_mlp:
      kernels["gate"], biases["gate"] = axes("embed", "mlp"), axes("mlp")
    mlp_type = GatedMLP if config.gated_mlp else MLP
    self.mlp = mlp_type(
        node("mlp"), config.intermediate_size, rng=self.rng, activation=activation,
        use_bias=config.mlp_bias, kernel_metadata=kernels,
        bias_metadata=biases if config.mlp_bias else None, param_dtype=self.param_dtype,
    )
    self.post_mlp_norm = make_norm(config, self.param_dtype, node("post_mlp_norm")) if config.sandwich_norms else None

  def __call__(
      self, params: Params, x: jax.Array, own: tuple[LayerInputs, KVCache | None],
      *, mask: jax.Array | None = None, positions: jax.Array | None = None,
  ) -> tuple[tuple[jax.Array, KVCache | None], Params]:
    """The layer over `x [batch, length, hidden]`, causal. `own` is this
    layer's `(LayerInputs, cache)`; with a cache (not None) the sequence is a
    prefill, or for length 1 a decoding step, at the cache's positions.

    `mask` hides keys (padding); `positions` (no cache) place the tokens.

    Returns `((x, new_cache), params)`, the form `Repeat.scan` runs.
    """
    inputs, cache = own
    h, params = self.attention_norm(params, x)
    (h, cache), params = self.attention.apply(
        params, h, cache, mask=mask, is_training=False, sliding_window=inputs.window,
        rope_frequencies=inputs.frequencies, positions=positions,
    )
    if self.post_attention_norm is not None:
      h, params = self.post_attention_norm(params, h)
    x = x + h
    h, params = self.mlp_norm(params, x)
    h, params = self.mlp(params, h)
    if self.post_mlp_norm is not None:
      h, params = self.post_mlp_norm(params, h)
    return (x + h, cache), params
