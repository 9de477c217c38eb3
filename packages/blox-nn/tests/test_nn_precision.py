"""Tests of mixed precision in the layers: `param_dtype`, `dtype`, the graph's
`Policy`, float32 statistics and softmax, and `softmax_cross_entropy`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module, Policy, summary
from blox.nn import (
    GRU,
    LSTM,
    BatchNorm,
    Conv,
    ConvTranspose,
    Dropout,
    Embed,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    RMSNorm,
    Rng,
    softmax_cross_entropy,
)
from blox.params import Params

BF16 = jnp.dtype(jnp.bfloat16)
F16 = jnp.dtype(jnp.float16)
F32 = jnp.dtype(jnp.float32)

# name -> (make(node, rng, **dtype_kwargs), run(module, params, x) -> (outputs, params), inputs)
Make = Callable[..., Module]
Run = Callable[[Any, Params, jax.Array], tuple[Any, Params]]


def _call(module: Any, params: Params, x: jax.Array) -> tuple[Any, Params]:
  result: tuple[Any, Params] = module(params, x)
  return result


def _sequence(module: Any, params: Params, x: jax.Array) -> tuple[Any, Params]:
  (outputs, _), params = module.apply(params, x)
  return outputs, params


_SEQ = jnp.linspace(-1.0, 1.0, 2 * 5 * 8).reshape(2, 5, 8)
_IMAGE = jnp.linspace(-1.0, 1.0, 2 * 6 * 6 * 3).reshape(2, 6, 6, 3)

LAYERS: dict[str, tuple[Make, Run, jax.Array]] = {
    "Linear": (lambda g, rng, **kw: Linear(g, 4, rng=rng, **kw), _call, _SEQ),
    "Conv": (lambda g, rng, **kw: Conv(g, 4, (3, 3), rng=rng, **kw), _call, _IMAGE),
    "ConvTranspose": (
        lambda g, rng, **kw: ConvTranspose(g, 4, (3, 3), rng=rng, strides=2, **kw), _call, _IMAGE
    ),
    "LayerNorm": (lambda g, rng, **kw: LayerNorm(g, **kw), _call, _SEQ),
    "RMSNorm": (lambda g, rng, **kw: RMSNorm(g, **kw), _call, _SEQ),
    "BatchNorm": (lambda g, rng, **kw: BatchNorm(g, **kw), _call, _SEQ),
    "MultiHeadAttention": (
        lambda g, rng, **kw: MultiHeadAttention(g, 2, rng=rng, **kw), _call, _SEQ
    ),
    "LSTM": (lambda g, rng, **kw: LSTM(g, hidden_size=4, rng=rng, **kw), _sequence, _SEQ),
    "GRU": (lambda g, rng, **kw: GRU(g, hidden_size=4, rng=rng, **kw), _sequence, _SEQ),
    "Embed": (
        lambda g, rng, **kw: Embed(g, 10, 4, rng=rng, **kw), _call, jnp.array([[1, 2], [3, 9]])
    ),
}


def _build(
    name: str, policy: Policy | None = None, node_policy: Policy | None = None, **kwargs: Any
) -> tuple[Module, Params, Any]:
  """The layer `name` on `net/block/layer`, run once; returns `(layer, params, outputs)`."""
  make, run, x = LAYERS[name]
  graph = Graph("net", policy=policy)
  rng = Rng(graph.child("rng"))
  layer = make(graph.child("block").child("layer", policy=node_policy), rng, **kwargs)
  outputs, params = run(layer, rng.seed(Params(), seed=0), x)
  return layer, params, outputs


def _float_params(params: Params) -> dict[tuple[str, ...], Any]:
  return {
      path: param.value.dtype
      for path, param in params.items()
      if path[1] != "rng"
  }


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_defaults_are_unchanged_float32(name: str) -> None:
  layer, params, outputs = _build(name)
  assert set(_float_params(params).values()) == {F32}
  assert outputs.dtype == F32
  assert layer.param_dtype is None and layer.dtype is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_policy_compute_dtype_keeps_float32_params(name: str) -> None:
  _, params, outputs = _build(name, Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16))
  assert set(_float_params(params).values()) == {F32}
  assert outputs.dtype == BF16


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_policy_output_dtype_casts_the_outputs(name: str) -> None:
  _, _, outputs = _build(name, Policy(compute_dtype=jnp.bfloat16, output_dtype=jnp.float32))
  assert outputs.dtype == F32


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_param_dtype_bf16_creates_bf16_params(name: str) -> None:
  expected = {BF16, F32} if name == "BatchNorm" else {BF16}
  _, params, _ = _build(name, param_dtype=jnp.bfloat16)
  assert set(_float_params(params).values()) == expected
  _, params, _ = _build(name, Policy(param_dtype=jnp.bfloat16))
  assert set(_float_params(params).values()) == expected


def test_batch_norm_running_statistics_stay_float32() -> None:
  _, params, _ = _build("BatchNorm", Policy(param_dtype=jnp.bfloat16))
  dtypes = {path[-1]: dtype for path, dtype in _float_params(params).items()}
  assert dtypes == {"running_mean": F32, "running_var": F32, "scale": BF16, "bias": BF16}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_own_arguments_beat_the_policy(name: str) -> None:
  policy = Policy(param_dtype=jnp.bfloat16, compute_dtype=jnp.bfloat16)
  layer, params, outputs = _build(name, policy, param_dtype=jnp.float32, dtype=jnp.float16)
  assert set(_float_params(params).values()) == {F32}
  assert outputs.dtype == F16
  assert layer.param_dtype == F32 and layer.dtype == F16  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_child_node_policy_overrides_one_field_and_inherits_the_others(name: str) -> None:
  root = Policy(param_dtype=jnp.bfloat16, compute_dtype=jnp.bfloat16)
  layer, params, outputs = _build(name, root, node_policy=Policy(compute_dtype=jnp.float16))
  assert layer.policy() == Policy(param_dtype=jnp.bfloat16, compute_dtype=jnp.float16)
  expected = {BF16, F32} if name == "BatchNorm" else {BF16}
  assert set(_float_params(params).values()) == expected
  assert outputs.dtype == F16


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("argument", ["param_dtype", "dtype"])
def test_a_bad_dtype_argument_names_the_layer(name: str, argument: str) -> None:
  make, _, _ = LAYERS[name]
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  with pytest.raises(TypeError, match=rf"{name} 'net/int': {argument} must be a floating dtype.*int32"):
    make(graph.child("int"), rng, **{argument: jnp.int32})
  with pytest.raises(TypeError, match=rf"{name} 'net/typo': {argument} must be a floating dtype.*got 'half-ish'"):
    make(graph.child("typo"), rng, **{argument: "half-ish"})


def test_explicit_param_dtype_is_checked_against_existing_params() -> None:
  _, params, _ = _build("Linear")
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  layer = Linear(graph.child("block").child("layer"), 4, rng=rng, param_dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match=r"\('net', 'block', 'layer', 'kernel'\)"):
    layer(params, _SEQ)


def test_repr_shows_dtypes_by_name() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  linear = Linear(graph.child("out"), 2, rng=rng, param_dtype="float32", dtype=jnp.bfloat16)
  assert repr(linear) == "Linear(output_size=2, rng=Rng@net/rng, param_dtype=float32, dtype=bfloat16)"


def _block() -> tuple[Callable[[Params, jax.Array], tuple[jax.Array, Params]], Params, Graph]:
  """Linear -> LayerNorm -> MultiHeadAttention -> Linear under a bf16-compute policy."""
  graph = Graph("net", policy=Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16))
  rng = Rng(graph.child("rng"))
  layers = [
      Linear(graph.child("inp"), 8, rng=rng),
      LayerNorm(graph.child("norm")),
      MultiHeadAttention(graph.child("attn"), 2, rng=rng),
      Linear(graph.child("out"), 4, rng=rng),
  ]

  def block(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    for layer in layers:
      x, params = layer(params, x)
    return x, params

  _, params = block(rng.seed(Params(), seed=0), _SEQ)
  return block, params, graph


def test_bf16_block_jaxpr_has_bf16_products_and_float32_params() -> None:
  block, params, _ = _block()
  assert {param.value.dtype for path, param in params.items() if path[1] != "rng"} == {F32}
  closed = jax.make_jaxpr(block)(params, _SEQ)
  eqns = closed.jaxpr.eqns  # the block has no scans or other sub-jaxprs
  dots = [eqn for eqn in eqns if eqn.primitive.name == "dot_general"]
  # Four projections in, two attention products, the out projection, the two Linears.
  assert len(dots) == 8
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [BF16, BF16]
  # Every product comes out in bfloat16 but the attention logits q.k, which
  # jax.nn.dot_product_attention accumulates in float32 for its float32 softmax.
  out_dtypes = [eqn.outvars[0].aval.dtype for eqn in dots]
  assert out_dtypes.count(BF16) == 7 and out_dtypes.count(F32) == 1
  # The LayerNorm statistics and the softmax reduce in float32.
  reduces = [eqn for eqn in eqns if eqn.primitive.name in ("reduce_sum", "reduce_max")]
  assert reduces and all(eqn.invars[0].aval.dtype == F32 for eqn in reduces)
  outputs, new_params = block(params, _SEQ)
  assert outputs.dtype == BF16
  assert {param.value.dtype for path, param in new_params.items() if path[1] != "rng"} == {F32}


def test_gradients_of_a_bf16_block_are_float32() -> None:
  block, params, _ = _block()
  trainable, rest = params.split()

  def loss(trainable: Params) -> jax.Array:
    outputs, _ = block(trainable.merge(rest), _SEQ)
    return jnp.mean(jnp.square(outputs.astype(jnp.float32)))

  # Under jit (the dtypes are those of the eager gradient): eagerly, each
  # primitive of the backward pass compiles on its own (seconds).
  grads = jax.jit(jax.grad(loss))(trainable)
  assert {param.value.dtype for param in grads.values()} == {F32}


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm", "BatchNorm"])
def test_norm_statistics_stay_float32_with_bf16_compute(name: str) -> None:
  # bf16 inputs whose spread is tiny next to their mean: squaring and
  # averaging in bf16 would lose the spread entirely.
  spread = jnp.array([-1.0, 1.0, -0.5, 0.5] * 4)
  x = (1000.0 + spread).astype(jnp.bfloat16)
  batch = jnp.stack([x, x + 2.0 * spread.astype(jnp.bfloat16)])[:, None, :]
  graph = Graph("net", policy=Policy(compute_dtype=jnp.bfloat16))
  make, _, _ = LAYERS[name]
  layer = make(graph.child("norm"), None)
  y, _ = layer(Params(), batch)
  assert y.dtype == BF16
  x32 = batch.astype(jnp.float32)
  if name == "LayerNorm":
    mean = x32.mean(-1, keepdims=True)
    expected = (x32 - mean) / jnp.sqrt(((x32 - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
  elif name == "RMSNorm":
    expected = x32 / jnp.sqrt((x32**2).mean(-1, keepdims=True) + 1e-5)
  else:
    mean = x32.mean((0, 1))
    expected = (x32 - mean) / jnp.sqrt(((x32 - mean) ** 2).mean((0, 1)) + 1e-5)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(expected), rtol=2e-2, atol=2e-2)
  closed = jax.make_jaxpr(lambda p, v: layer(p, v)[0])(Params(), batch)
  reduces = [e for e in closed.jaxpr.eqns if e.primitive.name == "reduce_sum"]
  assert reduces and all(e.invars[0].aval.dtype == F32 for e in reduces)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("is_static", [False, True])
def test_recurrent_state_stays_in_the_compute_dtype(cell: str, is_static: bool) -> None:
  make, _, _ = LAYERS[cell]
  graph = Graph(
      "net", policy=Policy(compute_dtype=jnp.bfloat16, output_dtype=jnp.float32)
  )
  rng = Rng(graph.child("rng"))
  layer = make(graph.child("cell"), rng, is_static=is_static)
  params = rng.seed(Params(), seed=0)
  # float32 inputs: the carry must still be bf16 from the first step on.
  (outputs, state), params = layer.apply(params, _SEQ)  # type: ignore[attr-defined]
  assert outputs.dtype == F32
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {BF16}
  assert {p.value.dtype for path, p in params.items() if path[1] != "rng"} == {F32}
  initial, _ = layer.initial_state(params, _SEQ[:, 0])  # type: ignore[attr-defined]
  assert {leaf.dtype for leaf in jax.tree.leaves(initial)} == {BF16}
  # A float32 state handed in is cast to the compute dtype by the step.
  f32_state = jax.tree.map(lambda leaf: leaf.astype(jnp.float32), initial)
  (_, state), _ = layer.apply(params, _SEQ, f32_state)  # type: ignore[attr-defined]
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {BF16}


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_bf16_params_and_inputs_scan_without_a_policy(cell: str) -> None:
  make, _, _ = LAYERS[cell]
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  layer = make(graph.child("cell"), rng, param_dtype=jnp.bfloat16)
  (outputs, state), _ = layer.apply(  # type: ignore[attr-defined]
      rng.seed(Params(), seed=0), _SEQ.astype(jnp.bfloat16)
  )
  assert outputs.dtype == BF16
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {BF16}


def test_embed_table_in_param_dtype_lookups_and_attend_in_compute_dtype() -> None:
  graph = Graph("lm", policy=Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16))
  rng = Rng(graph.child("rng"))
  embed = Embed(graph.child("embed"), 10, 4, rng=rng)
  ids = jnp.array([[1, 2, 3]])
  vectors, params = embed(rng.seed(Params(), seed=0), ids)
  table = params[("lm", "embed", "embedding")].value
  assert table.dtype == F32 and vectors.dtype == BF16
  np.testing.assert_array_equal(np.asarray(vectors), np.asarray(table[ids].astype(jnp.bfloat16)))
  logits, _ = embed.attend(params, jnp.ones((1, 3, 4)))
  assert logits.dtype == BF16
  eqns = jax.make_jaxpr(lambda p, x: embed.attend(p, x)[0])(params, jnp.ones((1, 3, 4))).jaxpr.eqns
  dots = [e for e in eqns if e.primitive.name == "dot_general"]
  assert [v.aval.dtype for v in dots[0].invars] == [BF16, BF16]


def test_attention_cache_follows_the_compute_dtype() -> None:
  graph = Graph("net", policy=Policy(compute_dtype=jnp.bfloat16))
  rng = Rng(graph.child("rng"))
  mha = MultiHeadAttention(graph.child("mha"), 2, rng=rng)
  params = rng.seed(Params(), seed=0)
  cache, params = mha.initial_state(params, _SEQ[:, 0], max_length=5)
  assert cache.key.dtype == BF16 and cache.value.dtype == BF16
  (y, cache), params = mha.decode_step(params, _SEQ[:, 0], cache)
  assert y.dtype == BF16 and cache.key.dtype == BF16
  (full, _), _ = mha.apply(params, _SEQ)
  assert full.dtype == BF16
  explicit, _ = mha.initial_state(params, _SEQ[:, 0], max_length=5, dtype=jnp.float32)
  assert explicit.key.dtype == F32


def test_dropout_keeps_the_input_dtype_under_a_policy() -> None:
  graph = Graph("net", policy=Policy(compute_dtype=jnp.float16, output_dtype=jnp.float32))
  rng = Rng(graph.child("rng"))
  dropout = Dropout(graph.child("dropout"), rate=0.5, rng=rng)
  y, _ = dropout(rng.seed(Params(), seed=0), jnp.ones(8, jnp.bfloat16))
  assert y.dtype == BF16


def test_summary_shows_each_layers_compute_dtype() -> None:
  _, params, graph = _block()
  lines = summary(params, graph).splitlines()
  for prefix in ("net/inp ", "net/norm ", "net/attn ", "net/out "):
    line = next(line for line in lines if line.startswith(prefix))
    assert "compute bfloat16" in line
  rng_line = next(line for line in lines if line.startswith("net/rng "))
  assert "compute" not in rng_line


# softmax_cross_entropy


def _reference(logits: jax.Array, labels: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_cross_entropy_matches_log_softmax_in_float32(dtype: Any) -> None:
  keys = jax.random.split(jax.random.key(0))
  logits = (8.0 * jax.random.normal(keys[0], (3, 5, 100))).astype(dtype)
  labels = jax.random.randint(keys[1], (3, 5), 0, 100)
  losses = softmax_cross_entropy(logits, labels)
  assert losses.dtype == F32 and losses.shape == (3, 5)
  np.testing.assert_allclose(
      np.asarray(losses), np.asarray(_reference(logits, labels)), rtol=1e-6, atol=1e-5
  )


def test_cross_entropy_is_float32_inside_and_its_gradient_reaches_bf16_logits() -> None:
  logits = jnp.linspace(-3.0, 3.0, 2 * 7).reshape(2, 7).astype(jnp.bfloat16)
  labels = jnp.array([0, 6])
  eqns = jax.make_jaxpr(softmax_cross_entropy)(logits, labels).jaxpr.eqns
  reduces = [e for e in eqns if e.primitive.name in ("reduce_sum", "reduce_max")]
  assert reduces and all(e.invars[0].aval.dtype == F32 for e in reduces)
  grad = jax.grad(lambda x: softmax_cross_entropy(x, labels).sum())(logits)
  expected = jax.nn.softmax(logits.astype(jnp.float32)) - jax.nn.one_hot(labels, 7)
  assert grad.dtype == BF16
  np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(expected), atol=1e-2)


def test_cross_entropy_of_out_of_range_labels_is_nan() -> None:
  losses = softmax_cross_entropy(jnp.zeros((3, 4)), jnp.array([-1, 4, 2]))
  assert np.isnan(np.asarray(losses[:2])).all()
  assert float(losses[2]) == pytest.approx(np.log(4.0))


def test_cross_entropy_errors_name_the_function_and_the_fix() -> None:
  with pytest.raises(TypeError, match=r"softmax_cross_entropy: labels must be integer.*one-hot"):
    softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2))
  with pytest.raises(TypeError, match=r"softmax_cross_entropy: logits must be floating.*astype"):
    softmax_cross_entropy(jnp.zeros((2, 3), jnp.int32), jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels \(2, 3\) must have the shape"):
    softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels \(\) must have the shape"):
    softmax_cross_entropy(jnp.zeros(()), jnp.zeros((), jnp.int32))
