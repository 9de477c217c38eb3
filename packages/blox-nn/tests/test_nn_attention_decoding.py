"""Tests of MultiHeadAttention as a causal sequence model: `apply`, the
`KVCache` (`initial_state`, `decode_step`, prefills) and its misuse."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, maybe_reset_state
from blox.nn import KVCache, MultiHeadAttention, Rng
from blox.nn._kv_cache import allocate_cache, check_cache, write_cache
from blox.params import Params
from nn_attention_helpers import FEATURES, HEADS, build, causal, init_params, random_inputs, reference

def test_nn_attention_causal_apply_ignores_future() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  (y, final), _ = mha.apply(params, x)
  assert final is None
  np.testing.assert_allclose(
      y, reference(params, x, x, causal(5)), rtol=1e-5, atol=1e-5
  )
  changed = x.at[:, 3:].add(10.0)
  (y_changed, _), _ = mha.apply(params, changed)
  np.testing.assert_allclose(y_changed[:, :3], y[:, :3], rtol=1e-6, atol=1e-6)
  assert not np.allclose(y_changed[:, 3:], y[:, 3:], atol=1e-3)


def test_nn_attention_step_decoding_matches_causal_apply() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  (expected, _), _ = mha.apply(params, x)
  cache, params_after = mha.initial_state(params, x[:, 0], max_length=7)
  assert params_after is params
  assert isinstance(cache, KVCache)
  assert cache.key.shape == (2, 7, HEADS, FEATURES // HEADS)
  assert cache.position.tolist() == [0, 0]
  outputs = []
  for t in range(5):
    (y_t, cache), params = mha.decode_step(params, x[:, t], cache)
    assert y_t.shape == (2, FEATURES)
    outputs.append(y_t)
  np.testing.assert_allclose(jnp.stack(outputs, 1), expected, rtol=1e-5, atol=1e-5)
  assert cache.position.tolist() == [5, 5]
  # The unfilled positions are untouched.
  np.testing.assert_array_equal(cache.key[:, 5:], 0.0)


def test_nn_attention_decoding_under_jit_and_scan() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  (expected, _), _ = mha.apply(params, x)
  cache, _ = mha.initial_state(params, x[:, 0], max_length=7)

  @jax.jit
  def decode_all(params: Params, x: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    Carry = tuple[Params, KVCache]

    def body(carry: Carry, x_t: jax.Array) -> tuple[Carry, jax.Array]:
      params, cache = carry
      (y_t, cache), params = mha.decode_step(params, x_t, cache, is_training=False)
      return (params, cache), y_t

    (_, final), ys = jax.lax.scan(body, (params, cache), jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1), final

  ys, final = decode_all(params, x, cache)
  np.testing.assert_allclose(ys, expected, rtol=1e-5, atol=1e-5)
  assert final.position.tolist() == [5, 5]


def test_nn_attention_prefill_then_decode() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  # Jitted: eagerly, each primitive compiles on its own (seconds).
  apply = jax.jit(lambda p, xs, c: mha.apply(p, xs, prev_state=c))
  expected = jax.jit(lambda p, xs: mha.apply(p, xs)[0][0])(params, x)
  cache, _ = mha.initial_state(params, x[:, 0], max_length=7)
  (head, cache), params = apply(params, x[:, :3], cache)
  assert cache is not None
  assert cache.position.tolist() == [3, 3]
  (tail, cache), params = apply(params, x[:, 3:], cache)
  np.testing.assert_allclose(
      jnp.concatenate([head, tail], 1), expected, rtol=1e-5, atol=1e-5
  )


def test_nn_attention_cache_positions_per_batch_element() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  # Jitted: eagerly, each primitive compiles on its own (seconds).
  decode = jax.jit(lambda p, x_t, c: mha.decode_step(p, x_t, c))
  apply = jax.jit(lambda p, xs: mha.apply(p, xs)[0][0])
  cache, _ = mha.initial_state(params, x[:, 0], max_length=7)
  (_, cache), params = decode(params, x[:, 0], cache)
  # Reset batch element 1 alone: every cache leaf has the batch axis first.
  empty, _ = mha.initial_state(params, x[:, 0], max_length=7)
  cache = maybe_reset_state(cache, empty, jnp.array([False, True]))
  assert cache.position.tolist() == [1, 0]
  (y, cache), _ = decode(params, x[:, 1], cache)
  fresh = apply(params, x[1:, 1:2])
  np.testing.assert_allclose(y[1], fresh[0, 0], rtol=1e-5, atol=1e-5)
  continued = apply(params, x[:1, :2])
  np.testing.assert_allclose(y[0], continued[0, 1], rtol=1e-5, atol=1e-5)
  assert cache.position.tolist() == [2, 1]


def test_nn_attention_decoding_with_a_padding_mask() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  # Batch element 0 may not attend to position 1 (e.g. padding).
  keep = jnp.ones((2, 1, 1, 7), bool).at[0, 0, 0, 1].set(False)
  (expected, _), _ = mha.apply(params, x, mask=keep[..., :5])
  np.testing.assert_allclose(
      expected, reference(params, x, x, causal(5) & np.asarray(keep[..., :5])),
      rtol=1e-5, atol=1e-5,
  )
  cache, _ = mha.initial_state(params, x[:, 0], max_length=7)
  outputs = []
  for t in range(5):
    (y_t, cache), params = mha.decode_step(params, x[:, t], cache, mask=keep)
    outputs.append(y_t)
  np.testing.assert_allclose(jnp.stack(outputs, 1), expected, rtol=1e-5, atol=1e-5)


def test_nn_attention_cache_misuse_is_reported() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  cache, _ = mha.initial_state(params, x[:, 0], max_length=2)
  with pytest.raises(ValueError, match="net/mha.*max_length=2"):
    mha.apply(params, x, prev_state=cache)
  small, _ = mha.initial_state(params, x[:1, 0], max_length=2)
  with pytest.raises(ValueError, match="net/mha.*initial_state"):
    mha.decode_step(params, x[:, 0], small)
  # The old-style call with a cache where the key goes.
  with pytest.raises(TypeError, match="net/mha.*KVCache as key.*decode_step"):
    mha(params, x[:, 0], cache)  # type: ignore[arg-type]  # the misuse tested
  with pytest.raises(ValueError, match="net/mha.*max_length"):
    mha.initial_state(params, x[:, 0], max_length=0)


def test_nn_attention_overflow_under_jit_gives_nan_not_a_clamped_write() -> None:
  mha, rng = build()
  x = random_inputs(2, 3, FEATURES)
  _, params = init_params(mha, rng, x)
  params = params.locked()
  cache, _ = mha.initial_state(params, x[:, 0], max_length=2)
  decode = jax.jit(lambda p, x_t, c: mha.decode_step(p, x_t, c))
  ys = []
  for t in range(3):
    (y_t, cache), _ = decode(params, x[:, t], cache)
    ys.append(y_t)
  assert bool(jnp.all(jnp.isfinite(ys[0]))) and bool(jnp.all(jnp.isfinite(ys[1])))
  assert bool(jnp.all(jnp.isnan(ys[2])))  # the third token does not fit


def test_nn_attention_prefill_past_the_end_under_jit_keeps_the_tokens_that_fit() -> None:
  # max_length=4: a prefill of 3, then 2 more under jit. Token 3 fits and
  # must match the reference; only token 4 overflows. A clamped
  # dynamic_update_slice would shift the block back over token 2.
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  (reference, _), _ = mha.apply(params, x)
  cache, _ = mha.initial_state(params, x[:, 0], max_length=4)
  (_, cache), _ = mha.apply(params, x[:, :3], prev_state=cache)
  stored = np.asarray(cache.key[:, :3])
  (y, cache), _ = jax.jit(lambda p, xs, c: mha.apply(p, xs, prev_state=c))(
      params, x[:, 3:], cache
  )
  np.testing.assert_allclose(y[:, 0], reference[:, 3], rtol=1e-5, atol=1e-5)
  assert bool(jnp.all(jnp.isnan(y[:, 1])))
  # The earlier entries are untouched and position counts every token.
  np.testing.assert_array_equal(cache.key[:, :3], stored)
  assert cache.position.tolist() == [5, 5]


def test_nn_attention_traced_is_training_is_reported() -> None:
  mha, rng = build(dropout_rate=0.5)
  x = random_inputs(1, 3, FEATURES)
  _, params = init_params(mha, rng, x)
  message = r"MultiHeadAttention 'net/mha': is_training must be a Python bool.*static"
  with pytest.raises(TypeError, match=message):
    jax.jit(lambda p, t: mha(p, x, is_training=t))(params, True)
  with pytest.raises(TypeError, match=message):
    jax.jit(lambda p, t: mha.apply(p, x, is_training=t))(params, True)
  with pytest.raises(TypeError, match=message):
    mha(params, x, is_training=1)  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(TypeError, match=message):
    mha.decode_step(params, x[:, 0], mha.initial_state(params, x[:, 0], max_length=2)[0],
                    is_training=1)  # type: ignore[arg-type]  # the misuse under test


def test_nn_attention_refuses_a_single_token_outside_decode_step() -> None:
  # [batch, features] would otherwise be read as one sequence of length batch
  # and attend across the batch.
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  hint = r"at least one batch axis; got shape \(2, 8\)\. For one decoding step use decode_step\(params, token, cache\)"
  with pytest.raises(ValueError, match=r"'net/mha': query needs shape \[\*batch, length, features\] with " + hint):
    mha(params, x[:, 0])
  with pytest.raises(ValueError, match=r"'net/mha': key needs shape.*" + hint):
    mha(params, x, x[:, 0])
  with pytest.raises(ValueError, match=r"'net/mha': inputs needs shape.*" + hint):
    mha.apply(params, x[:, 0])
  cache, _ = mha.initial_state(params, x[:, 0], max_length=7)
  with pytest.raises(ValueError, match=r"'net/mha': decode_step takes one token.*apply\(params, inputs, cache\)"):
    mha.decode_step(params, x, cache)
  with pytest.raises(ValueError, match=r"'net/mha': decode_step needs one token.*batch axis.*token\[None\]"):
    mha.decode_step(params, x[0, 0], cache)
  with pytest.raises(ValueError, match=r"'net/mha': initial_state needs one token.*inputs\[None\]"):
    mha.initial_state(params, x[0, 0], max_length=7)
  with pytest.raises(TypeError, match=r"'net/mha': the cache must be the KVCache from initial_state, got tuple"):
    mha.decode_step(params, x[:, 0], tuple(cache))  # type: ignore[arg-type]  # the misuse under test


def test_nn_attention_decode_step_applies_no_dropout_by_default() -> None:
  mha, rng = build(dropout_rate=0.5, num_kv_heads=1, rope_base=10000.0)
  x = random_inputs(2, 4, FEATURES)
  _, params = init_params(mha, rng, x)
  # Jitted, with is_training static (a Python bool) as the layer requires and
  # decode_step left to its default: eagerly, each primitive compiles on its
  # own (seconds).
  apply = jax.jit(lambda p, xs, training: mha.apply(p, xs, is_training=training)[0][0],
                  static_argnums=2)
  expected = apply(params, x, False)
  trained = apply(params, x, True)
  assert not np.allclose(trained, expected, atol=1e-3)
  decode = jax.jit(lambda p, x_t, c: mha.decode_step(p, x_t, c))
  cache, _ = mha.initial_state(params, x[:, 0], max_length=4)
  for t in range(4):
    (y_t, cache), params = decode(params, x[:, t], cache)
    np.testing.assert_allclose(y_t, expected[:, t], rtol=1e-5, atol=1e-5)


def test_nn_kv_cache_write_of_one_token_lands_per_row_and_drops_past_the_end() -> None:
  cache = allocate_cache((3,), max_length=3, num_heads=1, head_dim=1, dtype=jnp.float32)
  token = jnp.array([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1)
  for write in (write_cache, jax.jit(write_cache)):
    written = write(cache.key + 9.0, token, jnp.array([0, 2, 3]))
    # Row 2 starts past the end: its token is dropped, not clamped onto slot 2.
    np.testing.assert_array_equal(
        written[..., 0, 0], [[1.0, 9.0, 9.0], [9.0, 9.0, 2.0], [9.0, 9.0, 9.0]]
    )


def test_nn_kv_cache_write_drops_what_does_not_fit() -> None:
  cache = allocate_cache((2,), max_length=3, num_heads=1, head_dim=1, dtype=jnp.float32)
  assert isinstance(cache, KVCache)
  update = jnp.arange(1.0, 5.0).reshape(2, 2, 1, 1)
  written = write_cache(cache.key, update, jnp.array([0, 2]))
  # Element 1 starts at 2: its first token lands at 2, the second is dropped
  # (not shifted back over position 1).
  np.testing.assert_array_equal(written[..., 0, 0], [[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
  assert check_cache(cache, (2,), num_heads=1, head_dim=1, where="Layer 'x'") == 3
  with pytest.raises(ValueError, match=r"Layer 'x': the cache holds keys \(2, 3, 1, 1\).*initial_state"):
    check_cache(cache, (3,), num_heads=1, head_dim=1, where="Layer 'x'")
