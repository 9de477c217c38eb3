"""Every product of attention goes through `blox.nn.contract`: the four
projections under their weight names, and the two products of blox's
attention formula (logits and weighted values) without one."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.graph import Graph, Module
from blox.nn import MultiHeadAttention, Rng, dot_product_attention
from blox.nn._contract import Contraction, ContractionHook, contraction_hooks, set_contraction_hook
from blox.params import Params

PROJECTIONS = [("query", "kernel"), ("key", "kernel"), ("value", "kernel")]
LOGITS, WEIGHTED = "...qkgd,...skd->...kgqs", "...kgqs,...skd->...qkgd"
Seen = list[tuple[Module | None, tuple[str, ...] | None, str | None]]


def _recording(seen: Seen) -> ContractionHook:
  def hook(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    seen.append((contraction.module, contraction.weight_name, contraction.equation))
    return contraction.compute(inputs, weight)

  return hook


def _build(**kwargs: Any) -> tuple[MultiHeadAttention, Params]:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  mha = MultiHeadAttention(graph.child("mha"), 2, rng=rng, num_kv_heads=1, **kwargs)
  return mha, rng.seed(Params(), seed=0)


def _inputs(*shape: int, seed: int = 1) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), shape)


def test_nn_attention_projections_go_through_contract() -> None:
  mha, params = _build(qk_norm=True, rope_base=10000.0)
  seen: Seen = []
  with contraction_hooks(_recording(seen)):
    _, params = mha(params, _inputs(2, 5, 8))
  # jax.nn.dot_product_attention computes the products on this path.
  assert [name for _, name, _ in seen] == [*PROJECTIONS, ("out", "kernel")]
  assert all(module is mha for module, _, _ in seen)
  assert [equation for *_, equation in seen] == ["...i,ihd->...hd"] * 3 + ["...hd,hdo->...o"]


def test_nn_attention_formula_products_go_through_contract() -> None:
  # A precision (or dropout, or float64) takes blox's own formula.
  mha, params = _build(precision=jax.lax.Precision.HIGHEST)
  x = _inputs(2, 5, 8)
  expected = [*PROJECTIONS, None, None, ("out", "kernel")]
  seen: Seen = []
  with contraction_hooks(_recording(seen)):
    _, params = mha(params, x)
  assert [name for _, name, _ in seen] == expected
  assert [equation for *_, equation in seen][3:5] == [LOGITS, WEIGHTED]
  assert all(module is mha for module, _, _ in seen)
  # Decoding and the jitted causal forward take the same path.
  cache, _ = mha.initial_state(params, x[:, 0], max_length=3)
  for call in (lambda: mha.decode_step(params, x[:, 0], cache),
               lambda: jax.jit(mha.apply)(params, x)):
    seen.clear()
    with contraction_hooks(_recording(seen)):
      call()
    assert [name for _, name, _ in seen] == expected


def test_nn_attention_hooks_change_what_it_computes() -> None:
  mha, params = _build(use_bias=False)
  x = _inputs(2, 5, 8)
  y, params = mha(params, x)
  assert not np.allclose(y, 0.0)
  paths: list[tuple[str, ...] | None] = []

  def zero_values(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    paths.append(contraction.weight_path())
    if contraction.weight_name == ("value", "kernel"):
      weight = jnp.zeros_like(weight)
    return contraction.compute(inputs, weight)

  set_contraction_hook(mha, zero_values)
  zeroed, _ = mha(params, x)
  # No value, no bias: nothing reaches the output.
  np.testing.assert_array_equal(zeroed, 0.0)
  assert paths[2] == ("net", "mha", "value", "kernel")
  set_contraction_hook(mha, None)
  np.testing.assert_array_equal(mha(params, x)[0], y)


def test_nn_dot_product_attention_formula_products_go_through_contract() -> None:
  q, k, v = _inputs(2, 5, 4, 8), _inputs(2, 6, 2, 8, seed=2), _inputs(2, 6, 2, 8, seed=3)
  highest = jax.lax.Precision.HIGHEST
  seen: Seen = []
  with contraction_hooks(_recording(seen)):
    plain = dot_product_attention(q, k, v, precision=highest)
  assert seen == [(None, None, LOGITS), (None, None, WEIGHTED)]

  def doubled_logits(contraction: Contraction, inputs: jax.Array, weight: jax.Array) -> jax.Array:
    product = contraction.compute(inputs, weight)
    return 2 * product if contraction.equation == LOGITS else product

  with contraction_hooks(doubled_logits):
    doubled = dot_product_attention(q, k, v, precision=highest)
  np.testing.assert_allclose(
      doubled, dot_product_attention(q, k, v, scale=2 / np.sqrt(8), precision=highest),
      rtol=1e-5, atol=1e-5,
  )
  assert not np.allclose(doubled, plain, atol=1e-3)
