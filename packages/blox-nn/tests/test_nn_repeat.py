"""Tests of `blox.graph.Repeat` with real layers: a residual MLP block, BatchNorm."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module, Repeat, summary
from blox.nn import BatchNorm, Dropout, LayerNorm, Linear, Rng
from blox.params import STACKED, Params, unused_params, value_and_grad

FEATURES = 4


class Block(Module):
  """`x + dropout(linear(relu(linear(layer_norm(x)))))`."""

  def __init__(self, graph: Graph, *, rng: Rng, rate: float = 0.0) -> None:
    super().__init__(graph)
    self.rng = rng
    self.rate = rate
    self.norm = LayerNorm(graph.child("norm"))
    self.up = Linear(graph.child("up"), 8, rng=rng)
    self.down = Linear(graph.child("down"), FEATURES, rng=rng)
    self.dropout = Dropout(graph.child("dropout"), rate=rate, rng=rng)

  def __call__(
      self, params: Params, x: jax.Array, is_training: bool = True
  ) -> tuple[jax.Array, Params]:
    h, params = self.norm(params, x)
    h, params = self.up(params, h)
    h, params = self.down(params, jax.nn.relu(h))
    h, params = self.dropout(params, h, is_training=is_training)
    return x + h, params


def build(num_layers: int, rate: float = 0.0, **options: Any) -> tuple[Graph, Rng, Repeat]:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  blocks = Repeat(
      graph.child("blocks"), lambda node: Block(node, rng=rng, rate=rate), num_layers, **options
  )
  return graph, rng, blocks


def init(rng: Rng, blocks: Repeat, x: jax.Array, **kwargs: Any) -> tuple[jax.Array, Params]:
  return blocks(rng.seed(Params(), seed=0), x, **kwargs)


def same_structure(a: Any, b: Any) -> bool:
  # Typed as object: jax's stubs leave PyTreeDef unresolved for mypy.
  structure: object = jax.tree.structure(a)
  return structure == jax.tree.structure(b)


X = jnp.linspace(-1.0, 1.0, 2 * FEATURES).reshape(2, FEATURES)


def test_a_built_block_or_a_class_that_needs_more_says_what_to_pass() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  block = Block(graph.child("block"), rng=rng)
  with pytest.raises(
      TypeError,
      match=r"Repeat 'net/blocks': make_layer must be a function node -> Module"
      r" \(e\.g\. lambda node: Block\(node, \.\.\.\)\); got a Block instance",
  ):
    Repeat(graph.child("blocks"), block, num_layers=2)  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(
      TypeError,
      match=r"Repeat 'net/stack': make_layer is the class Block, .*'rng'.*lambda node: Block\(node, \.\.\.\)",
  ):
    Repeat(graph.child("stack"), Block, num_layers=2)  # type: ignore[arg-type]  # the misuse under test
  stack = Repeat(graph.child("partial"), functools.partial(Block, rng=rng), num_layers=2)
  _, params = stack(rng.seed(Params(), seed=0), X)
  assert params[("net", "partial", "layer", "up", "kernel")].value.shape == (2, FEATURES, 8)


def test_params_are_stacked_at_the_layer_paths() -> None:
  _, rng, blocks = build(3)
  _, params = init(rng, blocks, X)
  kernel = params[("net", "blocks", "layer", "up", "kernel")]
  assert kernel.value.shape == (3, FEATURES, 8)
  assert kernel.metadata[STACKED] == (3,)
  assert params[("net", "rng", "seed")].metadata.get(STACKED) is None
  assert jnp.shape(params[("net", "rng", "counter")].value) == ()


def test_each_layer_gets_different_initial_values() -> None:
  _, rng, blocks = build(4)
  _, params = init(rng, blocks, X)
  kernels = np.asarray(params[("net", "blocks", "layer", "up", "kernel")].value)
  for i in range(4):
    for j in range(i):
      assert not np.allclose(kernels[i], kernels[j])
  # Two keys (kernel, bias) per Linear, two Linears, four layers.
  assert int(rng.get_counter(params)) == 16


def test_init_equals_a_python_loop_of_separate_layers() -> None:
  _, rng, blocks = build(3)
  y, params = init(rng, blocks, X)
  graph = Graph("net")
  loop_rng = Rng(graph.child("rng"))
  loop_params = loop_rng.seed(Params(), seed=0)
  h = X
  for i in range(3):
    h, loop_params = Block(graph.child(f"b{i}"), rng=loop_rng)(loop_params, h)
  np.testing.assert_allclose(y, h, rtol=1e-6)
  for i in range(3):
    np.testing.assert_array_equal(
        params[("net", "blocks", "layer", "up", "kernel")].value[i],
        loop_params[("net", f"b{i}", "up", "kernel")].value,
    )


def test_forward_equals_the_loop_over_unstacked_layers() -> None:
  _, rng, blocks = build(3, rate=0.5)
  _, params = init(rng, blocks, X)
  params = params.locked()
  y, after = blocks(params, X)
  # The same computation by hand: one layer at a time on its own params.
  h, loop_params = X, params
  for i in range(3):
    h, layer_params = blocks.layer(blocks.layer_params(loop_params, i), h)
    loop_params = loop_params.set(("net", "rng", "counter"), rng.get_counter(layer_params))
  np.testing.assert_allclose(y, h, rtol=1e-6)
  assert int(rng.get_counter(after)) == int(rng.get_counter(loop_params))
  # And by the unstacked paths, mapped back to the layer's node.
  per_layer = blocks.unstack(params)
  assert ("net", "blocks", "2", "up", "kernel") in per_layer
  np.testing.assert_array_equal(
      per_layer[("net", "blocks", "1", "down", "bias")].value,
      blocks.layer_params(params, 1)[("net", "blocks", "layer", "down", "bias")].value,
  )


def test_stack_unstack_round_trip() -> None:
  _, rng, blocks = build(3)
  _, params = init(rng, blocks, X)
  per_layer = blocks.unstack(params)
  assert len(per_layer) == 2 + 3 * 6
  kernel = per_layer[("net", "blocks", "0", "up", "kernel")]
  assert kernel.value.shape == (FEATURES, 8) and STACKED not in kernel.metadata
  again = blocks.stack(per_layer)
  assert same_structure(again, params)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(jax.random.key_data(a) if a.dtype == b.dtype and
                                  jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
                                  jax.random.key_data(b) if jnp.issubdtype(
                                      b.dtype, jax.dtypes.prng_key) else b)
  twice = blocks.unstack(again)
  assert same_structure(twice, per_layer)


def test_distinct_dropout_masks_per_layer_and_per_step() -> None:
  class Mask(Module):
    """Records the dropout mask of its input of ones as its output."""

    def __init__(self, graph: Graph, *, rng: Rng) -> None:
      super().__init__(graph)
      self.rng = rng
      self.dropout = Dropout(graph.child("dropout"), rate=0.5, rng=rng)

    def __call__(self, params: Params, x: Any) -> tuple[Any, Params]:
      masks, index = x
      mask, params = self.dropout(params, jnp.ones(masks.shape[1:]))
      return (masks.at[index].set(mask), index + 1), params

  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  stack = Repeat(graph.child("stack"), lambda node: Mask(node, rng=rng), 4)
  params = rng.seed(Params(), seed=0).locked()
  start = (jnp.zeros((4, 64)), jnp.int32(0))
  (masks, count), params = stack(params, start)
  masks = np.asarray(masks)
  assert int(count) == 4
  assert set(np.unique(masks)) == {0.0, 2.0}
  assert len({tuple(m) for m in masks}) == 4
  (again, _), _ = stack(params, start)
  assert not np.array_equal(np.asarray(again), masks)


def test_batch_norm_statistics_are_stacked_and_updated_per_layer() -> None:
  class Normed(Module):
    def __init__(self, graph: Graph, *, rng: Rng) -> None:
      super().__init__(graph)
      self.rng = rng
      self.linear = Linear(graph.child("linear"), FEATURES, rng=rng)
      self.norm = BatchNorm(graph.child("norm"), momentum=0.5)

    def __call__(
        self, params: Params, x: jax.Array, is_training: bool = True
    ) -> tuple[jax.Array, Params]:
      h, params = self.linear(params, x)
      h, params = self.norm(params, h, is_training=is_training)
      return x + h, params

  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  stack = Repeat(graph.child("stack"), lambda node: Normed(node, rng=rng), 3)
  X = jax.random.normal(jax.random.key(1), (16, FEATURES))
  _, params = stack(rng.seed(Params(), seed=0), X)
  mean_path = ("net", "stack", "layer", "norm", "running_mean")
  assert params[mean_path].value.shape == (3, FEATURES)
  assert params[mean_path].metadata[STACKED] == (3,)
  params = params.locked()
  y, after = stack(params, X)
  # The reference: each layer on its own slice, statistics updated in turn.
  h = X
  for i in range(3):
    h, layer_after = stack.layer(stack.layer_params(params, i), h)
    np.testing.assert_allclose(
        after[mean_path].value[i], layer_after[("net", "stack", "layer", "norm", "running_mean")].value,
        rtol=1e-5, atol=1e-6,
    )
  np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
  means = np.asarray(after[mean_path].value)
  assert not np.allclose(means[0], means[1])
  assert not np.allclose(means, np.asarray(params[mean_path].value))
  # Evaluation normalises with each layer's own statistics and changes nothing.
  y_eval, unchanged = stack(after, X, is_training=False)
  h = X
  for i in range(3):
    h, _ = stack.layer(stack.layer_params(after, i), h, is_training=False)
  np.testing.assert_allclose(y_eval, h, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(unchanged[mean_path].value, after[mean_path].value)


# Cached: every policy compares with the same run without remat, which need
# not be built, initialised and compiled again for each.
@functools.cache
def _loss_and_grads(remat_policy: str | None) -> tuple[Any, Params]:
  _, rng, blocks = build(3, rate=0.25, remat_policy=remat_policy)
  _, params = init(rng, blocks, X)
  params = params.locked()

  def loss(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    y, params = blocks(params, x)
    return jnp.sum(y**2), params

  value, _, grads = jax.jit(value_and_grad(loss))(params, X)
  return value, grads


@pytest.mark.parametrize("policy", ["full", "dots_with_no_batch_dims_saveable", "nothing_saveable"])
def test_gradients_through_remat_equal_those_without(policy: str) -> None:
  value, grads = _loss_and_grads(None)
  value_remat, grads_remat = _loss_and_grads(policy)
  np.testing.assert_allclose(value_remat, value, rtol=1e-6)
  kernel = ("net", "blocks", "layer", "up", "kernel")
  assert float(jnp.abs(grads[kernel].value).sum()) > 0
  for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_policy_is_in_the_jaxpr() -> None:
  def jaxpr_text(remat_policy: str | None) -> str:
    _, rng, blocks = build(2, remat_policy=remat_policy)
    # Only the shapes of the params matter to the jaxpr: no eager init (it
    # compiles the scan of the initialisers, seconds).
    params = jax.eval_shape(lambda: init(rng, blocks, X)[1])

    def loss(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      y, params = blocks(params, x)
      return jnp.sum(y), params

    return str(jax.make_jaxpr(value_and_grad(loss))(params.locked(), X))

  full, plain = jaxpr_text("full"), jaxpr_text(None)
  assert "checkpoint" in full or "remat" in full
  assert "checkpoint" not in plain and "remat" not in plain


def test_init_is_traced_once_whatever_the_number_of_layers() -> None:
  def size(num_layers: int) -> int:
    _, rng, blocks = build(num_layers, rate=0.1)
    return len(jax.make_jaxpr(lambda x: init(rng, blocks, x))(X).eqns)

  def run_size(num_layers: int) -> int:
    _, rng, blocks = build(num_layers, rate=0.1)
    params = jax.eval_shape(lambda: init(rng, blocks, X)[1])
    return len(jax.make_jaxpr(lambda p, x: blocks(p.locked(), x))(params, X).eqns)

  assert size(2) == size(16)
  assert run_size(2) == run_size(16)


def test_layer_calls_are_traced_once() -> None:
  calls = []

  class Counted(Block):
    # Spelled out for mypy: without it, dataclass_transform makes it see a
    # constructor from Counted's (no) settings instead of Block.__init__.
    def __init__(self, graph: Graph, *, rng: Rng) -> None:
      super().__init__(graph, rng=rng)

    def __call__(self, params: Params, x: jax.Array, is_training: bool = True) -> Any:
      calls.append(1)
      return super().__call__(params, x, is_training)

  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  blocks = Repeat(graph.child("blocks"), lambda node: Counted(node, rng=rng), 12)
  _, params = blocks(rng.seed(Params(), seed=0), X)
  assert len(calls) == 1
  blocks(params.locked(), X)
  assert len(calls) == 2


def test_jit_vmap_and_eval_shape() -> None:
  _, rng, blocks = build(3)
  y, initialised = init(rng, blocks, X)
  params = initialised.locked()
  y_jit, params_jit = jax.jit(lambda p, x: blocks(p, x, is_training=False))(params, X)
  y_eager, _ = blocks(params, X, is_training=False)
  np.testing.assert_allclose(y_jit, y_eager, rtol=1e-6)
  assert same_structure(params_jit, params)
  # Under jit: eagerly, vmap's primitives compile one by one (seconds).
  y_vmap, _ = jax.jit(jax.vmap(
      lambda x: blocks(params, x, is_training=False), out_axes=(0, None)
  ))(X)
  np.testing.assert_allclose(y_vmap, y_eager, rtol=1e-5, atol=1e-6)
  abstract = jax.eval_shape(lambda x: init(rng, blocks, x), X)
  assert abstract[1][("net", "blocks", "layer", "up", "kernel")].value.shape == (3, FEATURES, 8)
  # The eager init above made these (init is deterministic: no second one).
  assert same_structure(abstract[1], initialised)
  y_init_jit, params_init_jit = jax.jit(lambda x: init(rng, blocks, x))(X)
  np.testing.assert_allclose(y_init_jit, y, rtol=1e-6)


def test_summary_shows_per_layer_and_total_counts() -> None:
  graph, rng, blocks = build(4)
  _, params = init(rng, blocks, X)
  table = summary(params, graph, width=140)
  per_layer = (FEATURES * 2) + (FEATURES * 8 + 8) + (8 * FEATURES + FEATURES)
  line = next(l for l in table.splitlines() if l.startswith("net/blocks "))
  assert "Repeat(" in line and "num_layers=4" in line
  assert f"4 layers x {per_layer:,}" in line
  assert line.split()[-2] == f"{4 * per_layer:,}"
  assert any(l.startswith("net/blocks/layer/up") for l in table.splitlines())


def test_unused_params_sees_the_layer_reads_through_the_scan() -> None:
  _, rng, blocks = build(3, rate=0.5)
  _, params = init(rng, blocks, X)
  params = params.locked()
  # Evaluation draws no dropout key: only the Rng stream goes unread.
  unread = unused_params(lambda p, x: blocks(p, x, is_training=False), params, X)
  assert unread == [("net", "rng", "seed"), ("net", "rng", "counter")]
  assert unused_params(lambda p, x: blocks(p, x), params, X) == []
