"""Tests of `blox.graph.summary`: the params table."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module, Repeat, summary
from blox.params import STACKED, Param, Params


class Dense(Module):
  """A minimal dense layer (blox.nn is not a dependency of blox-graph)."""

  def __init__(self, graph: Graph, features: int, use_bias: bool = True) -> None:
    super().__init__(graph)
    self.features = features
    self.use_bias = use_bias

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    w, params = self.get_param(
        params, "kernel", (x.shape[-1], self.features), init=jax.nn.initializers.ones
    )
    y = x @ w
    if self.use_bias:
      b, params = self.get_param(params, "bias", (self.features,), init=jax.nn.initializers.zeros)
      y = y + b
    return y, params


def _abstract(shape: tuple[int, ...], dtype: Any) -> Any:
  """An abstract array, as `jax.eval_shape` gives."""
  return jax.eval_shape(lambda: jnp.zeros(shape, dtype))


def _numbers(table: str, label: str) -> tuple[int, int]:
  """The (count, bytes) of the totals line that starts with `label`."""
  for line in table.splitlines():
    words = line.split()
    if words and words[0] == label and len(words) == 3:
      return int(words[1].replace(",", "")), int(words[2].replace(",", ""))
  raise AssertionError(f"no {label!r} line in:\n{table}")


def _mlp(layers: int, width: int) -> tuple[Graph, Params]:
  graph = Graph("model")
  body = graph.child("mlp")
  dense = [Dense(body.child(f"layer_{i}"), width) for i in range(layers)]

  def init() -> Params:
    params, x = Params(), jnp.ones((1, width))
    for layer in dense:
      x, params = layer(params, x)
    return params

  return graph, jax.eval_shape(init)


def test_totals_split_trainable_and_non_trainable() -> None:
  params = Params({
      ("net", "dense", "kernel"): Param(jnp.zeros((3, 4))),
      ("net", "dense", "bias"): Param(jnp.zeros(4)),
      ("net", "norm", "mean"): Param(jnp.zeros(5), trainable=False),
      ("net", "norm", "steps"): Param(jnp.zeros((), jnp.int8), trainable=False),
  })
  table = summary(params)
  assert _numbers(table, "trainable") == (16, 64)
  assert _numbers(table, "non-trainable") == (6, 21)
  assert _numbers(table, "total") == (22, 85)
  rows = {line.split()[0]: line.split() for line in table.splitlines() if line.startswith("  ")}
  assert rows["mean"][-3] == "no" and rows["kernel"][-3] == "yes"
  assert "size: 85 B (trainable 64 B, non-trainable 21 B)" in table


def test_module_lines_carry_subtotals_in_creation_order() -> None:
  # Paths unique to this test: the order is the process-wide creation order.
  params = Params({
      ("sum_a", "kernel"): Param(jnp.zeros((2, 3))),
      ("sum_b", "kernel"): Param(jnp.zeros((3, 3))),
      ("sum_a", "bias"): Param(jnp.zeros(3)),
  })
  lines = summary(params).splitlines()
  a = next(i for i, line in enumerate(lines) if line.split()[0] == "sum_a")
  b = next(i for i, line in enumerate(lines) if line.split()[0] == "sum_b")
  assert a < b
  assert lines[a].split()[1:] == ["9", "36"]
  # Both params of module `a` are listed under it, although created apart.
  assert [line.split()[0] for line in lines[a + 1 : a + 3]] == ["kernel", "bias"]


def test_thousands_separators() -> None:
  params = Params({("big", "kernel"): Param(_abstract((1000, 1200), jnp.float32))})
  table = summary(params)
  assert "1,200,000" in table
  assert "4,800,000" in table
  assert "4.6 MiB" in table


def test_abstract_params_match_concrete() -> None:
  graph, abstract = _mlp(2, 8)
  concrete = Params({
      path: Param(jnp.zeros(p.value.shape, p.value.dtype), p.trainable, p.metadata)
      for path, p in abstract.items()
  })
  assert summary(abstract, graph) == summary(concrete, graph)


def test_width_fits_100_columns_for_20_layers() -> None:
  graph, params = _mlp(20, 1024)
  table = summary(params, graph)
  lines = table.splitlines()
  assert max(len(line) for line in lines) <= 100
  expected = 20 * (1024 * 1024 + 1024)
  assert _numbers(table, "trainable") == (expected, 4 * expected)
  assert sum(1 for line in lines if "Dense(" in line) == 20


def test_long_paths_and_arguments_are_cut_to_the_width() -> None:
  graph = Graph("a_root_with_quite_a_long_name")
  node = graph.child("an_encoder_block_that_is_deeply_nested").child("x" * 60)
  layer = Dense(node, features=3)
  _, params = layer(Params(), jnp.ones((1, 2)))
  table = summary(params, graph, width=72)
  assert max(len(line) for line in table.splitlines()) <= 72
  assert "..." in table
  # The numbers are never cut.
  assert _numbers(table, "total") == (9, 36)


def test_graph_shows_module_type_and_arguments() -> None:
  graph = Graph("net")
  layer = Dense(graph.child("proj"), features=3, use_bias=False)
  _, params = layer(Params(), jnp.ones((1, 2)))
  with_graph = summary(params, graph)
  module_line = next(line for line in with_graph.splitlines() if line.startswith("net/proj"))
  assert "Dense(features=3, use_bias=False)" in module_line
  assert "Dense" not in summary(params)


def test_typed_keys_count_their_key_data() -> None:
  key = jax.random.key(0)
  params = Params({
      ("rng", "seed"): Param(key, trainable=False),
      ("rng", "counter"): Param(jnp.zeros((), jnp.uint32), trainable=False),
  })
  data = jax.random.key_data(key)
  table = summary(params)
  seed_row = next(line.split() for line in table.splitlines() if line.split()[0] == "seed")
  assert seed_row[1:3] == ["[]", str(key.dtype)]
  assert seed_row[-2:] == [str(data.size), str(data.nbytes)]
  assert _numbers(table, "non-trainable") == (data.size + 1, data.nbytes + 4)
  assert _numbers(table, "trainable") == (0, 0)
  # Abstract keys count the same.
  abstract = jax.eval_shape(lambda: params)
  assert summary(abstract) == table


def test_top_level_params_and_empty_params() -> None:
  params = Params({("scale",): Param(np.ones(3, np.float32))})
  table = summary(params)
  assert "(top level)" in table
  assert _numbers(table, "total") == (3, 12)
  empty = summary(Params().locked())
  assert empty.splitlines()[0] == "0 params in 0 modules, locked"
  assert _numbers(empty, "total") == (0, 0)


def test_bfloat16_bytes() -> None:
  params = Params({("x", "w"): Param(_abstract((10, 10), jnp.bfloat16))})
  table = summary(params)
  assert _numbers(table, "total") == (100, 200)
  assert "bfloat16" in table


def test_rejects_non_params() -> None:
  with pytest.raises(TypeError, match="summary\\(\\) takes Params"):
    summary({"w": jnp.ones(2)})  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(TypeError, match="graph must be a Graph"):
    summary(Params(), "net")  # type: ignore[arg-type]  # the misuse under test


class _Attention(Module):
  """A module whose params nest below its node, like multi-head attention's."""

  def __init__(self, graph: Graph, features: int) -> None:
    super().__init__(graph)
    self.features = features

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    for name in ("query", "value"):
      w, params = self.get_param(
          params, (name, "kernel"), (x.shape[-1], self.features), init=jax.nn.initializers.ones
      )
      x = x @ w
    b, params = self.get_param(params, "bias", (self.features,), init=jax.nn.initializers.zeros)
    return x + b, params


def test_nested_params_group_under_the_module_that_owns_them() -> None:
  graph = Graph("net")
  mha = _Attention(graph.child("mha"), features=2)
  head = Dense(graph.child("head"), features=3)
  y, params = mha(Params(), jnp.ones((1, 2)))
  _, params = head(params, y)
  # A param no module owns still groups by path[:-1].
  params = Params({
      **{path: params[path] for path in params},
      ("net", "stats", "mean"): Param(jnp.zeros(3), trainable=False),
  })
  lines = summary(params, graph).splitlines()
  assert lines[0] == "6 params in 3 modules, unlocked"
  mha_line = next(i for i, line in enumerate(lines) if line.startswith("net/mha"))
  assert "_Attention(features=2)" in lines[mha_line]
  # The module line shows the subtotal of all its params: 4 + 4 + 2.
  assert lines[mha_line].split()[-2:] == ["10", "40"]
  names = [line.split()[0] for line in lines[mha_line + 1 : mha_line + 4]]
  assert names == ["query/kernel", "value/kernel", "bias"]
  head_line = next(i for i, line in enumerate(lines) if line.startswith("net/head"))
  assert [line.split()[0] for line in lines[head_line + 1 : head_line + 3]] == ["kernel", "bias"]
  stats_line = next(i for i, line in enumerate(lines) if line.startswith("net/stats"))
  assert lines[stats_line].split() == ["net/stats", "3", "12"]
  assert lines[stats_line + 1].split()[0] == "mean"
  # Without a graph the same params group by path[:-1].
  plain = summary(params).splitlines()
  assert plain[0] == "6 params in 5 modules, unlocked"
  query_line = next(i for i, line in enumerate(plain) if line.startswith("net/mha/query"))
  assert plain[query_line + 1].split()[0] == "kernel"


def test_graph_below_the_root_owns_only_its_subtree() -> None:
  graph = Graph("net")
  mha = _Attention(graph.child("block").child("mha"), features=2)
  _, params = mha(Params(), jnp.ones((1, 2)))
  # Given the block node, the walk still finds the module at its full path.
  table = summary(params, graph.children["block"])
  assert "net/block/mha  _Attention(features=2)" in table
  assert "query/kernel" in table


class _Square(Module):
  """`x @ w` with a square `w`: a layer for the stacks below."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    w, params = self.get_param(params, "w", (x.shape[-1], x.shape[-1]), init=jax.nn.initializers.ones)
    return x @ w, params


class _Wrapper(Module):
  """A layer whose own child is named 'layer', as a Repeat's layer is."""

  def __init__(self, graph: Graph) -> None:
    super().__init__(graph)
    self.layer = _Square(graph.child("layer"))

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    return self.layer(params, x)


def _line(table: str, start: str) -> str:
  return next(line for line in table.splitlines() if line.startswith(start + " "))


def test_stack_lines_come_from_the_stacked_metadata() -> None:
  graph = Graph("net")
  stack = Repeat(graph.child("outer"), lambda node: Repeat(node, _Square, 3), 2)
  _, params = stack(Params(), jnp.ones((1, 4)))
  assert params[("net", "outer", "layer", "layer", "w")].metadata[STACKED] == (2, 3)
  table = summary(params, graph)
  # 2 x 3 layers of 16: each stack's line counts all of them, and one of its layers.
  outer, inner = _line(table, "net/outer"), _line(table, "net/outer/layer")
  assert "num_layers=2)  2 layers x 48" in outer and outer.split()[-2:] == ["96", "384"]
  assert "num_layers=3)  3 layers x 16" in inner and inner.split()[-2:] == ["96", "384"]
  # A layer's own child named 'layer' is no stack: one line, for the Repeat.
  graph = Graph("net")
  blocks = Repeat(graph.child("blocks"), _Wrapper, 3)
  _, params = blocks(Params(), jnp.ones((1, 4)))
  table = summary(params, graph)
  assert sum("layers x" in line for line in table.splitlines()) == 1
  assert "3 layers x 16" in _line(table, "net/blocks")
  # Without the metadata there is no stack to show.
  unstacked = Params({path: Param(p.value, p.trainable) for path, p in params.items()})
  assert "layers x" not in summary(unstacked, graph)
