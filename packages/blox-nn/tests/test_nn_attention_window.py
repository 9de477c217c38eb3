"""Tests of sliding-window attention (`sliding_window`) and of the per-call
overrides that let the layers of one `Repeat` scan differ, against a NumPy
reference; and of the window on Explicit mesh axes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from nn_attention_reference import np_frequencies, reference, window
from blox.graph import Graph, Module, Repeat, setting
from blox.nn import KVCache, MultiHeadAttention, Rng, causal_mask, padding_mask
from blox.params import SHARDING, KeySource, Param, Params
from nn_attention_helpers import random_inputs

# PartitionSpec's constructor has no annotations (strict mypy).
P: Callable[..., PartitionSpec] = PartitionSpec

HEADS = 4
FEATURES = 16
HEAD_DIM = FEATURES // HEADS
LENGTH = 7


def _build(**kwargs: Any) -> tuple[MultiHeadAttention, Params]:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  kwargs.setdefault("bias_init", jax.nn.initializers.normal(1.0))
  mha = MultiHeadAttention(graph.child("mha"), HEADS, rng=rng, **kwargs)
  _, params = mha(rng.seed(Params(), seed=0), _inputs())
  return mha, params.locked()


def _inputs(batch: int = 2, length: int = LENGTH, seed: int = 1) -> jax.Array:
  return random_inputs(batch, length, FEATURES, seed=seed)


def _causal_window(length: int, size: int) -> np.ndarray:
  positions = np.arange(length)
  out: np.ndarray = np.asarray(causal_mask(length)) & window(positions, positions, size)
  return out


def test_apply_attends_to_itself_and_the_window_minus_one_keys_before() -> None:
  mha, params = _build(sliding_window=3, num_kv_heads=2, rope_base=10000.0)
  x = _inputs()
  # Jitted: eagerly, each primitive compiles on its own (seconds).
  y = jax.jit(lambda p, x: mha.apply(p, x)[0][0])(params, x)
  mask = _causal_window(LENGTH, 3)
  assert mask[0, 4].astype(int).tolist() == [0, 0, 1, 1, 1, 0, 0]
  frequencies = np_frequencies(HEAD_DIM, 10000.0)
  expected = reference(params, x, x, num_heads=HEADS, mask=mask, frequencies=frequencies)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  plain = reference(params, x, x, num_heads=HEADS, mask=causal_mask(LENGTH), frequencies=frequencies)
  # The first 3 positions see no more than the window anyway; later ones differ.
  np.testing.assert_allclose(expected[:, :3], plain[:, :3], rtol=1e-6, atol=1e-6)
  assert not np.allclose(expected[:, 3:], plain[:, 3:], rtol=1e-3, atol=1e-3)


def test_call_masks_keys_further_back_than_the_window() -> None:
  mha, params = _build(sliding_window=2)
  x = _inputs()
  y, _ = mha(params, x)
  positions = np.arange(LENGTH)
  # Without a causal mask, later keys stay visible: q - k < 2 holds for them.
  expected = reference(params, x, x, num_heads=HEADS, mask=window(positions, positions, 2))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_a_window_at_least_as_long_as_the_keys_is_no_window() -> None:
  mha, params = _build()
  x = _inputs()
  (plain, _), _ = mha.apply(params, x)
  (long, _), _ = mha.apply(params, x, sliding_window=LENGTH)
  np.testing.assert_array_equal(long, plain)
  traced = jax.jit(lambda p, w: mha.apply(p, x, sliding_window=w)[0][0])
  np.testing.assert_allclose(traced(params, jnp.int32(2**31 - 1)), plain, rtol=1e-6, atol=1e-6)


def _prefilled(mha: MultiHeadAttention, params: Params, x: jax.Array, lengths: list[int]) -> KVCache:
  """A cache with batch element `b` prefilled with `x[b, :lengths[b]]`: the
  elements then decode at different positions."""
  # Jitted: eagerly, each primitive of the prefill compiles on its own.
  @jax.jit
  def prefill(p: Params, prompt: jax.Array) -> KVCache:
    cache, _ = mha.initial_state(p, prompt[:, 0], max_length=LENGTH + 4)
    (_, cache), _ = mha.apply(p, prompt, cache)
    return cache

  rows = [prefill(params, x[b:b + 1, :length]) for b, length in enumerate(lengths)]
  return KVCache(*(jnp.concatenate(leaves, axis=0) for leaves in zip(*rows)))


@pytest.mark.parametrize("traced", [False, True])
def test_decoding_masks_by_each_elements_own_position(traced: bool) -> None:
  mha, params = _build(sliding_window=3, rope_base=10000.0, num_kv_heads=1)
  x = _inputs()
  lengths = [2, 4]
  cache = _prefilled(mha, params, x, lengths)
  assert cache.position.tolist() == lengths
  if traced:
    mha.sliding_window = None  # the window comes from the call instead, traced
  step = jax.jit(lambda p, token, c, w: mha.decode_step(p, token, c, sliding_window=w)[0])
  # Jitted too (eagerly, each primitive compiles on its own: seconds); the
  # window stays the layer's setting, a Python int at trace time.
  by_setting = jax.jit(lambda p, token, c: mha.decode_step(p, token, c)[0])

  def decode(token: jax.Array, c: KVCache) -> tuple[jax.Array, KVCache]:
    result: tuple[jax.Array, KVCache]
    if traced:
      result = step(params, token, c, jnp.int32(3))
    else:
      result = by_setting(params, token, c)
    return result
  steps = []
  for t in range(3):
    token = jnp.stack([x[b, lengths[b] + t] for b in range(2)])
    y_t, cache = decode(token, cache)
    steps.append(y_t)
  frequencies = np_frequencies(HEAD_DIM, 10000.0)
  for b, length in enumerate(lengths):
    row = x[b:b + 1, : length + 3]
    full = reference(params, row, row, num_heads=HEADS, mask=_causal_window(length + 3, 3),
                     frequencies=frequencies)
    got = jnp.stack([s[b] for s in steps])
    np.testing.assert_allclose(got, full[0, length:], rtol=1e-5, atol=1e-5)


def test_a_traced_window_under_jit_equals_the_setting() -> None:
  mha, params = _build(rope_base=10000.0)
  x = _inputs()
  run = jax.jit(lambda p, w: mha.apply(p, x, sliding_window=w)[0][0])
  windowed, _ = _build(sliding_window=4, rope_base=10000.0)
  (want, _), _ = windowed.apply(params, x)
  np.testing.assert_allclose(run(params, jnp.int32(4)), want, rtol=1e-6, atol=1e-6)
  called = jax.jit(lambda p, w: mha(p, x, sliding_window=w)[0])
  want_call, _ = windowed(params, x)
  np.testing.assert_allclose(called(params, jnp.int32(4)), want_call, rtol=1e-6, atol=1e-6)


class _Layer(Module):
  """x + attention(x) with this layer's own window and rotary frequencies."""

  rng: KeySource = setting()

  def __post_init__(self) -> None:
    self.attention = MultiHeadAttention(
        self.graph.child("attention"), HEADS, num_kv_heads=2, rope_base=10000.0, rng=self.rng)

  def __call__(self, params: Params, x: jax.Array, own: dict[str, jax.Array]
               ) -> tuple[tuple[jax.Array, None], Params]:
    (h, _), params = self.attention.apply(
        params, x, sliding_window=own["window"], rope_frequencies=own["frequencies"])
    return (x + h, None), params


def test_each_layer_of_a_repeat_scan_has_its_own_window_and_frequencies() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  blocks = Repeat(graph.child("blocks"), lambda node: _Layer(node, rng=rng), 2)
  per_layer = {
      # A local layer (window 2), then a global one (a window past any length).
      "window": jnp.array([2, 2**31 - 1], jnp.int32),
      "frequencies": jnp.stack([jnp.array([1.0, 0.01]), jnp.array([0.5, 0.002])]),
  }
  x = _inputs()
  (_, _), params = blocks.scan(rng.seed(Params(), seed=0), x, per_layer)
  params = params.locked()
  y, _ = jax.jit(lambda p, own: blocks.scan(p, x, own)[0])(params, per_layer)
  # The same two layers, one after the other, in NumPy.
  expected = np.asarray(x, np.float64)
  masks = [_causal_window(LENGTH, 2), np.asarray(causal_mask(LENGTH))]
  for i in range(2):
    layer = _layer_slice(params, i)
    expected = expected + reference(
        layer, expected, expected, num_heads=HEADS, mask=masks[i],
        frequencies=np.asarray(per_layer["frequencies"][i], np.float64))
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def _layer_slice(params: Params, i: int) -> Params:
  """Layer `i`'s attention params at the paths `reference` reads."""
  prefix = ("net", "blocks", "layer", "attention")
  sliced = Params()
  for path, param in params.items():
    if path[: len(prefix)] == prefix:
      sliced[("net", "mha") + path[len(prefix):]] = Param(param.value[i])
  return sliced


@pytest.mark.parametrize(
    "value", [0, -3, True, 2.5, jnp.ones(2, jnp.int32), jnp.float32(3.0)], ids=str)
def test_a_bad_window_per_call_is_refused_naming_the_layer(value: Any) -> None:
  mha, params = _build()
  with pytest.raises(ValueError, match=r"MultiHeadAttention 'net/mha': sliding_window must be None \(the layer's setting\), a positive int, or an integer scalar array"):
    mha.apply(params, _inputs(), sliding_window=value)


def test_window_errors_name_the_layer_and_say_what_to_do() -> None:
  graph = Graph("net")
  with pytest.raises(ValueError, match=r"'net/mha': sliding_window \(or None\) must be a positive int, got 0"):
    MultiHeadAttention(graph.child("mha"), HEADS, rng=Rng(graph.child("rng")), sliding_window=0)
  mha, params = _build(sliding_window=2)
  with pytest.raises(ValueError, match=r"'net/mha': a sliding window compares the positions of self-attention.*query has length 7 and the key 3.*sliding_window=None"):
    mha(params, _inputs(), _inputs(length=3))
  plain, params = _build()
  with pytest.raises(ValueError, match=r"'net/mha': a sliding window compares the positions"):
    plain(params, _inputs(), _inputs(length=3), sliding_window=2)


pytestmark_explicit = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 host devices")


@pytestmark_explicit
def test_windowed_decoding_on_explicit_mesh_axes_equals_one_device() -> None:
  metadata = {
      "query": {SHARDING: (None, "model", None)}, "key": {SHARDING: (None, "model", None)},
      "value": {SHARDING: (None, "model", None)}, "out": {SHARDING: ("model", None, None)},
  }
  mha, params = _build(
      sliding_window=3, rope_base=10000.0, logit_soft_cap=5.0, projection_kernel_metadata=metadata)
  x = _inputs(batch=4)

  def decode(p: Params, x: jax.Array, size: jax.Array) -> jax.Array:
    cache, _ = mha.initial_state(p, x[:, 0], max_length=LENGTH)
    (first, cache), _ = mha.apply(p, x[:, :3], cache, sliding_window=size)
    outputs = [first]
    for t in range(3, LENGTH):
      (y, cache), _ = mha.decode_step(p, x[:, t], cache, sliding_window=size)
      outputs.append(y[:, None])
    return jnp.concatenate(outputs, axis=1)

  want = jax.jit(decode)(params, x, jnp.int32(3))
  # Jitted: eagerly, each primitive compiles on its own (seconds).
  full = jax.jit(lambda p, x: mha.apply(p, x)[0][0])(params, x)
  np.testing.assert_allclose(want, full, rtol=1e-5, atol=1e-5)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  placed = Params()
  for path, param in params.items():
    spec = P(*(param.sharding or ()))
    placed[path] = Param(jax.device_put(param.value, NamedSharding(mesh, spec)), param.trainable, param.metadata)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P("data", None, None)))
    got = jax.jit(decode)(placed.locked(), xs, jnp.int32(3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_positions_place_a_left_padded_sequence_as_if_unpadded() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  attention = MultiHeadAttention(graph.child("attention"), 2, rng=rng, rope_base=100.0,
                                 sliding_window=3)
  x = random_inputs(2, 4, 8, seed=1)
  params = rng.init(lambda p, v: attention.apply(p, v, is_training=False), x)
  # Both forward passes jitted: eagerly, each primitive compiles on its own.
  alone = jax.jit(lambda p, x: attention.apply(p, x, is_training=False)[0][0])(params, x)
  # Two pad tokens in front; the real tokens keep positions 0..3 and hide the pads.
  padded = jnp.concatenate([jnp.full((2, 2, 8), 7.0), x], axis=1)
  valid = jnp.arange(6) >= 2
  positions = jnp.maximum(jnp.cumsum(valid) - 1, 0)
  out = jax.jit(lambda p, padded, mask, positions: attention.apply(
      p, padded, is_training=False, mask=mask, positions=positions)[0][0])(
          params, padded, padding_mask(jnp.broadcast_to(valid, (2, 6))), positions)
  np.testing.assert_allclose(out[:, 2:], alone, atol=1e-6)
  with pytest.raises(ValueError, match=r"'net/attention': positions must be integers"):
    attention.apply(params, padded, is_training=False, positions=jnp.zeros(5, jnp.int32))
  cache, _ = attention.initial_state(params, x[:, 0], max_length=8)
  with pytest.raises(ValueError, match="positions and a cache"):
    attention.apply(params, x, cache, is_training=False, positions=jnp.arange(4))
