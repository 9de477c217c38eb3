"""Tests of running `blox.graph.Repeat`: creating and running in one scan, `repeat.scan`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module, Repeat, summary
from blox.params import STACKED, Params
from graph_repeat_layers import Affine, Counting, make, same_structure


def test_init_stacks_params_and_applies_every_layer() -> None:
  stack = make(Affine, 4)
  y, params = stack(Params(), jnp.zeros(2))
  np.testing.assert_allclose(y, [2.0, 2.0])  # ((((0 + .5) + .5) + .5) + .5)
  assert list(params) == [("net", "stack", "layer", "scale"), ("net", "stack", "layer", "shift")]
  assert params[("net", "stack", "layer", "shift")].metadata == {STACKED: (4,)}
  y_again, again = stack(params.locked(), jnp.zeros(2))
  np.testing.assert_allclose(y_again, y)
  assert same_structure(again, params.locked())


def test_state_is_updated_per_layer() -> None:
  stack = make(Counting, 3)
  y, params = stack(Params(), jnp.zeros(()))
  assert float(y) == 0.0
  np.testing.assert_array_equal(params[("net", "stack", "layer", "count")].value, [1, 1, 1])
  params = params.set(("net", "stack", "layer", "count"), jnp.array([1.0, 2.0, 3.0]))
  y, params = stack(params.locked(), jnp.zeros(()))
  assert float(y) == 6.0
  np.testing.assert_array_equal(params[("net", "stack", "layer", "count")].value, [2, 3, 4])


def test_a_repeat_inside_a_repeat_stacks_outer_then_inner() -> None:
  outer = make(lambda node: Repeat(node, Affine, 3), 2)
  y, params = outer(Params(), jnp.zeros(2))
  np.testing.assert_allclose(y, [3.0, 3.0])
  scale = params[("net", "stack", "layer", "layer", "scale")]
  assert scale.value.shape == (2, 3, 2) and scale.metadata[STACKED] == (2, 3)
  y_again, _ = outer(params.locked(), jnp.zeros(2))
  np.testing.assert_allclose(y_again, y)
  per_outer = outer.unstack(params)
  inner = per_outer[("net", "stack", "1", "layer", "scale")]
  assert inner.value.shape == (3, 2) and inner.metadata[STACKED] == (3,)
  assert same_structure(outer.stack(per_outer), params)


def test_unroll_and_remat_keep_the_result() -> None:
  y, _ = make(Affine, 5)(Params(), jnp.ones(2))
  for options in ({"unroll": 2}, {"unroll": True}, {"remat_policy": "full"}):
    y_other, _ = make(Affine, 5, **options)(Params(), jnp.ones(2))
    np.testing.assert_allclose(y_other, y)


def test_compile_size_is_flat_in_the_number_of_layers() -> None:
  def eqns(num_layers: int) -> tuple[int, int]:
    stack = make(Affine, num_layers)
    init = len(jax.make_jaxpr(lambda x: stack(Params(), x))(jnp.ones(2)).eqns)
    params = jax.eval_shape(lambda: stack(Params(), jnp.ones(2))[1])
    run = len(jax.make_jaxpr(lambda p, x: stack(p, x))(params, jnp.ones(2)).eqns)
    return init, run

  assert eqns(2) == eqns(32)


def test_summary_shows_the_repeat_line_and_leaves_others_unchanged() -> None:
  graph = Graph("net")
  stack = Repeat(graph.child("stack"), Affine, 4)
  _, params = stack(Params(), jnp.ones(3))
  table = summary(params, graph)
  lines = table.splitlines()
  assert lines[0] == "2 params in 2 modules, unlocked"
  repeat_line = next(l for l in lines if l.startswith("net/stack "))
  assert "Repeat(make_layer=Affine, num_layers=4)  4 layers x 6" in repeat_line
  assert repeat_line.split()[-2:] == ["24", "96"]
  assert lines.index(repeat_line) + 1 == next(
      i for i, l in enumerate(lines) if l.startswith("net/stack/layer")
  )
  assert any(l.split()[0] == "scale" and "[4, 3]" in l for l in lines)
  assert next(l for l in lines if l.startswith("total")).split()[1:] == ["24", "96"]


def scan_outputs(fn: Callable[..., Any], *args: Any) -> int:
  """How many per-layer outputs the one scan in `fn`'s jaxpr stacks."""
  scans = [e for e in jax.make_jaxpr(fn)(*args).eqns if e.primitive.name == "scan"]
  assert len(scans) == 1
  return len(scans[0].outvars) - int(scans[0].params["num_carry"])


def test_only_created_or_replaced_values_leave_the_scan() -> None:
  affine = make(Affine, 3)
  assert scan_outputs(lambda x: affine(Params(), x), jnp.ones(2)) == 2  # scale, shift
  params = jax.eval_shape(lambda: affine(Params(), jnp.ones(2))[1])
  # The weights are only read: none is copied out once per layer.
  assert scan_outputs(lambda p, x: affine(p.locked(), x), params, jnp.ones(2)) == 0
  counting = make(Counting, 3)
  params = jax.eval_shape(lambda: counting(Params(), jnp.ones(()))[1])
  assert scan_outputs(lambda p, x: counting(p.locked(), x), params, jnp.ones(())) == 1


class CacheWriter(Module):
  """Adds a param to x; writes x into its own per-layer cache and returns it."""

  def __call__(self, params: Params, x: jax.Array, cache: jax.Array, scale: float = 1.0) -> Any:
    w, params = self.get_param(params, "w", (), init=jax.nn.initializers.ones)
    new_cache = cache + x
    return (x + scale * w, new_cache), params


def test_scan_threads_one_input_and_output_per_layer() -> None:
  stack = make(CacheWriter, 3)
  caches = jnp.arange(3.0)
  (y, new_caches), params = stack.scan(Params(), jnp.zeros(()), caches, scale=2.0)
  assert float(y) == 6.0
  np.testing.assert_allclose(new_caches, [0.0 + 0, 1.0 + 2, 2.0 + 4])
  assert params[("net", "stack", "layer", "w")].value.shape == (3,)
  (y, again), _ = stack.scan(params.locked(), jnp.zeros(()), new_caches)
  np.testing.assert_allclose(again, [0.0, 4.0, 8.0])
  assert float(y) == 3.0


def test_scan_checks_the_per_layer_inputs_and_what_the_layer_returns() -> None:
  stack = make(CacheWriter, 3)
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': per_layer\['k'\] has shape \(2,\).*num_layers=3"):
    stack.scan(Params(), jnp.zeros(()), {"k": jnp.zeros(2)})

  class Plain(Module):
    def __call__(self, params: Params, x: jax.Array, own: jax.Array) -> Any:
      return x + own, params  # forgets the per-layer output

  with pytest.raises(TypeError, match=r"Repeat 'net/stack': with repeat.scan, the layer Plain 'net/stack/layer' must return \(\(x, output\), params\)"):
    make(Plain).scan(Params(), jnp.zeros(()), jnp.zeros(3))


