"""A NumPy reference of `MultiHeadAttention` with the options of pretrained
model families: grouped kv heads, qk-norm (epsilon and scale offset), RoPE
at given frequencies and positions, a logit scale, a soft cap, masks, and
projections with or without biases.

Imported by module name (`packages/blox-nn/tests` is on pytest's and mypy's
path) by the attention tests of these options.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blox.params import Params

__all__ = ["np_frequencies", "np_rope", "reference", "window"]


def np_frequencies(head_dim: int, base: float) -> np.ndarray:
  """`base ** (-2i / head_dim)`, float64."""
  out: np.ndarray = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  return out


def np_rope(x: np.ndarray, positions: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
  """Rotate-half RoPE of `x [b, t, h, d]` at `positions [t]` or `[b, t]`."""
  half = x.shape[-1] // 2
  angle = np.asarray(positions, np.float64)[..., None, None] * frequencies
  first, second = x[..., :half], x[..., half:]
  out: np.ndarray = np.concatenate(
      [first * np.cos(angle) - second * np.sin(angle), second * np.cos(angle) + first * np.sin(angle)],
      axis=-1,
  )
  return out


def window(q_positions: np.ndarray, kv_positions: np.ndarray, size: int) -> np.ndarray:
  """`[..., 1, q, kv]`: True where `q - k < size`."""
  out: np.ndarray = (q_positions[..., :, None] - kv_positions < size)[..., None, :, :]
  return out


def reference(
    params: Params,
    query: Any,
    kv: Any,
    *,
    num_heads: int,
    mask: Any = None,
    path: tuple[str, ...] = ("net", "mha"),
    qk_norm: bool = False,
    qk_norm_epsilon: float = 1e-6,
    qk_norm_scale_offset: float = 0.0,
    frequencies: np.ndarray | None = None,
    positions: Any = None,
    scale: float | None = None,
    cap: float | None = None,
) -> np.ndarray:
  """The attention of `query [b, t, f]` over `kv [b, s, f]`, in float64.

  Biases missing from `params` are left out. `positions` (default
  `arange(t)`) place the queries and keys for RoPE (self-attention).
  """

  def get(*name: str) -> np.ndarray | None:
    key = path + name
    return np.asarray(params[key].value, np.float64) if key in params else None

  def project(x: np.ndarray, name: str) -> np.ndarray:
    kernel = get(name, "kernel")
    assert kernel is not None
    out: np.ndarray = np.einsum("bti,ihd->bthd", x, kernel)
    bias = get(name, "bias")
    return out if bias is None else out + bias

  def rms(x: np.ndarray, scale_param: np.ndarray | None) -> np.ndarray:
    assert scale_param is not None
    out: np.ndarray = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + qk_norm_epsilon)
    return out * (qk_norm_scale_offset + scale_param)

  query, kv = np.asarray(query, np.float64), np.asarray(kv, np.float64)
  q, k, v = project(query, "query"), project(kv, "key"), project(kv, "value")
  if qk_norm:
    q, k = rms(q, get("query_norm", "scale")), rms(k, get("key_norm", "scale"))
  if frequencies is not None:
    where = np.arange(q.shape[1]) if positions is None else np.asarray(positions)
    q, k = np_rope(q, where, frequencies), np_rope(k, where, frequencies)
  group = num_heads // k.shape[-2]
  k, v = (np.repeat(a, group, axis=-2) for a in (k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) * (scale if scale is not None else q.shape[-1] ** -0.5)
  if cap is not None:
    logits = cap * np.tanh(logits / cap)
  if mask is not None:
    logits = np.where(np.broadcast_to(mask, logits.shape), logits, -1e30)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bhqk,bkhd->bqhd", weights, v)
  out_kernel = get("out", "kernel")
  assert out_kernel is not None
  out: np.ndarray = np.einsum("bqhd,hdo->bqo", attended, out_kernel)
  out_bias = get("out", "bias")
  return out if out_bias is None else out + out_bias
