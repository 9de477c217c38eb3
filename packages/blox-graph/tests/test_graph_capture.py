"""Tests of `blox.graph.capture` and `Module.sow`: intermediates, returned, under JAX's transformations."""

from __future__ import annotations

import inspect
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module, capture, tabulate
from blox.graph._inspect._calls import CALLS
from blox.params import Params


class Dense(Module):
  """`x @ w`; sows its input under 'seen'."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    w, params = self.get_param(params, "w", (x.shape[-1], 2), init=jax.nn.initializers.ones)
    self.sow("seen", x)
    return x @ w, params


class Norm(Module):
  """`x / |x|`, by a public method that `__call__` runs: one call."""

  def normalise(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True), params

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    return self.normalise(params, x)


class Model(Module):
  """Dense, Norm, then the same Dense again: two calls of one module."""

  def __init__(self, graph: Graph) -> None:
    super().__init__(graph)
    self.dense = Dense(graph.child("dense"))
    self.norm = Norm(graph.child("norm"))
    self.head = Dense(graph.child("head"))

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    h, params = self.dense(params, x)
    h, params = self.norm(params, h)
    return self.head(params, jnp.tanh(h))


DENSE, NORM, HEAD = ("net", "model", "dense"), ("net", "model", "norm"), ("net", "model", "head")


@pytest.fixture
def model() -> tuple[Model, Params, jax.Array]:
  net = Model(Graph("net").child("model"))
  x = jnp.arange(6.0).reshape(3, 2) + 1
  _, params = net(Params(), x)
  return net, params, x


def _by_hand(net: Model, params: Params, x: jax.Array) -> dict[tuple[str, ...], jax.Array]:
  """The intermediates, computed step by step."""
  h, _ = net.dense(params, x)
  n, _ = net.norm(params, h)
  y, _ = net.head(params, jnp.tanh(n))
  return {DENSE: h, NORM: n, HEAD: y, net.graph.path: y}


def test_default_captures_the_sown_values_only(model: tuple[Model, Params, jax.Array]) -> None:
  net, params, x = model
  (y, _), seen = capture(net)(params, x)
  expected = _by_hand(net, params, x)
  assert list(seen) == [(*DENSE, "seen"), (*HEAD, "seen")]
  np.testing.assert_allclose(seen[(*DENSE, "seen")][0], x)
  np.testing.assert_allclose(seen[(*HEAD, "seen")][0], jnp.tanh(expected[NORM]))
  np.testing.assert_allclose(y, expected[HEAD])


def test_every_call_with_true_nested_and_in_call_order(model: tuple[Model, Params, jax.Array]) -> None:
  net, params, x = model
  _, seen = capture(net, modules=True)(params, x)
  expected = _by_hand(net, params, x)
  calls = {path: values for path, values in seen.items() if path[-1] != "seen"}
  assert sorted(calls) == sorted(expected)
  for path, value in expected.items():
    # Norm's __call__ runs its own public method: one call, one entry.
    assert len(calls[path]) == 1
    np.testing.assert_allclose(calls[path][0], value, rtol=1e-6)

  def twice(params: Params, x: jax.Array) -> jax.Array:
    a, _ = net.dense(params, x)
    b, _ = net.dense(params, 2 * x)
    return a + b

  _, seen = capture(twice, modules=True)(params, x)
  first, second = seen[DENSE]
  np.testing.assert_allclose(second, 2 * first)
  assert len(seen[(*DENSE, "seen")]) == 2


@pytest.mark.parametrize("modules, expected", [
    (None, set()),
    ("net/model/(dense|head)", {DENSE, HEAD}),
    ("dense", set()),  # the whole path must match
    (Norm, {NORM}),
    ((Norm, Model), {NORM, ("net", "model")}),
    (lambda m: m.graph.name.startswith("h"), {HEAD}),
])
def test_modules_selects_calls_by_path_type_or_predicate(
    model: tuple[Model, Params, jax.Array], modules: Any, expected: set[tuple[str, ...]]
) -> None:
  net, params, x = model
  _, seen = capture(net, modules=modules)(params, x)
  assert {path for path in seen if path[-1] != "seen"} == expected
  # Sown values come whatever modules says.
  assert {(*DENSE, "seen"), (*HEAD, "seen")} <= set(seen)


def test_bad_selectors_are_refused_at_once(model: tuple[Model, Params, jax.Array]) -> None:
  net, _, _ = model
  with pytest.raises(TypeError, match=r"got the module Dense 'net/model/dense' itself.*modules='net/model/dense'"):
    capture(net, modules=net.dense)  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(TypeError, match=r"<class 'int'> is no Module subclass"):
    capture(net, modules=(Norm, int))  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(ValueError, match=r"modules='net/\('\): not a regular expression"):
    capture(net, modules="net/(")
  with pytest.raises(TypeError, match=r"got int; pass None \(sown values only\), True"):
    capture(net, modules=3)  # type: ignore[arg-type]  # the misuse under test
  with pytest.raises(TypeError, match=r"fn must be callable, got str"):
    capture("net")  # type: ignore[arg-type]  # the misuse under test


def test_under_jit_the_values_are_outputs(model: tuple[Model, Params, jax.Array]) -> None:
  net, params, x = model
  eager = capture(net, modules=True)(params, x)
  traces = []

  def counted(params: Params, x: jax.Array) -> Any:
    traces.append(1)
    return net(params, x)

  jitted = jax.jit(capture(counted, modules=True))
  for _ in range(2):
    compiled = jitted(params, x)
    assert str(jax.tree.structure(compiled)) == str(jax.tree.structure(eager))
    for a, b in zip(jax.tree.leaves(compiled), jax.tree.leaves(eager)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
  assert len(traces) == 1  # traced once, values still returned by the second call
  # Nothing was left on the modules, nor in the context.
  assert "seen" not in vars(net.dense) and CALLS.get() is None


def test_grad_with_the_intermediates_as_aux(model: tuple[Model, Params, jax.Array]) -> None:
  net, params, x = model

  def loss(params: Params, x: jax.Array) -> jax.Array:
    y, _ = net(params, x)
    return jnp.sum(y ** 2)

  grads, seen = jax.grad(capture(loss, modules=Norm), has_aux=True)(params, x)
  expected = jax.grad(loss)(params, x)
  for path in params:
    np.testing.assert_allclose(grads[path].value, expected[path].value, rtol=1e-6)
  np.testing.assert_allclose(seen[NORM][0], _by_hand(net, params, x)[NORM], rtol=1e-6)


def test_vmap_batches_the_intermediates(model: tuple[Model, Params, jax.Array]) -> None:
  net, params, x = model
  batched = jax.vmap(capture(net, modules=True), in_axes=(None, 0))(params, x)
  (_, _), seen = batched
  for i in range(x.shape[0]):
    _, one = capture(net, modules=True)(params, x[i])
    for path, values in one.items():
      np.testing.assert_allclose(seen[path][0][i], values[0], rtol=1e-6)


def test_values_made_inside_a_transformation_of_fn_are_refused(
    model: tuple[Model, Params, jax.Array]
) -> None:
  net, params, x = model

  def rows(params: Params, x: jax.Array) -> jax.Array:
    return jax.vmap(lambda row: net.norm(params, row)[0])(x)

  with pytest.raises(ValueError, match=re.escape(
      "capture: Norm 'net/model/norm' was called inside a JAX transformation")):
    capture(rows, modules=Norm)(params, x)
  with pytest.raises(ValueError, match=r"Dense 'net/model/dense' sowed 'seen' inside.*sow the value outside"):
    capture(lambda p, x: jax.jit(net)(p, x))(params, x)
  # Left unselected, the same calls are no trouble.
  (y, seen) = capture(rows, modules=Dense)(params, x)
  assert seen == {} and y.shape == x.shape


def test_sow_without_capture_does_nothing(model: tuple[Model, Params, jax.Array]) -> None:
  net, params, x = model

  class Plain(Module):
    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      return x * 2, params

  class Sowing(Module):
    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      self.sow("input", x)
      return x * 2, params

  plain, sowing = Plain(Graph("a").child("plain")), Sowing(Graph("a").child("sowing"))
  assert str(jax.make_jaxpr(plain)(Params(), x)) == str(jax.make_jaxpr(sowing)(Params(), x))
  sowing.sow("again", x)  # returns nothing, keeps nothing
  assert CALLS.get() is None and "again" not in vars(sowing)


def test_sow_names_are_checked(model: tuple[Model, Params, jax.Array]) -> None:
  net, params, x = model
  for name, error, problem in (
      ("a/b", ValueError, r"the name 'a/b' holds a '/'"), ("", ValueError, r"the name '' is empty"),
      (3, TypeError, r"the name 3 is a int"),
  ):
    with pytest.raises(error, match=r"Model 'net/model': sow\(name, value\): " + problem):
      net.sow(name, x)  # type: ignore[arg-type]  # the misuse under test

  class Clash(Module):
    def __init__(self, graph: Graph) -> None:
      super().__init__(graph)
      self.inner = Dense(graph.child("inner"))

    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      self.sow("inner", x)
      return self.inner(params, x)

  clash = Clash(Graph("net").child("clash"))
  with pytest.raises(ValueError, match=r"Clash 'net/clash': sow\('inner', \.\.\.\) names the child node 'net/clash/inner'"):
    capture(clash)(Params(), x)


def test_a_capture_inside_another_takes_the_values_of_its_calls(
    model: tuple[Model, Params, jax.Array]
) -> None:
  net, params, x = model

  def outer(params: Params, x: jax.Array) -> Any:
    h, _ = net.dense(params, x)
    return capture(net.head, modules=True)(params, h)

  ((y, _), inner), seen = capture(outer, modules=True)(params, x)
  assert set(inner) == {HEAD, (*HEAD, "seen")}
  assert set(seen) == {DENSE, (*DENSE, "seen")}
  np.testing.assert_allclose(inner[HEAD][0], y)


def test_tabulate_sees_the_calls_of_a_captured_function(model: tuple[Model, Params, jax.Array]) -> None:
  net, params, x = model
  table = tabulate(capture(net, modules=True), params, x)
  # Every line but the whole function's FLOPs, which the returned values change.
  assert table.splitlines()[:-1] == tabulate(net, params, x).splitlines()[:-1]
  assert table.rows[0][1][0].startswith("net/model  Model(")
  # The wrapper keeps the signature of what it wraps.
  assert list(inspect.signature(capture(net)).parameters) == ["params", "x"]
