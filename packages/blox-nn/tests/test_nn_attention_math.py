"""Tests of the module-free attention math: `dot_product_attention` (jax's
kernel and blox's formula, grouped-query heads) and the mask helpers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.nn import causal_mask, combine_masks, dot_product_attention, padding_mask
from nn_attention_helpers import random_inputs, random_mask



def _heads(*shape: int, seed: int) -> jax.Array:
  return random_inputs(*shape, seed=seed)


def _reference(q: Any, k: Any, v: Any, mask: Any = None, scale: float | None = None) -> np.ndarray:
  """softmax(q k^T * scale) v per head, in float64 NumPy; layout [b, t, h, d]."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if mask is not None:
    logits = np.where(np.broadcast_to(mask, logits.shape), logits, -1e30)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out: np.ndarray = np.einsum("bhqk,bkhd->bqhd", weights, v)
  return out


def test_nn_dot_product_attention_matches_reference() -> None:
  q, k, v = _heads(2, 5, 3, 4, seed=1), _heads(2, 7, 3, 4, seed=2), _heads(2, 7, 3, 4, seed=3)
  mask = random_mask(0.6, (2, 1, 5, 7), seed=4).at[..., 0].set(True)

  # Every call under one jit: eagerly, each primitive of each call compiles
  # on its own (seconds); the math is the same.
  @jax.jit
  def run(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
    return (
        dot_product_attention(q, k, v), dot_product_attention(q, k, v, mask=mask),
        dot_product_attention(q, k, v, scale=0.3),
        # Extra and no batch axes.
        dot_product_attention(q[None], k[None], v[None]), dot_product_attention(q[0], k[0], v[0]),
    )

  out, masked, scaled, stacked, single = run(q, k, v, mask)
  assert out.shape == (2, 5, 3, 4)
  np.testing.assert_allclose(out, _reference(q, k, v), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(masked, _reference(q, k, v, mask), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scaled, _reference(q, k, v, scale=0.3), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stacked[0], out, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(single, out[0], rtol=1e-6, atol=1e-6)


def test_nn_dot_product_attention_fully_masked_row_is_uniform() -> None:
  q, kv = _heads(1, 2, 1, 4, seed=1), _heads(1, 3, 1, 4, seed=2)
  mask = jnp.array([[True, False, True], [False, False, False]])
  out = dot_product_attention(q, kv, kv, mask=mask)
  assert bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_allclose(out[0, 1], jnp.mean(kv[0], axis=0), rtol=1e-5, atol=1e-6)


def test_nn_dot_product_attention_softmax_in_float32_for_bfloat16() -> None:
  q, k, v = (_heads(1, 6, 2, 8, seed=s) * 4.0 for s in (1, 2, 3))
  low = [a.astype(jnp.bfloat16) for a in (q, k, v)]
  out = dot_product_attention(*low)
  assert out.dtype == jnp.bfloat16
  # The logits of the bfloat16 inputs accumulated and scaled in float32 (as
  # jax.nn.dot_product_attention does), the softmax in float32, then cast back.
  logits = jnp.einsum(
      "...qhd,...khd->...hqk", low[0], low[1], preferred_element_type=jnp.float32
  ) * jnp.float32(1 / np.sqrt(8))
  weights = jax.nn.softmax(logits, axis=-1).astype(jnp.bfloat16)
  expected = jnp.einsum("...hqk,...khd->...qhd", weights, low[2])
  np.testing.assert_array_equal(out.astype(jnp.float32), expected.astype(jnp.float32))
  # blox's own formula (taken with an explicit precision) computes the same.
  own = dot_product_attention(*low, precision=jax.lax.Precision.DEFAULT)
  np.testing.assert_array_equal(own.astype(jnp.float32), expected.astype(jnp.float32))


def test_nn_dot_product_attention_dropout_needs_and_uses_a_key() -> None:
  q, kv = _heads(2, 5, 2, 4, seed=1), _heads(2, 5, 2, 4, seed=2)
  with pytest.raises(ValueError, match="dot_product_attention: dropout_rate=0.5 needs a dropout_key"):
    dot_product_attention(q, kv, kv, dropout_rate=0.5)
  with pytest.raises(ValueError, match="dot_product_attention: dropout_rate must be in"):
    dot_product_attention(q, kv, kv, dropout_rate=1.0, dropout_key=jax.random.key(0))
  plain = dot_product_attention(q, kv, kv)
  first = dot_product_attention(q, kv, kv, dropout_rate=0.5, dropout_key=jax.random.key(0))
  again = dot_product_attention(q, kv, kv, dropout_rate=0.5, dropout_key=jax.random.key(0))
  other = dot_product_attention(q, kv, kv, dropout_rate=0.5, dropout_key=jax.random.key(1))
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, plain, atol=1e-3)
  assert not np.allclose(first, other, atol=1e-3)
  # A key without a rate changes nothing.
  np.testing.assert_array_equal(
      dot_product_attention(q, kv, kv, dropout_key=jax.random.key(0)), plain
  )


def test_nn_dot_product_attention_misuse_is_reported() -> None:
  q = _heads(2, 5, 2, 4, seed=1)
  with pytest.raises(TypeError, match="dot_product_attention: key must be floating point"):
    dot_product_attention(q, q.astype(jnp.int32), q)
  with pytest.raises(ValueError, match=r"dot_product_attention: query needs shape \[\*batch, length, heads, head_dim\]"):
    dot_product_attention(q[0, 0], q, q)
  with pytest.raises(ValueError, match=r"dot_product_attention: key \(2, 5, 2, 4\) and value \(2, 4, 2, 4\)"):
    dot_product_attention(q, q, q[:, :4])
  with pytest.raises(ValueError, match=r"query \(2, 5, 2, 4\) and key \(3, 5, 2, 4\) must agree on the batch"):
    dot_product_attention(q, _heads(3, 5, 2, 4, seed=2), _heads(3, 5, 2, 4, seed=2))
  with pytest.raises(ValueError, match=r"dot_product_attention: the mask of shape \(3, 5\) does not broadcast"):
    dot_product_attention(q, q, q, mask=jnp.ones((3, 5), bool))
  with pytest.raises(TypeError, match="dot_product_attention: the mask must be boolean.*astype"):
    dot_product_attention(q, q, q, mask=jnp.ones((5, 5)))


def test_nn_dot_product_attention_under_jit_and_grad() -> None:
  q, kv = _heads(2, 5, 2, 4, seed=1), _heads(2, 5, 2, 4, seed=2)
  mask = causal_mask(5)
  eager = dot_product_attention(q, kv, kv, mask=mask)
  jitted = jax.jit(lambda q, kv: dot_product_attention(q, kv, kv, mask=mask))(q, kv)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
  grad = jax.grad(lambda q: jnp.sum(dot_product_attention(q, kv, kv, mask=mask) ** 2))(q)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_nn_dot_product_attention_grouped_query_heads() -> None:
  q, k, v = random_inputs(2, 5, 6, 4), random_inputs(2, 7, 2, 4, seed=2), random_inputs(2, 7, 2, 4, seed=3)
  mask = random_mask(0.6, (2, 6, 5, 7), seed=4).at[..., 0].set(True)

  # The three attentions under one jit (eagerly, each primitive compiles on
  # its own: seconds); the paths compared are the same.
  @jax.jit
  def run(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
    expected = dot_product_attention(q, jnp.repeat(k, 3, axis=-2), jnp.repeat(v, 3, axis=-2), mask=mask)
    own = dot_product_attention(q, k, v, mask=mask, precision=jax.lax.Precision.HIGHEST)
    return expected, dot_product_attention(q, k, v, mask=mask), own

  expected, grouped, own = run(q, k, v, mask)
  np.testing.assert_allclose(grouped, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(own, expected, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"dot_product_attention: the query's 6 heads are not a multiple of the key's 4; grouped-query"):
    dot_product_attention(q, random_inputs(2, 7, 4, 4), random_inputs(2, 7, 4, 4))


def test_nn_dot_product_attention_jax_kernel_equals_own_formula() -> None:
  q, k, v = random_inputs(3, 2, 5, 2, 8), random_inputs(3, 2, 6, 2, 8, seed=2), random_inputs(3, 2, 6, 2, 8, seed=3)
  # Row 1 of query 0 of every head fully masked.
  mask = jnp.ones((3, 2, 1, 5, 6), bool).at[:, :, :, 1].set(False)
  # A mask shared by the batch axes but not by the heads.
  per_head = random_mask(0.6, (2, 5, 6), seed=5).at[..., 0].set(True)

  # Every attention under one jit (eagerly, each primitive of each call
  # compiles on its own: seconds); jax's kernel and blox's formula are still
  # the two paths compared.
  @jax.jit
  def run(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, per_head: jax.Array) -> tuple[jax.Array, ...]:
    own = dot_product_attention(q, k, v, mask=mask, precision=jax.lax.Precision.HIGHEST)
    fused = [dot_product_attention(q, k, v, mask=mask, implementation=i) for i in (None, "xla")]
    shared = dot_product_attention(q, k, v, mask=per_head)
    shared_own = dot_product_attention(q, k, v, mask=per_head, precision=jax.lax.Precision.HIGHEST)
    flat = jax.nn.dot_product_attention(q[0], k[0], v[0], mask=mask[0])
    return own, *fused, shared, shared_own, flat

  own, fused_none, fused_xla, shared, shared_own, flat = run(q, k, v, mask, per_head)
  for fused in (fused_none, fused_xla):
    np.testing.assert_allclose(fused, own, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(shared, shared_own, rtol=1e-6, atol=1e-6)
  # Both attend uniformly from the fully masked row, as jax's XLA path does too.
  np.testing.assert_allclose(own[:, :, 1], np.mean(v, axis=-3), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(flat[:, 1], np.mean(v[0], axis=-3), rtol=1e-6, atol=1e-6)


def test_nn_causal_mask() -> None:
  np.testing.assert_array_equal(causal_mask(4), np.tril(np.ones((4, 4), bool)))
  np.testing.assert_array_equal(causal_mask(2, 3), [[True, False, False], [True, True, False]])
  with pytest.raises(ValueError, match="causal_mask: kv_length must be a positive int, got 0"):
    causal_mask(3, 0)


def test_nn_padding_mask_from_lengths_or_validity() -> None:
  lengths = jnp.array([1, 3])
  mask = padding_mask(lengths, kv_length=4)
  assert mask.shape == (2, 1, 1, 4)
  np.testing.assert_array_equal(mask[:, 0, 0], [[1, 0, 0, 0], [1, 1, 1, 0]])
  valid = jnp.array([[True, False, False, False], [True, True, True, False]])
  np.testing.assert_array_equal(padding_mask(valid), mask)
  np.testing.assert_array_equal(padding_mask(valid, kv_length=4), mask)
  with pytest.raises(ValueError, match="padding_mask: with lengths, give kv_length"):
    padding_mask(lengths)
  with pytest.raises(ValueError, match=r"padding_mask: the validity array \(2, 4\) has 4 key positions, but kv_length=5"):
    padding_mask(valid, kv_length=5)
  with pytest.raises(TypeError, match="padding_mask: pass integer lengths.*got dtype float32"):
    padding_mask(jnp.ones(2), kv_length=4)


def test_nn_padding_mask_in_attention_hides_the_padding() -> None:
  q, kv = _heads(2, 3, 2, 4, seed=1), _heads(2, 4, 2, 4, seed=2)
  lengths = jnp.array([2, 4])

  # Under one jit: eagerly, each primitive compiles on its own (seconds).
  @jax.jit
  def run(q: jax.Array, kv: jax.Array, lengths: jax.Array) -> tuple[jax.Array, ...]:
    out = dot_product_attention(q, kv, kv, mask=padding_mask(lengths, kv_length=4))
    return out, dot_product_attention(q[:1], kv[:1, :2], kv[:1, :2]), dot_product_attention(q[1:], kv[1:], kv[1:])

  out, first, second = run(q, kv, lengths)
  # Batch element 0 only sees its first two keys.
  np.testing.assert_allclose(out[:1], first, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[1:], second, rtol=1e-6)


def test_nn_combine_masks() -> None:
  combined = combine_masks(causal_mask(3), None, padding_mask(jnp.array([2]), kv_length=3))
  assert combined is not None and combined.shape == (1, 1, 3, 3)
  np.testing.assert_array_equal(combined[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
  assert combine_masks(None, None) is None
  with pytest.raises(TypeError, match="combine_masks: mask 1 has dtype float32.*astype"):
    combine_masks(causal_mask(3), jnp.ones((3, 3)))
  with pytest.raises(ValueError, match=r"combine_masks: the masks of shapes \(3, 3\), \(2, 4\) do not broadcast"):
    combine_masks(causal_mask(3), jnp.ones((2, 4), bool))
