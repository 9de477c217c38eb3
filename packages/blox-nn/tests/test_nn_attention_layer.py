"""Tests of MultiHeadAttention as a layer: its params, its math against plain
references, masks, dropout, transformations, its settings and its errors."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, SequenceBase, summary
from blox.nn import MultiHeadAttention, Rng
from blox.params import SHARDING, Params
from nn_attention_helpers import (
    FEATURES, HEADS, build, init_params, random_inputs, random_mask, reference,
)


def test_nn_attention_param_layout_and_defaults() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  y, params = init_params(mha, rng, x)
  # decode_step is the single step, not __call__ (whose third argument is the
  # key), so the layer is deliberately not a SequenceBase.
  assert not isinstance(mha, SequenceBase)
  assert y.shape == (2, 5, FEATURES)
  head_dim = FEATURES // HEADS
  shapes = {path: tuple(p.value.shape) for path, p in params.items() if p.trainable}
  assert shapes == {
      ("net", "mha", "query", "kernel"): (FEATURES, HEADS, head_dim),
      ("net", "mha", "query", "bias"): (HEADS, head_dim),
      ("net", "mha", "key", "kernel"): (FEATURES, HEADS, head_dim),
      ("net", "mha", "key", "bias"): (HEADS, head_dim),
      ("net", "mha", "value", "kernel"): (FEATURES, HEADS, head_dim),
      ("net", "mha", "value", "bias"): (HEADS, head_dim),
      ("net", "mha", "out", "kernel"): (HEADS, head_dim, FEATURES),
      ("net", "mha", "out", "bias"): (FEATURES,),
  }


def test_nn_attention_cross_attention_matches_reference() -> None:
  seen: list[tuple[int, ...]] = []

  def recording(key: Any, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
    seen.append(tuple(shape))
    return jax.nn.initializers.lecun_normal()(key, shape, dtype)

  mha, rng = build(
      qkv_size=6, output_size=5, num_heads=3, kernel_init=recording
  )
  query, kv = random_inputs(2, 5, FEATURES, seed=1), random_inputs(2, 7, 3, seed=2)
  mask = random_mask(0.7, (2, 1, 5, 7), seed=3)
  y, params = init_params(mha, rng, query, kv, mask=mask)
  assert y.shape == (2, 5, 5)
  # Initializers see the flat (fan_in, fan_out) shape of each projection.
  assert seen == [(FEATURES, 6), (3, 6), (3, 6), (6, 5)]
  assert params[("net", "mha", "key", "kernel")].value.shape == (3, 3, 2)
  assert params[("net", "mha", "out", "kernel")].value.shape == (3, 2, 5)
  np.testing.assert_allclose(
      y, reference(params, query, kv, mask, num_heads=3), rtol=1e-5, atol=1e-5
  )
  # value defaults to key. (Jitted: eagerly, each primitive compiles on its own.)
  y_kv = jax.jit(lambda p, q, kv, m: mha(p, q, kv, kv, mask=m)[0])(params, query, kv, mask)
  np.testing.assert_allclose(y_kv, y, rtol=1e-6, atol=1e-6)


def test_nn_attention_self_attention_matches_reference() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  y, params = init_params(mha, rng, x)
  np.testing.assert_allclose(y, reference(params, x, x), rtol=1e-5, atol=1e-5)


def test_nn_attention_mask_broadcasting() -> None:
  mha, rng = build()
  query, kv = random_inputs(2, 5, FEATURES, seed=1), random_inputs(2, 7, FEATURES, seed=2)
  _, params = init_params(mha, rng, query, kv)
  full = random_mask(0.6, (2, HEADS, 5, 7), seed=5)
  full = full.at[..., 0].set(True)  # no fully masked rows
  # Jitted: eagerly, each primitive compiles on its own (seconds).
  call = jax.jit(lambda p, q, kv, m: mha(p, q, kv, mask=m)[0])
  for mask in (full, full[0, 0], full[:1], full[:, :1, :1]):
    y = call(params, query, kv, mask)
    np.testing.assert_allclose(
        y, reference(params, query, kv, mask), rtol=1e-5, atol=1e-5
    )
  # A mask changes the result (so the checks above are not vacuous).
  unmasked = jax.jit(lambda p, q, kv: mha(p, q, kv)[0])(params, query, kv)
  assert not np.allclose(unmasked, reference(params, query, kv, full), atol=1e-3)


def test_nn_attention_bad_masks_name_the_module() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  with pytest.raises(ValueError, match="net/mha.*does not broadcast"):
    mha(params, x, mask=jnp.ones((3, 5), bool))
  with pytest.raises(ValueError, match="net/mha.*does not broadcast"):
    mha(params, x, mask=jnp.ones((1, 2, 1, 5, 5), bool))
  with pytest.raises(TypeError, match="net/mha.*boolean"):
    mha(params, x, mask=jnp.ones((5, 5)))


def test_nn_attention_is_permutation_equivariant() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  y, params = init_params(mha, rng, x)
  perm = jnp.array([3, 0, 4, 1, 2])
  y_perm, _ = mha(params, x[:, perm])
  np.testing.assert_allclose(y_perm, y[:, perm], rtol=1e-5, atol=1e-5)


def test_nn_attention_extra_leading_batch_axes() -> None:
  mha, rng = build()
  x = random_inputs(1, 2, 5, FEATURES)
  y, params = init_params(mha, rng, x)
  flat, _ = mha(params, x.reshape(2, 5, FEATURES))
  np.testing.assert_allclose(y, flat.reshape(x.shape), rtol=1e-6, atol=1e-6)
  (causal, _), _ = mha.apply(params, x)
  (causal_flat, _), _ = mha.apply(params, x.reshape(2, 5, FEATURES))
  np.testing.assert_allclose(
      causal, causal_flat.reshape(causal.shape), rtol=1e-6, atol=1e-6
  )


def test_nn_attention_dropout_uses_one_key_when_training() -> None:
  mha, rng = build(dropout_rate=0.5)
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  counter = int(rng.get_counter(params))
  evaluated, after_eval = mha(params, x, is_training=False)
  assert int(rng.get_counter(after_eval)) == counter
  np.testing.assert_allclose(evaluated, reference(params, x, x), rtol=1e-5, atol=1e-5)
  trained, after_train = mha(params, x, is_training=True)
  assert int(rng.get_counter(after_train)) == counter + 1
  assert not np.allclose(trained, evaluated, atol=1e-3)
  again, _ = mha(after_train, x, is_training=True)
  assert not np.allclose(again, trained, atol=1e-3)
  # Decoding steps draw one key each as well.
  cache, _ = mha.initial_state(params, x[:, 0], max_length=7)
  (_, _), after_step = mha.decode_step(params, x[:, 0], cache, is_training=True)
  assert int(rng.get_counter(after_step)) == counter + 1
  # ... and only when asked: decode_step evaluates by default.
  (_, _), after_eval_step = mha.decode_step(params, x[:, 0], cache)
  assert int(rng.get_counter(after_eval_step)) == counter


def test_nn_attention_without_dropout_draws_no_key() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  _, after = mha(params, x, is_training=True)
  assert int(rng.get_counter(after)) == int(rng.get_counter(params))


def test_nn_attention_jit_grad_vmap() -> None:
  mha, rng = build(dropout_rate=0.25)
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)

  eager, eager_params = mha(params, x)
  jitted, jitted_params = jax.jit(mha)(params, x)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  assert int(rng.get_counter(jitted_params)) == int(rng.get_counter(eager_params))

  trainable, rest = params.split()

  def loss(trainable: Params) -> jax.Array:
    y, _ = mha(trainable.merge(rest), x, is_training=False)
    return jnp.sum(y**2)

  # grad and vmap under jit: eagerly, their primitives compile one by one
  # (seconds); the eager path is the one compared with jit above.
  grads = jax.jit(jax.grad(loss))(trainable)
  for path, grad in grads.items():
    assert np.all(np.isfinite(grad.value)), path
    if path[-1] == "kernel":
      assert np.any(grad.value != 0.0), path

  # Each lane is one sequence with a batch axis of 1 (a rank-2 lane would be
  # refused as ambiguous).
  lanes = jax.jit(jax.vmap(
      lambda x: mha(params, x, is_training=False)[0]
  ))(x[:, None])
  batched = jax.jit(lambda p, x: mha(p, x, is_training=False)[0])(params, x)
  np.testing.assert_allclose(lanes[:, 0], batched, rtol=1e-5, atol=1e-5)


def test_nn_attention_heads_must_divide_qkv_size() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  with pytest.raises(ValueError, match="'net/mha'.*qkv_size=7.*num_heads=2"):
    MultiHeadAttention(graph.child("mha"), 2, rng=rng, qkv_size=7)
  mha = MultiHeadAttention(graph.child("mha2"), 2, rng=rng)
  with pytest.raises(ValueError, match="'net/mha2'.*qkv_size=7.*num_heads=2"):
    mha(rng.seed(Params(), seed=0), jnp.ones((1, 3, 7)))


def test_nn_attention_constructor_validation() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  with pytest.raises(ValueError, match="net/a.*num_heads"):
    MultiHeadAttention(graph.child("a"), 0, rng=rng)
  with pytest.raises(ValueError, match="net/b.*dropout_rate"):
    MultiHeadAttention(graph.child("b"), 1, rng=rng, dropout_rate=1.0)
  with pytest.raises(ValueError, match="net/c.*output_size"):
    MultiHeadAttention(graph.child("c"), 1, rng=rng, output_size=0)
  with pytest.raises(ValueError, match="net/d.*num_heads must be a positive int, got True"):
    MultiHeadAttention(graph.child("d"), True, rng=rng)
  with pytest.raises(ValueError, match="net/e.*qkv_size.*positive int, got 4.0"):
    MultiHeadAttention(graph.child("e"), 2, rng=rng, qkv_size=4.0)  # type: ignore[arg-type]  # the misuse under test


def test_nn_attention_signature_shows_the_real_arguments() -> None:
  parameters = inspect.signature(MultiHeadAttention).parameters
  assert list(parameters) == [
      "graph", "num_heads", "rng", "num_kv_heads", "qkv_size", "output_size",
      "dropout_rate", "use_bias", "out_bias", "qk_norm", "qk_norm_epsilon",
      "qk_norm_scale_offset", "rope_base", "rope_scaling", "sliding_window", "query_scale",
      "logit_soft_cap", "implementation", "precision", "kernel_init", "bias_init", "qk_norm_scale_init", "projection_kernel_metadata",
      "projection_bias_metadata", "qk_norm_metadata", "param_dtype", "dtype",
  ]
  # The size is positional, everything else keyword-only; rng is required.
  keyword_only = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
  assert keyword_only == list(parameters)[2:]
  assert parameters["rng"].default is inspect.Parameter.empty
  assert (parameters["dropout_rate"].default, parameters["use_bias"].default) == (0.0, True)
  # The docstring documents every argument once, from the same declarations.
  doc = inspect.getdoc(MultiHeadAttention) or ""
  for name in parameters:
    assert doc.count(f"\n  {name}: ") == 1, name
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  with pytest.raises(TypeError, match="MultiHeadAttention.*unexpected keyword argument 'qkv_features'"):
    MultiHeadAttention(graph.child("a"), 2, rng=rng, qkv_features=4)  # type: ignore[call-arg]  # the old name, refused
  with pytest.raises(TypeError, match="MultiHeadAttention.*positional"):
    MultiHeadAttention(graph.child("b"), 2, rng)  # type: ignore[call-arg]  # rng is keyword-only


def test_nn_attention_per_projection_metadata_shards_heads() -> None:
  heads = (None, "model", None)
  mha, rng = build(
      projection_kernel_metadata={
          "query": {SHARDING: heads}, "key": {SHARDING: heads},
          "value": {SHARDING: heads}, "out": {SHARDING: ("model", None, None)},
      },
      # Biases of different ranks get specs of their own rank.
      projection_bias_metadata={"query": {SHARDING: ("model", None)}, "out": {SHARDING: (None,)}},
  )
  _, params = init_params(mha, rng, random_inputs(2, 5, FEATURES))

  def spec(*path: str) -> Any:
    return params[("net", "mha") + path].metadata.get(SHARDING)

  assert [spec(name, "kernel") for name in ("query", "key", "value")] == [heads] * 3
  assert spec("out", "kernel") == ("model", None, None)
  assert spec("query", "bias") == ("model", None)
  assert spec("out", "bias") == (None,)
  assert spec("key", "bias") is None and spec("value", "bias") is None


def test_nn_attention_bad_metadata_names_the_module_and_the_layout() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  # The old style: one metadata mapping for every kernel.
  with pytest.raises(ValueError, match=r"'net/a'.*projection_kernel_metadata maps projection names.*'query'.*got the key 'sharding'"):
    MultiHeadAttention(graph.child("a"), 2, rng=rng, projection_kernel_metadata={SHARDING: (None,)})  # type: ignore[dict-item]  # the misuse under test
  with pytest.raises(TypeError, match=r"'net/b'.*projection_bias_metadata\['out'\] must be a metadata mapping"):
    MultiHeadAttention(graph.child("b"), 2, rng=rng, projection_bias_metadata={"out": (None,)})  # type: ignore[dict-item]  # the misuse under test
  with pytest.raises(TypeError, match=r"'net/c'.*projection_kernel_metadata must map projection names"):
    MultiHeadAttention(graph.child("c"), 2, rng=rng, projection_kernel_metadata=[("query", {})])  # type: ignore[arg-type]  # the misuse under test


def test_nn_attention_stores_its_arguments_and_reserves_the_projection_nodes() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  mha = MultiHeadAttention(graph.child("mha"), 2, rng=rng, qkv_size=4, dropout_rate=0.1)
  assert (mha.num_heads, mha.rng, mha.qkv_size, mha.dropout_rate) == (2, rng, 4, 0.1)
  assert (mha.output_size, mha.use_bias, mha.projection_kernel_metadata) == (None, True, None)
  # No module is bound below the layer, and nobody else can bind where its
  # params live.
  assert [path for path, _ in graph.walk()] == [("net", "rng"), ("net", "mha")]
  with pytest.raises(ValueError, match="'net/mha' already has a child named 'query'"):
    mha.graph.child("query")


def test_nn_attention_shape_and_dtype_misuse_is_reported() -> None:
  mha, rng = build()
  x = random_inputs(2, 5, FEATURES)
  _, params = init_params(mha, rng, x)
  with pytest.raises(ValueError, match=r"'net/mha': query \(2, 5, 8\) and key \(3, 5, 8\).*batch axes"):
    mha(params, x, random_inputs(3, 5, FEATURES))
  with pytest.raises(ValueError, match=r"'net/mha': key \(2, 5, 8\) and value \(2, 4, 8\)"):
    mha(params, x, x, random_inputs(2, 4, FEATURES))
  mask = jnp.ones((2, 1, 5, 5), bool)
  with pytest.raises(TypeError, match=r"'net/mha': got a boolean array as key; did you mean mask=\.\.\.\?"):
    mha(params, x, mask)
  with pytest.raises(TypeError, match=r"'net/mha': got a boolean array as value; did you mean mask="):
    mha(params, x, x, mask)
  with pytest.raises(TypeError, match=r"'net/mha': query must be floating point.*astype"):
    mha(params, jnp.ones((2, 5, FEATURES), jnp.int32))
  with pytest.raises(TypeError, match=r"'net/mha': key must be floating point"):
    mha(params, x, jnp.ones((2, 5, FEATURES), bool).astype(jnp.int8))
  with pytest.raises(TypeError, match=r"'net/mha': inputs must be floating point"):
    mha.apply(params, jnp.ones((2, 5, FEATURES), jnp.int32))
  cache, _ = mha.initial_state(params, x[:, 0], max_length=3)
  with pytest.raises(TypeError, match=r"'net/mha': token must be floating point"):
    mha.decode_step(params, jnp.ones((2, FEATURES), jnp.int32), cache)


def test_nn_attention_summary_shows_no_helper_modules() -> None:
  mha, rng = build()
  _, params = init_params(mha, rng, random_inputs(2, 5, FEATURES))
  text = summary(params, mha.graph.root)
  for hidden in ("_SplitHeads", "_MergeHeads", "owner="):
    assert hidden not in text


def test_nn_attention_summary_groups_its_params_under_one_module() -> None:
  mha, rng = build()
  _, params = init_params(mha, rng, random_inputs(2, 5, FEATURES))
  lines = summary(params, mha.graph.root).splitlines()
  module_lines = [line for line in lines if line.startswith("net/mha")]
  assert len(module_lines) == 1
  assert module_lines[0].startswith("net/mha  MultiHeadAttention(")
  # The module line carries the subtotal of all eight params.
  total = sum(p.value.size for path, p in params.items() if path[:2] == ("net", "mha"))
  assert module_lines[0].split()[-2] == f"{total:,}"
  rows = lines[lines.index(module_lines[0]) + 1 :][:8]
  assert [row.split()[0] for row in rows] == [
      f"{name}/{leaf}" for name in ("query", "key", "value", "out") for leaf in ("kernel", "bias")
  ]
