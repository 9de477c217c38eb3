"""The declared settings of `MultiHeadAttention`, on a base class of their own.

`MultiHeadAttention` (in `_multi_head_attention`) inherits them and adds its
entry points; the split keeps each file short. The constructor, `repr`,
`config` and the `Args:` of the layer's docstring are made from these
declarations as from any module's (see `blox.graph.setting`), in this order.

Example:
  >>> from blox.nn import MultiHeadAttention
  >>> list(MultiHeadAttention.__blox_settings__)[:4]
  ['num_heads', 'rng', 'num_kv_heads', 'qkv_size']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from blox.graph import setting
from blox.nn._attention_checks import (
    check_bool, check_optional_bool, check_optional_positive, check_optional_size,
    check_projection_metadata, check_qk_norm_metadata, check_real, check_rope_base,
    check_rope_scaling,
)
from blox.nn._checks import check_positive_int
from blox.nn._dot_product_attention import check_implementation
from blox.nn._dropout import check_rate
from blox.nn._layer import Layer
from blox.nn._rope import RopeScaling
from blox.nn._stats import check_epsilon
from blox.nn.initializers import lecun_normal, ones, zeros
from blox.params import Initializer, KeySource

__all__ = ["AttentionSettings", "GroupMetadata"]

# Metadata per param group: projection (or qk_norm scale) name -> metadata.
GroupMetadata = Mapping[str, Mapping[str, Any] | None] | None


def _check_window(value: Any, name: str, where: str) -> Any:
  """`value`, None (no window) or a positive int."""
  if value is not None:
    check_positive_int(value, f"{name} (or None)", where)
  return value


class AttentionSettings(Layer):
  """The settings of `MultiHeadAttention`; see that class."""

  num_heads: int = setting(
      kw_only=False, check=check_positive_int, doc="the number of attention (query) heads.")
  rng: KeySource = setting(doc="the key source for initialisation and attention dropout.")
  num_kv_heads: int | None = setting(
      default=None, check=check_optional_size,
      doc="the number of key/value heads, a divisor of `num_heads`; None: `num_heads`.",
  )
  qkv_size: int | None = setting(
      default=None, check=check_optional_size,
      doc="the total size of the query/key/value projections (all heads together),"
      " a multiple of `num_heads`; None: the query's last axis.",
  )
  output_size: int | None = setting(
      default=None, check=check_optional_size,
      doc="the size of the output's last axis; None: the query's last axis.",
  )
  dropout_rate: float = setting(
      default=0.0, check=check_rate, doc="the dropout rate on the attention weights, in [0, 1).")
  use_bias: bool = setting(default=True, doc="whether the projections add a bias.")
  out_bias: bool | None = setting(
      default=None, check=check_optional_bool,
      doc="whether the output projection adds a bias; None: as `use_bias` (Qwen2 has"
      " query/key/value biases and none on the output).",
  )
  qk_norm: bool = setting(
      default=False, check=check_bool, doc="whether queries and keys are RMS-normalised per head.")
  qk_norm_epsilon: float = setting(
      default=1e-6, check=check_epsilon,
      doc="added to the mean of squares of `qk_norm`.")
  qk_norm_scale_offset: float = setting(
      default=0.0, check=check_real,
      doc="added to both qk_norm scales, as `RMSNorm`'s `scale_offset` (Gemma 3: 1.0"
      " with `qk_norm_scale_init=zeros`).",
  )
  rope_base: float | None = setting(
      default=None, check=check_rope_base,
      doc="None for no rotary embeddings, else the `base` of `rope` (e.g. 10000.0);"
      " needs an even head_dim.",
  )
  rope_scaling: RopeScaling | None = setting(
      default=None, check=check_rope_scaling,
      doc="None, or how the rotary frequencies are rescaled (`RopeScaling`); they"
      " are `rope_frequencies(head_dim, rope_base, rope_scaling)`. Needs `rope_base`.",
  )
  sliding_window: int | None = setting(
      default=None, check=_check_window,
      doc="None, or a positive int: a query at position q attends only to keys at"
      " positions k with `q - k < sliding_window` (itself and the"
      " `sliding_window - 1` keys before it, with a causal mask).",
  )
  query_scale: float | None = setting(
      default=None, check=check_optional_positive,
      doc="the factor on the logits; None: `1 / sqrt(head_dim)` (Gemma:"
      " `query_pre_attn_scalar ** -0.5`).",
  )
  logit_soft_cap: float | None = setting(
      default=None, check=check_optional_positive,
      doc="None, or a cap: the scaled logits become `cap * tanh(logits / cap)` before"
      " the masks and the softmax (Gemma 2); blox's attention formula computes it.",
  )
  implementation: str | None = setting(
      default=None, check=check_implementation,
      doc="that of `dot_product_attention`: None, 'xla' or 'cudnn'.",
  )
  precision: jax.lax.PrecisionLike = setting(
      default=None,
      doc="the matmul precision of the projections and attention (a precision other"
      " than None uses blox's attention formula, not jax's).",
  )
  kernel_init: Initializer = setting(
      default=lecun_normal(),
      doc="the kernels' initializer `(key, shape, dtype) -> array`, shared by the"
      " four projections.",
  )
  bias_init: Initializer = setting(
      default=zeros, doc="the biases' initializer, shared by the four projections.")
  qk_norm_scale_init: Initializer = setting(
      default=ones, doc="the initializer of both qk_norm scales, called with `key=None`.")
  projection_kernel_metadata: GroupMetadata = setting(
      default=None, check=check_projection_metadata,
      doc="the kernels' metadata per projection: a mapping from any of 'query',"
      " 'key', 'value', 'out' to that projection's kernel metadata; projections"
      " left out get none.",
  )
  projection_bias_metadata: GroupMetadata = setting(
      default=None, check=check_projection_metadata,
      doc="the same for the biases.",
  )
  qk_norm_metadata: GroupMetadata = setting(
      default=None, check=check_qk_norm_metadata,
      doc="the same for the qk_norm scales, from 'query_norm' or 'key_norm' to that"
      " scale's metadata.",
  )
