"""Tests of `blox.params.unused_params`: which params a call never reads."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import pytest

from blox.params import Param, Params, unused_params
from blox.params._unused import READS


def _two_layers() -> Params:
  return Params({
      ("layer0", "w"): Param(jnp.ones((3, 3))),
      ("layer0", "b"): Param(jnp.zeros(3)),
      ("layer1", "w"): Param(jnp.ones((3, 3))),
      ("layer1", "b"): Param(jnp.zeros(3)),
  })


def _layer(params: Params, name: str, x: jax.Array) -> jax.Array:
  out: jax.Array = x @ params[(name, "w")].value + params[(name, "b")].value
  return out


def test_a_one_layer_model_leaves_the_second_layer_unused() -> None:
  def one_layer(params: Params, x: jax.Array) -> jax.Array:
    return _layer(params, "layer0", x)

  assert unused_params(one_layer, _two_layers(), jnp.ones(3)) == [
      ("layer1", "w"), ("layer1", "b")]
  assert READS.get() is None  # the recorder is gone afterwards


def test_everything_read_gives_an_empty_list_and_order_follows_the_container() -> None:
  def both(params: Params, x: jax.Array) -> jax.Array:
    return _layer(params, "layer1", _layer(params, "layer0", x))

  assert unused_params(both, _two_layers(), jnp.ones(3)) == []
  reordered = Params({path: _two_layers()[path] for path in reversed(list(_two_layers()))})
  assert unused_params(lambda p, x: x, reordered, jnp.ones(3)) == list(reordered)


def test_reads_inside_jit_and_scan_are_seen() -> None:
  def model(params: Params, xs: jax.Array) -> jax.Array:
    @jax.jit
    def first(params: Params, x: jax.Array) -> jax.Array:
      return _layer(params, "layer0", x)

    def step(carry: jax.Array, x: jax.Array) -> tuple[jax.Array, None]:
      return carry + params[("layer1", "b")].value * x.sum(), None

    out: jax.Array = jax.lax.scan(step, first(params, xs[0]), xs)[0]
    return out

  assert unused_params(model, _two_layers(), jnp.ones((4, 3))) == [("layer1", "w")]


def test_paths_read_with_get_or_create_count() -> None:
  def model(params: Params, x: jax.Array) -> jax.Array:
    w, params = params.get_or_create(("layer1", "w"), (3, 3))
    out: jax.Array = x @ w
    return out

  assert unused_params(model, _two_layers(), jnp.ones(3)) == [
      ("layer0", "w"), ("layer0", "b"), ("layer1", "b")]


def test_runs_abstractly_with_static_arguments() -> None:
  calls: list[Any] = []

  def model(params: Params, x: jax.Array, *, name: str, scale: int) -> jax.Array:
    calls.append(type(x))
    return _layer(params, name, x) * scale

  abstract = jax.eval_shape(_two_layers)
  x = jax.eval_shape(lambda: jnp.ones(3))  # a jax.ShapeDtypeStruct
  unused = unused_params(model, abstract, x, name="layer1", scale=2)
  assert unused == [("layer0", "w"), ("layer0", "b")]
  assert len(calls) == 1 and issubclass(calls[0], jax.core.Tracer)


def test_an_error_in_fn_propagates_and_stops_recording() -> None:
  def broken(params: Params) -> None:
    params[("layer0", "w")]
    raise RuntimeError("model bug")

  with pytest.raises(RuntimeError, match="model bug"):
    unused_params(broken, _two_layers())
  assert READS.get() is None
  # Outside unused_params reading records nothing anywhere.
  _two_layers()[("layer0", "w")]
  assert READS.get() is None


@jax.jit
def _compiled_first_layer(params: Params, x: jax.Array) -> jax.Array:
  return _layer(params, "layer0", x)


def _scan_body(params: Params, x: jax.Array) -> tuple[Params, jax.Array]:
  out: jax.Array = params[("layer1", "b")].value * x
  return params, out


def test_functions_jax_compiled_before_are_traced_again() -> None:
  # Compiled (and cached by JAX) before unused_params runs: served from the
  # cache, their Python code would not run and their reads would be missed.
  def model(params: Params, xs: jax.Array) -> jax.Array:
    y = _compiled_first_layer(params, xs[0])
    _, ys = jax.lax.scan(_scan_body, params, xs)
    out: jax.Array = y + ys.sum()
    return out

  params, xs = _two_layers(), jnp.ones((4, 3))
  jax.jit(model)(params, xs)
  model(params, xs)
  assert unused_params(model, params, xs) == [("layer1", "w")]


def test_recording_reads_nests_and_restores() -> None:
  from blox.params import recording_reads

  params = Params({("a",): Param(jnp.ones(2)), ("b",): Param(jnp.ones(2))})
  outer: set[tuple[str, ...]] = set()
  inner: set[tuple[str, ...]] = set()
  with recording_reads(outer):
    _ = params[("a",)]
    with recording_reads(inner):
      _ = params[("b",)]
    _, _ = params.get_or_create(("b",))
  assert outer == {("a",), ("b",)} and inner == {("b",)}
  _ = params[("a",)]  # nothing records outside
  assert outer == {("a",), ("b",)}
