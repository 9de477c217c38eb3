"""Tests of attention's options for pretrained model families, against a NumPy
reference: the logit scale (`query_scale`), Gemma 2's soft cap
(`logit_soft_cap`), the output bias (`out_bias`), qk-norm's epsilon and
scale offset, and rescaled rotary frequencies (`rope_scaling`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nn_attention_reference import np_frequencies, reference
from blox.graph import Graph
from blox.nn import MultiHeadAttention, Rng, RopeScaling, causal_mask, initializers, rope_frequencies
from blox.params import Params

HEADS = 4
FEATURES = 16
HEAD_DIM = FEATURES // HEADS


def _build(**kwargs: Any) -> tuple[MultiHeadAttention, Params]:
  """The layer and its locked params, made on a batch of 2 sequences of 5."""
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  kwargs.setdefault("bias_init", jax.nn.initializers.normal(1.0))
  mha = MultiHeadAttention(graph.child("mha"), HEADS, rng=rng, **kwargs)
  _, params = mha(rng.seed(Params(), seed=0), _inputs())
  return mha, params.locked()


def _inputs(seed: int = 1, scale: float = 1.0) -> jax.Array:
  # Drawn with NumPy: jax.random compiles its threefry kernel anew for every
  # shape (over a second each on a CPU); any normal draw serves these tests.
  return jnp.asarray(np.random.default_rng(seed).standard_normal((2, 5, FEATURES)) * scale, jnp.float32)


def test_query_scale_replaces_one_over_sqrt_head_dim() -> None:
  mha, params = _build(query_scale=0.125)
  x = _inputs()
  y, _ = mha(params, x)
  np.testing.assert_allclose(y, reference(params, x, x, num_heads=HEADS, scale=0.125), rtol=1e-5, atol=1e-5)
  # The default scale gives another result: the setting is used.
  assert not np.allclose(y, reference(params, x, x, num_heads=HEADS), rtol=1e-3, atol=1e-3)


def test_logit_soft_cap_caps_the_scaled_logits_before_the_mask() -> None:
  # Large inputs, so that the cap changes the logits a lot.
  mha, params = _build(logit_soft_cap=2.0, query_scale=0.5, implementation="xla")
  x = _inputs(scale=4.0)
  (y, _), _ = mha.apply(params, x)
  expected = reference(params, x, x, num_heads=HEADS, mask=causal_mask(5), scale=0.5, cap=2.0)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  uncapped = reference(params, x, x, num_heads=HEADS, mask=causal_mask(5), scale=0.5)
  assert not np.allclose(expected, uncapped, rtol=1e-2, atol=1e-2)
  # blox's formula computes it (jax's fused function has no soft cap).
  jaxpr = str(jax.make_jaxpr(lambda p: mha.apply(p, x)[0][0])(params))
  assert "tanh" in jaxpr
  # Cached decoding caps the same logits.
  cache, _ = mha.initial_state(params, x[:, 0], max_length=5)
  steps = []
  for t in range(5):
    (y_t, cache), _ = mha.decode_step(params, x[:, t], cache)
    steps.append(y_t)
  np.testing.assert_allclose(jnp.stack(steps, 1), expected, rtol=1e-5, atol=1e-5)


def test_out_bias_false_leaves_the_output_projection_without_a_bias() -> None:
  mha, params = _build(out_bias=False)
  names = [path[2:] for path in params if path[1] == "mha"]
  assert names == [("query", "kernel"), ("query", "bias"), ("key", "kernel"), ("key", "bias"),
                   ("value", "kernel"), ("value", "bias"), ("out", "kernel")]
  x = _inputs()
  y, _ = mha(params, x)
  np.testing.assert_allclose(y, reference(params, x, x, num_heads=HEADS), rtol=1e-5, atol=1e-5)
  # out_bias=True adds the output bias alone.
  mha, params = _build(use_bias=False, out_bias=True)
  assert [path[2:] for path in params if path[-1] == "bias"] == [("out", "bias")]


def test_qk_norm_epsilon_and_scale_offset_are_gemma3s_norm() -> None:
  mha, params = _build(
      qk_norm=True, qk_norm_epsilon=0.5, qk_norm_scale_offset=1.0,
      qk_norm_scale_init=initializers.zeros, num_kv_heads=2,
  )
  np.testing.assert_array_equal(params[("net", "mha", "query_norm", "scale")].value, 0.0)
  params = params.unlocked()
  params = mha.set_param(params, ("query_norm", "scale"), jnp.linspace(-0.5, 0.5, HEAD_DIM))
  params = mha.set_param(params, ("key_norm", "scale"), jnp.linspace(0.2, 0.9, HEAD_DIM))
  x = _inputs(scale=0.3)  # small, so that epsilon=0.5 matters
  y, _ = mha(params, x)
  expected = reference(
      params, x, x, num_heads=HEADS, qk_norm=True, qk_norm_epsilon=0.5, qk_norm_scale_offset=1.0)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  default_eps = reference(params, x, x, num_heads=HEADS, qk_norm=True, qk_norm_scale_offset=1.0)
  assert not np.allclose(expected, default_eps, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "scaling", [RopeScaling("linear", factor=4.0), RopeScaling("llama3", 8.0, original_max_position=16)])
def test_rope_scaling_rotates_with_the_rescaled_frequencies(scaling: RopeScaling) -> None:
  mha, params = _build(rope_base=10000.0, rope_scaling=scaling, num_kv_heads=2)
  x = _inputs()
  frequencies = np.asarray(rope_frequencies(HEAD_DIM, 10000.0, scaling), np.float64)
  assert not np.allclose(frequencies, np_frequencies(HEAD_DIM, 10000.0))
  # Jitted: eagerly, each primitive compiles on its own (seconds).
  apply = jax.jit(lambda p, xs, c: mha.apply(p, xs, c)[0])
  y, _ = apply(params, x, None)
  expected = reference(params, x, x, num_heads=HEADS, mask=causal_mask(5), frequencies=frequencies)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  # Cached decoding rotates at the cache positions with the same frequencies.
  cache, _ = mha.initial_state(params, x[:, 0], max_length=5)
  prefill, cache = apply(params, x[:, :2], cache)
  last, _ = apply(params, x[:, 2:], cache)
  np.testing.assert_allclose(jnp.concatenate([prefill, last], 1), expected, rtol=1e-5, atol=1e-5)


def test_rope_frequencies_per_call_replace_the_settings_under_jit() -> None:
  mha, params = _build(rope_base=10000.0)
  x = _inputs()
  frequencies = jnp.array([0.9, 0.05])
  run = jax.jit(lambda p, f: mha(p, x, rope_frequencies=f)[0])
  expected = reference(params, x, x, num_heads=HEADS, frequencies=np.asarray(frequencies, np.float64))
  np.testing.assert_allclose(run(params, frequencies), expected, rtol=1e-5, atol=1e-5)
  # The setting's frequencies again, given explicitly: the plain call's output.
  plain, _ = mha(params, x)
  np.testing.assert_allclose(run(params, rope_frequencies(HEAD_DIM)), plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"rope_scaling": RopeScaling("linear", 2.0)}, ValueError,
         r"'net/mha': rope_scaling=RopeScaling\(.*\) rescales the rotary frequencies, but rope_base=None"),
        ({"rope_base": 1e4, "rope_scaling": {"kind": "linear"}}, TypeError,
         r"'net/mha': rope_scaling must be None or a blox.nn.RopeScaling.*got dict"),
        ({"logit_soft_cap": 0.0}, ValueError, r"'net/mha': logit_soft_cap must be None or a positive number, got 0.0"),
        ({"query_scale": -1.0}, ValueError, r"'net/mha': query_scale must be None or a positive number"),
        ({"out_bias": 0}, TypeError, r"'net/mha': out_bias must be None or a bool"),
        ({"qk_norm_epsilon": -1.0}, ValueError, r"'net/mha': qk_norm_epsilon must be a non-negative number"),
        ({"qk_norm_scale_offset": None}, TypeError, r"'net/mha': qk_norm_scale_offset must be a number"),
    ],
)
def test_settings_are_checked_naming_the_layer(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
  graph = Graph("net")
  with pytest.raises(error, match=message):
    MultiHeadAttention(graph.child("mha"), HEADS, rng=Rng(graph.child("rng")), **kwargs)


def test_rope_frequencies_per_call_are_checked() -> None:
  mha, params = _build()
  x = _inputs()
  with pytest.raises(ValueError, match=r"'net/mha': rope_frequencies were given, but the layer applies no rotary embeddings \(rope_base=None\)"):
    mha(params, x, rope_frequencies=jnp.ones(2))
  mha, params = _build(rope_base=10000.0)
  with pytest.raises(ValueError, match=r"'net/mha': rope_frequencies of shape \(3,\) do not fit a head_dim of 4"):
    mha.apply(params, x, rope_frequencies=jnp.ones(3))
