"""Tests of `Sequential`: order, params threading, keyword routing, errors."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module
from blox.nn import Dropout, Linear, Rng, Sequential
from blox.params import Params

_names = itertools.count()


class _Record(Module):
  """Adds a param `offset` and records the keywords it was called with."""

  def __init__(self, graph: Graph) -> None:
    super().__init__(graph)
    self.seen: list[dict[str, Any]] = []

  def __call__(self, params: Params, x: jax.Array, **kwargs: Any) -> tuple[jax.Array, Params]:
    self.seen.append(kwargs)
    offset, params = self.get_param(params, "offset", (), init=jax.nn.initializers.ones)
    return x + offset, params


class _Broken(Module):
  def __call__(self, params: Params, x: jax.Array) -> Any:
    return x


def _graph() -> tuple[Graph, Rng, Params]:
  graph = Graph(f"seq{next(_names)}")
  rng = Rng(graph.child("rng"))
  return graph, rng, rng.seed(Params(), seed=0)


def test_applies_modules_and_functions_in_order() -> None:
  graph, rng, params = _graph()
  first = Linear(graph.child("first"), 4, rng=rng)
  second = Linear(graph.child("second"), 2, rng=rng)
  model = Sequential(graph.child("mlp"), [first, jax.nn.relu, second, lambda v: v * 3.0])
  x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)), jnp.float32)
  y, params = model(params, x)
  assert len(model) == 4
  # Params of both layers were created, under their own nodes.
  assert first.param_path("kernel") in params and second.param_path("bias") in params
  h, _ = first(params, x)
  expected, _ = second(params, jax.nn.relu(h))
  np.testing.assert_allclose(y, 3.0 * expected, rtol=1e-6)
  # The rng counter advanced through the layers, so the params threaded through.
  assert int(rng.get_counter(params)) == 4


def test_keywords_go_only_to_modules_that_accept_them() -> None:
  graph, rng, params = _graph()
  record = _Record(graph.child("record"))
  dropout = Dropout(graph.child("dropout"), 0.5, rng=rng)
  # Linear's __call__ has no is_training parameter: passing it would fail.
  model = Sequential(
      graph.child("model"), [Linear(graph.child("linear"), 8, rng=rng), dropout, jnp.tanh, record]
  )
  x = jnp.ones((2, 3))
  y_eval, params = model(params, x, is_training=False)
  y_again, _ = model(params, x, is_training=False)
  np.testing.assert_array_equal(y_eval, y_again)  # no dropout in evaluation
  y_train, params = model(params, x, is_training=True)
  assert bool(jnp.any(y_train != y_eval))
  assert record.seen[-1] == {"is_training": True}  # **kwargs receives everything
  # A module taking **kwargs accepts any keyword, so nothing is rejected.
  model(params, x, is_training=False, note="hello")
  assert record.seen[-1] == {"is_training": False, "note": "hello"}


def test_keyword_accepted_by_no_layer_and_no_keywords_at_all() -> None:
  graph, rng, params = _graph()
  model = Sequential(graph.child("plain"), [Linear(graph.child("linear"), 2, rng=rng), jax.nn.relu])
  with pytest.raises(TypeError, match="no layer accepts the keyword argument"):
    model(params, jnp.ones(3), is_training=True)
  # A misspelt keyword is caught even when another keyword is used correctly.
  dropping = Sequential(graph.child("dropping"), [Dropout(graph.child("dropout"), 0.5, rng=rng)])
  with pytest.raises(TypeError, match=r"Sequential 'seq\d+/dropping': no layer accepts.*'is_trainig'"):
    dropping(params, jnp.ones(3), is_training=True, is_trainig=False)
  y, params = model(params, jnp.ones(3))
  assert y.shape == (2,)


def test_empty_and_nested() -> None:
  graph, rng, params = _graph()
  empty = Sequential(graph.child("empty"), [])
  x = jnp.arange(3.0)
  y, same = empty(params, x)
  assert y is x and same is params
  inner = Sequential(graph.child("inner"), [Dropout(graph.child("drop"), 0.5, rng=rng), jnp.negative])
  outer = Sequential(graph.child("outer"), [inner, lambda v: v + 1.0])
  y, _ = outer(params, x, is_training=False)
  np.testing.assert_array_equal(y, 1.0 - x)


def test_sequential_errors() -> None:
  graph, _, params = _graph()
  with pytest.raises(TypeError, match=r"Sequential 'seq\d+/a': layer 1 is a int"):
    Sequential(graph.child("a"), [jnp.tanh, 3])  # type: ignore[list-item]  # the misuse under test
  with pytest.raises(TypeError, match="layers must be a list"):
    Sequential(graph.child("b"), jnp.tanh)  # type: ignore[arg-type]  # the misuse under test
  broken = Sequential(graph.child("c"), [_Broken(graph.child("broken"))])
  with pytest.raises(TypeError, match=r"layer 0 \(_Broken 'seq\d+/broken'\) must return \(outputs, params\)"):
    broken(params, jnp.ones(2))


def test_sequential_under_jit_grad_vmap() -> None:
  graph, rng, params = _graph()
  model = Sequential(
      graph.child("mlp"),
      [Linear(graph.child("a"), 4, rng=rng), jax.nn.gelu, Dropout(graph.child("d"), 0.2, rng=rng),
       Linear(graph.child("b"), 2, rng=rng)],
  )
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)
  y, params = model(params, x, is_training=False)
  params = params.locked()
  y_jit, _ = jax.jit(model, static_argnames="is_training")(params, x, is_training=False)
  np.testing.assert_allclose(y_jit, y, rtol=1e-5, atol=1e-6)
  trainable, rest = params.split()
  grads = jax.grad(lambda t: jnp.sum(model(t.merge(rest), x, is_training=False)[0] ** 2))(trainable)
  assert set(grads) == set(trainable) and len(grads) == 4
  assert all(bool(jnp.any(g.value != 0)) for g in grads.values())
  ys, _ = jax.vmap(
      lambda p, xb: model(p, xb, is_training=False), in_axes=(None, 0), out_axes=(0, None)
  )(params, jnp.stack([x, -x]))
  np.testing.assert_allclose(ys[0], y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ys[1], model(params, -x, is_training=False)[0], rtol=1e-5, atol=1e-6)


def test_nested_sequential_gets_only_the_keywords_it_accepts() -> None:
  graph, rng, params = _graph()
  linear = Linear(graph.child("linear"), 2, rng=rng)
  inner = Sequential(graph.child("inner"), [linear])
  assert inner.accepted_keywords == frozenset()  # Linear's call takes no keyword
  outer = Sequential(graph.child("outer"), [Dropout(graph.child("drop"), 0.5, rng=rng), inner])
  assert outer.accepted_keywords == frozenset({"is_training"})
  x = jnp.arange(3.0)
  y, params = outer(params, x, is_training=False)
  np.testing.assert_allclose(y, linear(params, x)[0], rtol=1e-6)
  y_train, _ = outer(params, x, is_training=True)
  assert y_train.shape == (2,)
  # Two levels down, and a misspelt keyword is still refused by the outermost.
  top = Sequential(graph.child("top"), [outer, jnp.tanh])
  y_top, _ = top(params, x, is_training=False)
  np.testing.assert_allclose(y_top, jnp.tanh(y), rtol=1e-6)
  with pytest.raises(TypeError, match=r"^Sequential 'seq\d+/top': no layer accepts.*'is_trainig'"):
    top(params, x, is_trainig=False)
  # A layer taking **kwargs makes the container accept any keyword.
  assert Sequential(graph.child("any"), [_Record(graph.child("rec"))]).accepted_keywords is None


def test_signature_takes_the_layers_by_position() -> None:
  parameters = inspect.signature(Sequential).parameters
  assert [(n, p.kind) for n, p in parameters.items()] == [
      ("graph", inspect.Parameter.POSITIONAL_OR_KEYWORD),
      ("layers", inspect.Parameter.POSITIONAL_OR_KEYWORD),
  ]


def test_repr_config_and_keywords_follow_changed_layers() -> None:
  graph, rng, params = _graph()
  linear = Linear(graph.child("linear"), 2, rng=rng)
  model = Sequential(graph.child("model"), [linear, jnp.tanh])
  name = graph.path[0]
  assert repr(model) == f"Sequential(layers=(Linear@{name}/linear, tanh))"
  assert model.accepted_keywords == frozenset()
  dropout = Dropout(graph.child("dropout"), 0.5, rng=rng)
  model.layers = [dropout, linear]
  assert model.config["layers"] == [dropout, linear]
  assert repr(model) == f"Sequential(layers=[Dropout@{name}/dropout, Linear@{name}/linear])"
  assert model.accepted_keywords == frozenset({"is_training"})
  x = jnp.arange(3.0)
  y, params = model(params, x, is_training=False)
  np.testing.assert_allclose(y, linear(params, x)[0], rtol=1e-6)
  model.layers = [model]
  with pytest.raises(ValueError, match=r"^Sequential 'seq\d+/model': layer 0 is the Sequential itself"):
    model(params, x)
