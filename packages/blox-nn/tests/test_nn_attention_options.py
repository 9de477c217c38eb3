"""Tests of the modern-transformer options of attention: grouped-query heads,
query/key normalisation, rotary embeddings (`rope`) and the jax kernel."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import KVCache, MultiHeadAttention, Rng, causal_mask, dot_product_attention, rope
from blox.nn import initializers
from blox.nn._attention_heads import normalize_heads
from blox.params import SHARDING, Params
from nn_attention_helpers import random_inputs

HEADS = 4
FEATURES = 16
HEAD_DIM = FEATURES // HEADS


def _build(**kwargs: Any) -> tuple[MultiHeadAttention, Rng]:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  kwargs.setdefault("bias_init", jax.nn.initializers.normal(1.0))
  return MultiHeadAttention(graph.child("mha"), HEADS, rng=rng, **kwargs), rng


def _init(mha: MultiHeadAttention, rng: Rng, x: jax.Array) -> Params:
  _, params = mha(rng.seed(Params(), seed=0), x)
  return params.locked()


def _np_rope(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
  """The rotate-half formula, one frequency at a time: x [..., t, h, d], positions [..., t]."""
  half = x.shape[-1] // 2
  out = np.empty_like(x)
  for i in range(half):
    angle = positions[..., None] * base ** (-i / half)  # [..., t, 1]
    cos, sin = np.cos(angle), np.sin(angle)
    out[..., i] = x[..., i] * cos - x[..., i + half] * sin
    out[..., i + half] = x[..., i + half] * cos + x[..., i] * sin
  return out


def _np_rms(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
  out: np.ndarray = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6) * scale
  return out


def _reference(
    params: Params,
    query: Any,
    kv: Any,
    mask: Any = None,
    *,
    num_kv_heads: int = HEADS,
    qk_norm: bool = False,
    rope_base: float | None = None,
) -> np.ndarray:
  """Attention with the kv heads repeated (np.repeat on the head axis), then the
  plain formula, in float64 NumPy; batch axes [b], inputs [b, t, features]."""

  def get(*path: str) -> np.ndarray:
    return np.asarray(params[("net", "mha") + path].value, np.float64)

  query, kv = np.asarray(query, np.float64), np.asarray(kv, np.float64)
  q = np.einsum("bti,ihd->bthd", query, get("query", "kernel")) + get("query", "bias")
  k = np.einsum("bti,ihd->bthd", kv, get("key", "kernel")) + get("key", "bias")
  v = np.einsum("bti,ihd->bthd", kv, get("value", "kernel")) + get("value", "bias")
  assert k.shape[-2] == num_kv_heads
  if qk_norm:
    q, k = _np_rms(q, get("query_norm", "scale")), _np_rms(k, get("key_norm", "scale"))
  if rope_base is not None:
    q = _np_rope(q, np.arange(q.shape[1]), rope_base)
    k = _np_rope(k, np.arange(k.shape[1]), rope_base)
  k, v = (np.repeat(a, HEADS // num_kv_heads, axis=-2) for a in (k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(np.broadcast_to(mask, logits.shape), logits, -1e30)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bhqk,bkhd->bqhd", weights, v)
  out: np.ndarray = np.einsum("bqhd,hdo->bqo", attended, get("out", "kernel")) + get("out", "bias")
  return out


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_nn_attention_grouped_query_matches_repeated_kv_heads(num_kv_heads: int) -> None:
  mha, rng = _build(num_kv_heads=num_kv_heads)
  x, context = random_inputs(2, 5, FEATURES), random_inputs(2, 7, FEATURES, seed=2)
  params = _init(mha, rng, x)
  shapes = {path[2:]: params[path].value.shape for path in params if path[1] == "mha"}
  assert shapes[("query", "kernel")] == (FEATURES, HEADS, HEAD_DIM)
  assert shapes[("key", "kernel")] == (FEATURES, num_kv_heads, HEAD_DIM)
  assert shapes[("value", "bias")] == (num_kv_heads, HEAD_DIM)
  assert shapes[("out", "kernel")] == (HEADS, HEAD_DIM, FEATURES)
  # Jitted: eagerly, each primitive compiles on its own (seconds).
  y = jax.jit(lambda p, x, context: mha(p, x, context)[0])(params, x, context)
  np.testing.assert_allclose(
      y, _reference(params, x, context, num_kv_heads=num_kv_heads), rtol=1e-5, atol=1e-5
  )
  causal = jax.jit(lambda p, x: mha.apply(p, x)[0][0])(params, x)
  np.testing.assert_allclose(
      causal, _reference(params, x, x, causal_mask(5), num_kv_heads=num_kv_heads),
      rtol=1e-5, atol=1e-5,
  )
  cache, _ = mha.initial_state(params, x[:, 0], max_length=6)
  assert cache.key.shape == (2, 6, num_kv_heads, HEAD_DIM)
  step = jax.jit(lambda p, x_t, c: mha.decode_step(p, x_t, c))
  steps = []
  for t in range(5):
    (y_t, cache), params = step(params, x[:, t], cache)
    steps.append(y_t)
  np.testing.assert_allclose(jnp.stack(steps, 1), causal, rtol=1e-5, atol=1e-5)


def test_nn_attention_num_kv_heads_must_divide_num_heads() -> None:
  with pytest.raises(ValueError, match=r"MultiHeadAttention 'net/mha': num_kv_heads=3 does not divide num_heads=4; pick a divisor"):
    _build(num_kv_heads=3)
  with pytest.raises(ValueError, match=r"'net/mha': num_kv_heads \(or None\) must be a positive int"):
    _build(num_kv_heads=0)


def test_nn_attention_cache_of_other_kv_heads_is_refused() -> None:
  mha, rng = _build(num_kv_heads=2)
  x = random_inputs(1, 3, FEATURES)
  params = _init(mha, rng, x)
  full_heads = KVCache(jnp.zeros((1, 4, HEADS, HEAD_DIM)), jnp.zeros((1, 4, HEADS, HEAD_DIM)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match=r"'net/mha': the cache holds keys \(1, 4, 4, 4\).*\[\*batch, max_length, 2, 4\].*initial_state"):
    mha.decode_step(params, x[:, 0], full_heads)


def test_nn_attention_implementation_name_is_checked() -> None:
  q = random_inputs(1, 3, 2, 4)
  with pytest.raises(ValueError, match=r"dot_product_attention: implementation must be one of \(None, 'xla', 'cudnn'\).*got 'flash'; use None"):
    dot_product_attention(q, q, q, implementation="flash")
  with pytest.raises(ValueError, match=r"MultiHeadAttention 'net/mha': implementation must be one of .*got 'triton'"):
    _build(implementation="triton")
  mha, rng = _build(implementation="xla")
  x = random_inputs(2, 4, FEATURES)
  params = _init(mha, rng, x)
  y, _ = mha(params, x)
  np.testing.assert_allclose(y, _reference(params, x, x), rtol=1e-5, atol=1e-5)


def test_nn_attention_qk_norm_params_and_math() -> None:
  mha, rng = _build(
      qk_norm=True, num_kv_heads=2, qk_norm_scale_init=initializers.constant(1.5),
      qk_norm_metadata={"key_norm": {SHARDING: (None,)}},
  )
  x = random_inputs(2, 5, FEATURES) * 3.0
  params = _init(mha, rng, x)
  for name in ("query_norm", "key_norm"):
    scale = params[("net", "mha", name, "scale")]
    assert scale.value.shape == (HEAD_DIM,)
    np.testing.assert_array_equal(scale.value, 1.5)
  assert params[("net", "mha", "key_norm", "scale")].metadata[SHARDING] == (None,)
  assert SHARDING not in params[("net", "mha", "query_norm", "scale")].metadata
  # A learned scale other than the initial one is read, not re-initialised.
  params = params.unlocked()
  params = mha.set_param(params, ("query_norm", "scale"), jnp.arange(1.0, 5.0))
  y, _ = mha(params, x)
  np.testing.assert_allclose(
      y, _reference(params, x, x, num_kv_heads=2, qk_norm=True), rtol=1e-5, atol=1e-5
  )


def test_nn_attention_qk_norm_statistics_in_float32() -> None:
  mha, _ = _build(qk_norm=True)
  heads = random_inputs(2, 3, HEADS, HEAD_DIM) * 50.0
  low = heads.astype(jnp.bfloat16)
  normalized, _ = normalize_heads(mha, Params(), "query_norm", low, scale_init=initializers.ones)
  assert normalized.dtype == jnp.bfloat16
  # The statistics of the bfloat16 values, taken in float32, then cast back.
  expected = _np_rms(np.asarray(low.astype(jnp.float32), np.float64), np.ones(HEAD_DIM))
  np.testing.assert_array_equal(
      normalized.astype(jnp.float32), jnp.asarray(expected, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)
  )
  with pytest.raises(ValueError, match=r"'net/mha': qk_norm_metadata maps the param groups \('query_norm', 'key_norm'\).*got the key 'query'"):
    _build(qk_norm=True, qk_norm_metadata={"query": {}})
  with pytest.raises(TypeError, match=r"'net/mha': qk_norm must be a bool"):
    _build(qk_norm=1)


def test_nn_rope_matches_its_formula() -> None:
  x = random_inputs(2, 5, 3, 8)
  np.testing.assert_allclose(
      rope(x, jnp.arange(5)), _np_rope(np.asarray(x, np.float64), np.arange(5), 10000.0),
      rtol=1e-5, atol=1e-5,
  )
  positions = jnp.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
  np.testing.assert_allclose(
      rope(x, positions, base=100.0), _np_rope(np.asarray(x, np.float64), np.asarray(positions), 100.0),
      rtol=1e-5, atol=1e-5,
  )
  low = rope(x.astype(jnp.bfloat16), jnp.arange(5))
  assert low.dtype == jnp.bfloat16


def test_nn_rope_dot_products_depend_on_the_position_difference() -> None:
  q, k = random_inputs(1, 1, 1, 16), random_inputs(1, 1, 1, 16, seed=2)

  def score(q_pos: int, k_pos: int) -> float:
    rotated_q = rope(q, jnp.array([q_pos]))
    rotated_k = rope(k, jnp.array([k_pos]))
    return float(jnp.sum(rotated_q * rotated_k))

  assert score(3, 1) == pytest.approx(score(12, 10), rel=1e-4, abs=1e-5)
  assert score(0, 0) == pytest.approx(float(jnp.sum(q * k)), rel=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_nn_rope_misuse_is_reported() -> None:
  with pytest.raises(ValueError, match=r"rope: x needs shape \[\*batch, length, heads, head_dim\] with an even head_dim.*got shape \(1, 3, 2, 5\). Pick an even head_dim"):
    rope(random_inputs(1, 3, 2, 5), jnp.arange(3))
  with pytest.raises(TypeError, match=r"rope: positions must be integers.*jnp.arange"):
    rope(random_inputs(1, 3, 2, 4), jnp.arange(3.0))
  with pytest.raises(ValueError, match=r"rope: positions of shape \(4,\) do not match x of shape \(1, 3, 2, 4\); pass"):
    rope(random_inputs(1, 3, 2, 4), jnp.arange(4))
  with pytest.raises(ValueError, match=r"MultiHeadAttention 'net/mha': rope_base needs an even head_dim.*qkv_size=12 // num_heads=4 = 3; pick"):
    _build(rope_base=10000.0, qkv_size=12)
  with pytest.raises(ValueError, match=r"'net/mha': rope_base must be None \(no RoPE\) or a positive number"):
    _build(rope_base=-1.0)


def test_nn_attention_rope_refuses_cross_attention_of_another_length() -> None:
  mha, rng = _build(rope_base=10000.0)
  x = random_inputs(2, 5, FEATURES)
  params = _init(mha, rng, x)
  with pytest.raises(ValueError, match=r"MultiHeadAttention 'net/mha': with rope_base set.*query has length 5 and the key 7. For cross-attention use rope_base=None"):
    mha(params, x, random_inputs(2, 7, FEATURES))


def test_nn_attention_rope_matches_reference_and_decoding() -> None:
  mha, rng = _build(rope_base=10000.0, num_kv_heads=2, qk_norm=True)
  x = random_inputs(2, 6, FEATURES)
  params = _init(mha, rng, x)
  # The forward passes, the prefill and the step jitted: eagerly, each
  # primitive compiles on its own (seconds). The Python loop of steps is
  # still the other decoding than the scan below.
  y = jax.jit(lambda p, x: mha(p, x)[0])(params, x)
  np.testing.assert_allclose(
      y, _reference(params, x, x, num_kv_heads=2, qk_norm=True, rope_base=10000.0),
      rtol=1e-5, atol=1e-5,
  )
  apply = jax.jit(lambda p, xs, c: mha.apply(p, xs, c)[0])
  step = jax.jit(lambda p, x_t, c: mha.decode_step(p, x_t, c)[0])
  expected, _ = apply(params, x, None)
  # Prefill three tokens, then decode the others one at a time.
  cache, _ = mha.initial_state(params, x[:, 0], max_length=8)
  head, cache = apply(params, x[:, :3], cache)
  steps = [head]
  for t in range(3, 6):
    y_t, cache = step(params, x[:, t], cache)
    steps.append(y_t[:, None])
  np.testing.assert_allclose(jnp.concatenate(steps, 1), expected, rtol=1e-5, atol=1e-5)

  @jax.jit
  def decode_all(params: Params, x: jax.Array, cache: KVCache) -> jax.Array:
    def body(cache: KVCache, x_t: jax.Array) -> tuple[KVCache, jax.Array]:
      (y_t, cache), _ = mha.decode_step(params, x_t, cache)
      return cache, y_t

    _, ys = jax.lax.scan(body, cache, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1)

  empty, _ = mha.initial_state(params, x[:, 0], max_length=8)
  np.testing.assert_allclose(decode_all(params, x, empty), expected, rtol=1e-5, atol=1e-5)


def test_nn_attention_stores_the_new_arguments() -> None:
  mha, _ = _build(num_kv_heads=2, qk_norm=True, rope_base=500.0, implementation="xla")
  assert (mha.num_kv_heads, mha.qk_norm, mha.rope_base, mha.implementation) == (2, True, 500.0, "xla")
  assert mha.qk_norm_metadata is None
  text = repr(mha)
  assert "num_kv_heads=2" in text and "rope_base=500.0" in text


def test_nn_attention_wrong_input_width_blames_the_input_not_the_rope_configuration() -> None:
  # 12 features over 4 heads would be an odd head_dim: before the params
  # existed that is a configuration error; after, the input is at fault.
  mha, rng = _build(rope_base=10000.0)
  x, narrow = random_inputs(2, 5, FEATURES), random_inputs(2, 5, 12)
  params = _init(mha, rng, x)
  with pytest.raises(ValueError, match=r"^MultiHeadAttention 'net/mha': the last axis of query is 12, but the params were made for 16 features: query/kernel has shape \(16, 4, 4\) \[features, heads, head_dim\]\. Feed query with 16 features, or start from fresh params") as caught:
    mha(params, narrow)
  assert "rope_base" not in str(caught.value) and "qkv_size" not in str(caught.value)
  with pytest.raises(ValueError, match=r"'net/mha': the last axis of inputs is 12, but the params were made for 16"):
    mha.apply(params, narrow)
  cache, _ = mha.initial_state(params, x[:, 0], max_length=6)
  with pytest.raises(ValueError, match=r"'net/mha': the last axis of token is 12, but the params were made for 16"):
    mha.decode_step(params, narrow[:, 0], cache)
  with pytest.raises(ValueError, match=r"'net/mha': the last axis of inputs is 12, but the params were made for 16"):
    mha.initial_state(params, narrow[:, 0], max_length=6)
  # A key of another width than the key kernel's is named as the key.
  with pytest.raises(ValueError, match=r"'net/mha': the last axis of key is 12, .* key/kernel has shape \(16, 4, 4\)"):
    mha(params, x, narrow)
  # Without params, the same width is a configuration the layer cannot take.
  fresh, fresh_rng = _build(rope_base=10000.0)
  with pytest.raises(ValueError, match=r"rope_base needs an even head_dim.*qkv_size=12 // num_heads=4 = 3 \(qkv_size is None: it is the query's last axis\); pick qkv_size"):
    fresh(fresh_rng.seed(Params(), seed=0), narrow)
