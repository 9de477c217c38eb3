"""Tests of `blox.graph.tabulate`: module calls run abstractly, shapes, params, FLOPs."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from blox.graph import Graph, Module, Repeat, Table, summary, tabulate
from blox.graph._inspect._calls import CALLS
from blox.params import SHARDING, Param, Params


class Dense(Module):
  """A dense layer without bias; all its work is one matmul."""

  def __init__(self, graph: Graph, features: int, note: str = "") -> None:
    super().__init__(graph)
    self.features = features
    self.note = note

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    w, params = self.get_param(
        params, "kernel", (x.shape[-1], self.features), init=jax.nn.initializers.ones,
        metadata={SHARDING: ("embed", "mlp")},
    )
    return x @ w, params


class MLP(Module):
  """Two dense layers; no work between them, so the calls hold all the FLOPs."""

  def __init__(self, graph: Graph, hidden: int, out: int) -> None:
    super().__init__(graph)
    self.hidden = hidden
    self.out = out
    self.first = Dense(graph.child("first"), hidden)
    self.second = Dense(graph.child("second"), out)

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    h, params = self.first(params, x)
    return self.second(params, h)


class Residual(Module):
  """`x + x @ w`, a layer for `Repeat`."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    w, params = self.get_param(params, "w", (x.shape[-1], x.shape[-1]), init=jax.nn.initializers.ones)
    return x @ w, params


def _compiled_flops(fn: Any, *args: Any) -> int:
  analysis: Any = jax.jit(fn).lower(*args).compile().cost_analysis()
  return int(analysis["flops"])


def _abstract(shape: tuple[int, ...], dtype: Any) -> Any:
  """An abstract array, as `jax.eval_shape` gives."""
  return jax.eval_shape(lambda: jnp.zeros(shape, dtype))


def _row(table: Table, name: str) -> tuple[int, tuple[str, ...]]:
  rows = [row for row in table.rows if row[1][0].split("  ")[0] == name]
  assert len(rows) == 1, (name, [r[1][0] for r in table.rows])
  return rows[0]


def _number(cell: str) -> int:
  return int(cell.replace(",", ""))


def _footer(table: Table) -> tuple[int, int, int, int]:
  calls, whole = table.footer
  return _number(calls[1][4]), _number(calls[1][5]), _number(calls[1][6]), _number(whole[1][6])


@pytest.fixture
def mlp() -> tuple[MLP, Params, jax.Array]:
  model = MLP(Graph("net").child("mlp"), 16, 4)
  x = jnp.ones((8, 3))
  _, params = model(Params(), x)
  return model, params, x


def test_tabulate_mlp_shapes_counts_and_flops(mlp: tuple[MLP, Params, jax.Array]) -> None:
  model, params, x = mlp
  table = tabulate(model, params, x)
  assert isinstance(table, Table) and isinstance(table, str)
  _, top = _row(table, "net/mlp")
  expected = jax.eval_shape(model, params, x)[0]
  assert top[1] == "f32[8,3]" and top[2] == f"f32[{','.join(map(str, expected.shape))}]"
  hidden = jax.eval_shape(model.first, params, x)[0]
  assert _row(table, "first")[1][2] == "f32[8,16]" and hidden.shape == (8, 16)
  depth, second = _row(table, "second")
  assert depth == 1 and second[1] == "f32[8,16]" and second[2] == "f32[8,4]"
  # Counts against summary; FLOPs against the compiled cost analysis.
  assert "total" in summary(params)
  count, nbytes, calls_flops, whole = _footer(table)
  assert (count, nbytes) == (3 * 16 + 16 * 4, 4 * (3 * 16 + 16 * 4))
  assert summary(params).splitlines()[-2].split()[-2:] == [f"{count:,}", f"{nbytes:,}"]
  assert whole == _compiled_flops(lambda p, x: model(p, x), params, x)
  assert calls_flops == whole == 2 * 8 * 3 * 16 + 2 * 8 * 16 * 4
  assert _number(_row(table, "first")[1][6]) == 2 * 8 * 3 * 16
  # Each param under the call that read it, with its sharding.
  kernel = [cells for _, cells in table.rows if cells[0] == "kernel (read)"]
  assert len(kernel) == 2 and kernel[0][1] == "f32[3,16]" and kernel[0][2] == "embed,mlp"


def test_tabulate_runs_abstractly_and_takes_abstract_inputs(mlp: tuple[MLP, Params, jax.Array]) -> None:
  model, params, x = mlp
  abstract_params = jax.eval_shape(lambda: params)
  abstract_x = _abstract(x.shape, x.dtype)
  assert tabulate(model, abstract_params, abstract_x) == tabulate(model, params, x)


def test_tabulate_initialisation_shows_created_params() -> None:
  model = MLP(Graph("net").child("mlp"), 16, 4)
  table = tabulate(model, Params(), jnp.ones((8, 3)))
  assert [cells[0] for _, cells in table.rows if "(" in cells[0] and "new" in cells[0]] == [
      "kernel (new)", "kernel (new)"]
  assert _footer(table)[0] == 3 * 16 + 16 * 4


def test_tabulate_repeat_shows_the_layer_once_with_its_count() -> None:
  blocks = Repeat(Graph("net").child("blocks"), Residual, num_layers=3)
  x = jnp.ones((4, 8))
  _, params = blocks(Params(), x)
  table = tabulate(blocks, params, x)
  layer = [cells for _, cells in table.rows if cells[0].startswith("layer")]
  assert len(layer) == 1 and layer[0][0].startswith("layer x3  Residual()")
  assert layer[0][1] == layer[0][2] == "f32[4,8]"
  # One layer's numbers on its line, all three on the Repeat's.
  assert _number(layer[0][4]) == 64
  count, nbytes, calls_flops, whole = _footer(table)
  assert f"{count:,}" in summary(params) and count == 3 * 64 and nbytes == 4 * count
  one_layer = 2 * 4 * 8 * 8
  assert _number(layer[0][6]) == one_layer and calls_flops == 3 * one_layer
  # The whole function's count is XLA's, which counts the scanned body once;
  # fully unrolled, XLA sees all three layers, as the calls' sum does.
  assert whole == _compiled_flops(lambda p, x: blocks(p, x), params, x)
  unrolled = Repeat(Graph("net").child("blocks"), Residual, num_layers=3, unroll=True)
  assert calls_flops == _compiled_flops(lambda p, x: unrolled(p, x)[0], params, x)


def test_tabulate_nested_method_calls_are_one_call() -> None:
  class Twice(Module):
    def __init__(self, graph: Graph) -> None:
      super().__init__(graph)
      self.dense = Dense(graph.child("dense"), 2)

    def apply(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      return self.dense(params, x)

    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      return self.apply(params, x)

  model = Twice(Graph("net").child("twice"))
  table = tabulate(model, Params(), jnp.ones(2))
  calls = [cells[0].split("  ")[0] for _, cells in table.rows if cells[6]]  # params have no FLOPs
  assert calls == ["net/twice", "dense"]
  assert "twice.apply" not in table


def test_tabulate_lines_fit_the_width() -> None:
  model = MLP(Graph("a_rather_long_model_name").child("with_a_long_child_name"), 1024, 4096)
  x = _abstract((128, 512), jnp.bfloat16)
  _, params = jax.eval_shape(model, Params(), x)
  table = tabulate(model, params, x)
  assert max(len(line) for line in table.splitlines()) <= 100, table
  small = MLP(Graph("a_rather_long_model_name").child("with_a_long_child_name"), 3, 2)
  table = tabulate(small, Params(), jnp.ones((2, 3)), width=72)
  assert max(len(line) for line in table.splitlines()) <= 72, table
  # Wrapped text is whole in the rows (and the HTML).
  assert "a_rather_long_model_name/with_a_long_child_name" in table.rows[0][1][0]


def test_tabulate_html_escapes_and_never_shows_values() -> None:
  model = Dense(Graph("net").child("d<b>"), 2, note="<script>alert(1)</script>")
  params = Params({("net", "d<b>", "kernel"): Param(jnp.full((3, 2), 1234.5678))})
  table = tabulate(model, params, jnp.full((1, 3), 8765.4321))
  page = table._repr_html_()
  assert "<script>" not in page and "&lt;script&gt;" in page and "d&lt;b&gt;" in page
  assert "1234" not in page and "8765" not in page
  assert "<th>call / param</th>" in page and page.count("<tr>") == len(table.rows) + 3
  summary_page = summary(params)._repr_html_()
  assert "d&lt;b&gt;" in summary_page and "1234" not in summary_page


def test_summary_html_has_the_rows_of_the_text(mlp: tuple[MLP, Params, jax.Array]) -> None:
  model, params, _ = mlp
  table = summary(params, model.graph.parent)
  page = table._repr_html_()
  assert [cells[0].split("  ")[0] for _, cells in table.rows] == ["net/mlp/first", "kernel", "net/mlp/second", "kernel"]
  assert page.count("<td") == sum(len(cells) for _, cells in table.rows + table.footer)
  assert str(table) == summary(params, model.graph.parent)


def test_tabulate_errors_say_what_is_wrong(mlp: tuple[MLP, Params, jax.Array]) -> None:
  model, params, x = mlp
  with pytest.raises(TypeError, match=r"params must be a blox Params, got dict.*initialised"):
    tabulate(model, {"w": x}, x)  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(TypeError, match=r"fn must be callable, got int"):
    tabulate(3, params, x)  # type: ignore[arg-type]  # the misuse under test

  def ignores_params(params: Params, x: jax.Array) -> jax.Array:
    return x * 2

  with pytest.raises(ValueError, match=r"ignores_params\(params, \.\.\.\) read no param and made no module call.*tabulate\(model, params, x\)"):
    tabulate(ignores_params, params, x)

  def reads_by_hand(params: Params, x: jax.Array) -> Any:
    return x @ params[("net", "mlp", "first", "kernel")].value

  with pytest.raises(ValueError, match=r"reads_by_hand\(params, \.\.\.\) read params but made no module call"):
    tabulate(reads_by_hand, params, x)


def test_recording_costs_nothing_when_inactive(mlp: tuple[MLP, Params, jax.Array]) -> None:
  model, params, x = mlp
  assert CALLS.get() is None
  # The wrapper keeps the method's name, docs and signature.
  assert MLP.__call__.__name__ == "__call__"
  assert list(inspect.signature(MLP.__call__).parameters) == ["self", "params", "x"]
  y, _ = model(params, x)
  assert y.shape == (8, 4) and CALLS.get() is None
  # Module's own helpers are not calls.
  assert not hasattr(Module.get_param, "__blox_recorded__")


def test_tabulate_shows_unknown_flops_of_a_call_that_needs_its_context() -> None:
  class Centre(Module):
    """Subtracts the mean over a named (vmapped) axis: not lowerable alone."""

    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      # jax leaves lax.pmean unannotated.
      return x - jax.lax.pmean(x, "batch"), params  # type: ignore[no-untyped-call]

  centre = Centre(Graph("net").child("centre"))
  dense = Dense(Graph("net").child("dense"), 2)
  x = jnp.ones((4, 3))
  _, params = dense(Params(), x)

  def fn(params: Params, x: jax.Array) -> Any:
    y, _ = dense(params, x)
    return jax.vmap(lambda row: centre(params, row)[0], axis_name="batch")(y)

  table = tabulate(fn, params, x)
  calls = {cells[0].split("  ")[0]: cells for _, cells in table.rows if cells[6]}
  assert calls["net/centre"][6] == "?" and _number(calls["net/dense"][6]) == 2 * 4 * 3 * 2
  assert table.footer[0][1][6] == "?"  # a sum with an unknown part is unknown
  assert _number(table.footer[1][1][6]) == _compiled_flops(fn, params, x)


def test_tabulate_a_repeat_in_a_repeat_multiplies_the_counts() -> None:
  stack = Repeat(Graph("net").child("outer"), lambda node: Repeat(node, Residual, 3), 2)
  x = jnp.ones((4, 8))
  _, params = stack(Params(), x)
  for given in (params, Params()):  # running, and creating the params
    table = tabulate(stack, given, x)
    calls = {cells[0].split("  ")[0]: cells for _, cells in table.rows if cells[6]}
    assert list(calls) == ["net/outer", "layer x2", "layer x3"]
    one_layer = 2 * 4 * 8 * 8
    assert [_number(calls[name][4]) for name in calls] == [6 * 64, 3 * 64, 64]
    assert [_number(calls[name][6]) for name in calls] == [6 * one_layer, 3 * one_layer, one_layer]
    assert _footer(table)[:3] == (6 * 64, 4 * 6 * 64, 6 * one_layer)
