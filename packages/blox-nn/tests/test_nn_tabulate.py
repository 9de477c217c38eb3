"""`bx.tabulate` on the layers: an MLP, the LSTM, attention with a cache, a `Repeat` stack.

Shapes are checked against `jax.eval_shape`, param counts against `summary`,
FLOPs against XLA's compiled cost analysis.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from blox.graph import Graph, Module, Repeat, Table, summary, tabulate
from blox.nn import LSTM, Linear, MultiHeadAttention, RMSNorm, Rng, Sequential
from blox.params import Params


def _compiled_flops(fn: Any, *args: Any) -> int:
  analysis: Any = jax.jit(fn).lower(*args).compile().cost_analysis()
  return int(analysis["flops"])


def _number(cell: str) -> int:
  return int(cell.replace(",", ""))


def _calls(table: Table) -> dict[str, tuple[str, ...]]:
  """Call rows by name (params' rows have no FLOPs cell)."""
  return {cells[0].split("  ")[0]: cells for _, cells in table.rows if cells[6]}


def _footer(table: Table) -> tuple[int, int, int]:
  calls, whole = table.footer
  return _number(calls[1][4]), _number(calls[1][6]), _number(whole[1][6])


def _summary_counts(params: Params, graph: Graph) -> dict[str, int]:
  """Each module's param count, as `summary` states it."""
  return {cells[0].split("  ")[0]: _number(cells[4]) for depth, cells in summary(params, graph).rows
          if depth == 0}


def _text(leaf: Any) -> str:
  short = {"float32": "f32", "int32": "i32"}[str(leaf.dtype)]
  return f"{short}[{','.join(map(str, leaf.shape))}]"


def test_tabulate_mlp() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  hidden_layer = Linear(graph.child("hidden"), 32, rng=rng)
  mlp = Sequential(graph.child("mlp"), [hidden_layer, jax.nn.relu, Linear(graph.child("out"), 4, rng=rng)])
  x = jnp.ones((8, 16))
  _, params = mlp(rng.seed(Params(), seed=0), x)
  table = tabulate(mlp, params, x)
  calls = _calls(table)
  assert list(calls) == ["net/mlp", "net/hidden", "net/out"]
  assert calls["net/mlp"][2] == _text(jax.eval_shape(mlp, params, x)[0])
  assert calls["net/hidden"][2] == "f32[8,32]" and calls["net/out"][1] == "f32[8,32]"
  counts = _summary_counts(params, graph)
  assert _number(calls["net/hidden"][4]) == counts["net/hidden"] == 16 * 32 + 32
  assert _number(calls["net/out"][4]) == counts["net/out"]
  count, calls_flops, whole = _footer(table)
  assert count == counts["net/hidden"] + counts["net/out"]  # the rng's seed is not read
  assert whole == _compiled_flops(lambda p, x: mlp(p, x)[0], params, x)
  # The calls hold the matmuls and biases; the relu between them is the rest.
  hidden = calls["net/hidden"]
  assert _number(hidden[6]) == _compiled_flops(lambda p, x: hidden_layer(p, x)[0], params, x)
  assert 0 <= whole - calls_flops <= 8 * 32


def test_tabulate_lstm() -> None:
  graph = Graph("model")
  rng = Rng(graph.child("rng"))
  lstm = LSTM(graph.child("lstm"), hidden_size=8, rng=rng, is_static=False)
  x = jnp.ones((2, 5, 3))
  _, params = lstm.apply(rng.seed(Params(), seed=0), x)
  table = tabulate(lstm.apply, params, x)
  (name, cells), = _calls(table).items()
  assert name == "model/lstm.apply" and cells[1] == "f32[2,5,3]"
  outputs, state = jax.eval_shape(lstm.apply, params, x)[0]
  assert cells[2] == f"({_text(outputs)}, LSTMState({', '.join(_text(s) for s in state)}))"
  assert _number(cells[4]) == _summary_counts(params, graph)["model/lstm"]
  _, calls_flops, whole = _footer(table)
  assert calls_flops == whole == _compiled_flops(lambda p, x: lstm.apply(p, x)[0], params, x)


def test_tabulate_attention_with_a_cache() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  mha = MultiHeadAttention(graph.child("mha"), 4, rng=rng, num_kv_heads=2, rope_base=10_000.0)
  x = jnp.ones((2, 6, 16))
  _, params = mha(rng.seed(Params(), seed=0), x, is_training=False)
  cache, _ = mha.initial_state(params, x[:, 0], max_length=8)

  def step(params: Params, token: jax.Array, cache: Any) -> Any:
    return mha.decode_step(params, token, cache)

  table = tabulate(step, params, x[:, 0], cache)
  (name, cells), = _calls(table).items()
  (y, new_cache), _ = jax.eval_shape(step, params, x[:, 0], cache)
  assert name == "net/mha.decode_step"
  cache_text = f"KVCache({', '.join(_text(leaf) for leaf in jax.tree.leaves(new_cache))})"
  assert cells[1] == f"f32[2,16], {cache_text}"
  assert cells[2] == f"({_text(y)}, {cache_text})"
  assert _number(cells[4]) == _summary_counts(params, graph)["net/mha"]
  read = [c[0] for _, c in table.rows if c[0].endswith("(read)")]
  assert "query/kernel (read)" in read and len(read) == 8
  _, calls_flops, whole = _footer(table)
  assert calls_flops == whole == _compiled_flops(lambda p, t, c: step(p, t, c)[0], params, x[:, 0], cache)


class Block(Module):
  """Norm, then a dense layer; the residual sum is the block's own work."""

  def __init__(self, graph: Graph, rng: Rng) -> None:
    super().__init__(graph)
    self.rng = rng
    self.norm = RMSNorm(graph.child("norm"))
    self.dense = Linear(graph.child("dense"), 16, rng=rng)

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    h, params = self.norm(params, x)
    h, params = self.dense(params, h)
    return x + h, params


def test_tabulate_repeat_stack() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  blocks = Repeat(graph.child("blocks"), lambda node: Block(node, rng), 4)
  x = jnp.ones((3, 16))
  _, params = blocks(rng.seed(Params(), seed=0), x)
  table = tabulate(blocks, params, x)
  calls = _calls(table)
  assert list(calls) == ["net/blocks", "layer x4", "norm", "dense"]
  assert calls["layer x4"][1] == calls["layer x4"][2] == _text(jax.eval_shape(blocks, params, x)[0])
  counts = _summary_counts(params, graph)
  one_layer = _number(calls["layer x4"][4])
  assert _number(calls["net/blocks"][4]) == 4 * one_layer == counts["net/blocks"]
  count, calls_flops, whole = _footer(table)
  assert count == counts["net/blocks"]
  assert whole == _compiled_flops(lambda p, x: blocks(p, x)[0], params, x)
  assert calls_flops == 4 * (_number(calls["norm"][6]) + _number(calls["dense"][6]))
  # Unrolled, XLA counts every layer; the blocks' residual sums are the rest.
  unrolled = Repeat(Graph("net").child("blocks"), lambda node: Block(node, rng), 4, unroll=True)
  unrolled_flops = _compiled_flops(lambda p, x: unrolled(p, x)[0], params, x)
  assert 0 <= unrolled_flops - calls_flops <= 4 * 3 * 16
