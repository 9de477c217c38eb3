"""`quantization_report`: how closely a quantized model follows the float one.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.models import create, quantize
  >>> model, params = create({'model_type': 'llama', 'vocab_size': 16, 'hidden_size': 16,
  ...     'intermediate_size': 32, 'num_hidden_layers': 1, 'num_attention_heads': 2})
  >>> model, quantized = quantize(model, params, bits=8)
  >>> report = quantization_report(model, params, quantized, jnp.array([[1, 2, 3, 4, 5]]))
  >>> report.agreement >= 0.75, abs(report.loss_change) < 0.05
  (True, True)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from blox.graph import Module
from blox.params import Params

__all__ = ["QuantizationReport", "quantization_report"]


class QuantizationReport(NamedTuple):
  """The figures of `quantization_report`.

  Attributes:
    agreement: the fraction of (unmasked) positions whose top-1 next token is
      the same under both params.
    float_loss: the next-token cross-entropy of the float params.
    quantized_loss: the same under the quantized params.
    loss_change: `quantized_loss / float_loss - 1` (0.01 is 1% worse).
  """

  agreement: float
  float_loss: float
  quantized_loss: float
  loss_change: float


def _figures(logits: jax.Array, ids: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(top-1 predictions, mean next-token loss) of logits `[batch, length, vocab]`."""
  predicted = logits[:, :-1].astype(jnp.float32)
  log_probs = jax.nn.log_softmax(predicted, axis=-1)
  targets = jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
  loss = -jnp.sum(targets * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  return jnp.argmax(predicted, axis=-1), loss


def quantization_report(
    model: Module, float_params: Params, quantized_params: Params, ids: jax.Array,
    *, mask: jax.Array | None = None,
) -> QuantizationReport:
  """Top-1 agreement and next-token loss of `quantized_params` against `float_params`.

  Args:
    model: a causal LM, `logits, _ = model(params, ids, mask=mask)`, that runs
      both (the model `quantize` returned runs float params too).
    float_params: the params before quantization.
    quantized_params: what `quantize` made of them.
    ids: int token ids `[batch, length]`, length at least 2.
    mask: optional `[batch, length]`, 1 for real tokens: a position counts
      when it and the token it predicts are both real.
  """
  ids = jnp.asarray(ids)
  if ids.ndim != 2 or ids.shape[1] < 2:
    raise ValueError(
        f"quantization_report: ids must be [batch, length] with length >= 2, got shape"
        f" {tuple(ids.shape)}; give a batch of token sequences.")
  real = jnp.ones(ids.shape, jnp.float32) if mask is None else jnp.asarray(mask).astype(jnp.float32)
  weights = real[:, :-1] * real[:, 1:]

  @jax.jit
  def figures(params: Params) -> tuple[jax.Array, jax.Array]:
    logits, _ = model(params, ids, mask=None if mask is None else real)
    return _figures(logits, ids, weights)

  float_top, float_loss = figures(float_params)
  quantized_top, quantized_loss = figures(quantized_params)
  same = jnp.sum((float_top == quantized_top) * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  return QuantizationReport(
      agreement=float(same), float_loss=float(float_loss), quantized_loss=float(quantized_loss),
      loss_change=float(quantized_loss / float_loss - 1.0))
