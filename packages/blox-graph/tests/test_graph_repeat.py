"""Tests of `blox.graph.Repeat` that need no layers from blox.nn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blox.graph import Graph, Module, Repeat, summary
from blox.params import STACKED, Param, Params


class Affine(Module):
  """`x * scale + shift`, both created from a counter param outside the layer."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    scale, params = self.get_param(params, "scale", x.shape[-1:], jax.nn.initializers.ones)
    shift, params = self.get_param(
        params, "shift", x.shape[-1:], lambda key, shape, dtype: jnp.full(shape, 0.5, dtype)
    )
    return x * scale + shift, params


class Counting(Module):
  """Adds its own counter (state) to x and increments it."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    count, params = self.get_param(
        params, "count", (), jax.nn.initializers.zeros, trainable=False
    )
    return x + count, self.set_param(params, "count", count + 1)


def same_structure(a: Any, b: Any) -> bool:
  # Typed as object: jax's stubs leave PyTreeDef unresolved for mypy.
  structure: object = jax.tree.structure(a)
  return structure == jax.tree.structure(b)


def make(layer: Callable[[Graph], Module], num_layers: int = 3, **options: Any) -> Repeat:
  return Repeat(Graph("net").child("stack"), layer, num_layers, **options)


def test_constructor_builds_the_layer_on_its_layer_node() -> None:
  stack = make(Affine, 3, unroll=2)
  assert stack.layer.graph.path == ("net", "stack", "layer")
  assert stack.num_layers == 3 and stack.unroll == 2 and stack.remat_policy is None
  assert repr(stack) == "Repeat(make_layer=Affine, num_layers=3, unroll=2)"


@pytest.mark.parametrize("num_layers", [0, -1, 2.0, True, "3"])
def test_num_layers_must_be_a_positive_int(num_layers: Any) -> None:
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': num_layers must be a positive int"):
    make(Affine, num_layers)


def test_remat_policy_names_the_valid_policies() -> None:
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': remat_policy .*dots_saveable"):
    make(Affine, remat_policy="dots")
  with pytest.raises(ValueError, match=r"Repeat 'net/stack'"):
    make(Affine, remat_policy="save_only_these_names")  # a factory, not a policy
  assert make(Affine, remat_policy="nothing_saveable").remat_policy == "nothing_saveable"


@pytest.mark.parametrize("unroll", [0, -2, 1.5, False])
def test_unroll_must_be_a_positive_int_or_true(unroll: Any) -> None:
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': unroll must be a positive int"):
    make(Affine, unroll=unroll)


def test_make_layer_must_build_a_module_on_the_given_node() -> None:
  with pytest.raises(TypeError, match=r"Repeat 'net/stack': make_layer\(node\) must return a Module"):
    make(lambda node: "not a module")  # type: ignore[arg-type,return-value]  # the misuse under test
  other = Graph("elsewhere").child("affine")
  with pytest.raises(TypeError, match=r"bound to 'elsewhere/affine'"):
    make(lambda node: Affine(other))


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


def test_locked_params_without_the_layer_params_are_refused() -> None:
  with pytest.raises(RuntimeError, match=r"Repeat 'net/stack': the params are locked .*unlocked"):
    make(Affine)(Params().locked(), jnp.zeros(2))


def test_a_parameter_free_layer_runs_on_locked_params() -> None:
  class Double(Module):
    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      return 2 * x, params

  y, params = make(Double, 3)(Params().locked(), jnp.ones(1))
  assert float(y[0]) == 8.0 and len(params) == 0 and params.is_locked


def test_the_layer_must_keep_the_shape_and_dtype_of_x() -> None:
  class Grow(Module):
    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      return jnp.concatenate([x, x]), params

  with pytest.raises(ValueError, match=r"Grow 'net/stack/layer' returned x of shape \(4,\).*\(2,\)"):
    make(Grow)(Params(), jnp.ones(2))

  class Cast(Module):
    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      return x.astype(jnp.int32), params

  with pytest.raises(ValueError, match=r"Cast 'net/stack/layer' returned x .*dtype int32"):
    make(Cast)(Params(), jnp.ones(2))


def test_creating_params_outside_the_layer_node_is_refused() -> None:
  class Leaky(Module):
    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      w, params = params.get_or_create(("shared", "w"), (), init=jax.nn.initializers.ones)
      return x * w, params

  with pytest.raises(ValueError, match=r"Repeat 'net/stack': the layer Leaky 'net/stack/layer' created \('shared', 'w'\) outside its node"):
    make(Leaky)(Params(), jnp.ones(2))


def test_creating_params_in_the_scan_body_is_refused() -> None:
  class Lazy(Module):
    def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
      _, params = self.get_param(params, "a", (), jax.nn.initializers.ones)
      if self.param_path("a") in params and ("net", "stack", "layer", "a") in params:
        _, params = self.get_param(params, "b", (), jax.nn.initializers.ones)
      return x, params

  stack = make(Lazy)
  _, params = stack(Params(), jnp.ones(2))  # creates 'a' and 'b' in the first call
  unfinished = Params({("net", "stack", "layer", "a"): Param(jnp.ones(3), metadata={STACKED: (3,)})})
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': the layer Lazy 'net/stack/layer' created \('net', 'stack', 'layer', 'b'\) after its params were created"):
    stack(unfinished, jnp.ones(2))
  assert len(params) == 2


def test_params_stacked_for_another_number_of_layers_are_refused() -> None:
  stack = make(Affine, 3)
  _, params = make(Affine, 2)(Params(), jnp.ones(2))
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': param \('net', 'stack', 'layer', 'scale'\) .*not stacked for 3 layers"):
    stack(params, jnp.ones(2))
  plain = Params({("net", "stack", "layer", "scale"): Param(jnp.ones((3, 2)))})
  with pytest.raises(ValueError, match=r"not stacked for 3 layers .*repeat.stack"):
    stack(plain, jnp.ones(2))


def test_unstack_and_stack_are_exact_inverses() -> None:
  stack = make(Counting, 3)
  _, params = stack(Params({("before",): Param(jnp.zeros(1))}), jnp.zeros(()))
  params = params.unlocked()
  params[("after",)] = Param(jnp.ones(1))  # created after the stack: rank max+1
  params = params.locked()
  per_layer = stack.unstack(params)
  assert list(per_layer) == [
      ("before",), ("net", "stack", "0", "count"), ("net", "stack", "1", "count"),
      ("net", "stack", "2", "count"), ("after",),
  ]
  assert per_layer[("net", "stack", "1", "count")].metadata == {}
  assert per_layer[("net", "stack", "1", "count")].trainable is False
  assert per_layer.is_locked
  again = stack.stack(per_layer)
  assert same_structure(again, params)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert same_structure(stack.unstack(again), per_layer)


def test_stack_refuses_layers_that_differ() -> None:
  stack = make(Counting, 2)
  per_layer = Params({
      ("net", "stack", "0", "count"): Param(jnp.zeros(())),
      ("net", "stack", "1", "count"): Param(jnp.zeros((2,))),
  })
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': cannot stack \('net', 'stack', '1', 'count'\)"):
    stack.stack(per_layer)
  missing = Params({("net", "stack", "0", "count"): Param(jnp.zeros(()))})
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': cannot stack, layer 1 holds the params \[\]"):
    stack.stack(missing)
  _, stacked = stack(Params(), jnp.zeros(()))
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': cannot stack, the params already hold"):
    stack.stack(stacked)


def test_layer_params_index_is_checked() -> None:
  stack = make(Affine, 2)
  _, params = stack(Params(), jnp.ones(2))
  with pytest.raises(ValueError, match=r"Repeat 'net/stack': layer index must be an int in \[0, 2\)"):
    stack.layer_params(params, 2)


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


class CacheWriter(Module):
  """Adds a param to x; writes x into its own per-layer cache and returns it."""

  def __call__(self, params: Params, x: jax.Array, cache: jax.Array, scale: float = 1.0) -> Any:
    w, params = self.get_param(params, "w", (), jax.nn.initializers.ones)
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


@settings(max_examples=30, deadline=None)
@given(
    num_layers=st.integers(1, 4),
    shapes=st.lists(st.lists(st.integers(1, 3), max_size=2).map(tuple), min_size=1, max_size=3),
    before=st.integers(0, 2),
    after=st.integers(0, 2),
    locked=st.booleans(),
)
def test_unstack_stack_round_trip_property(
    num_layers: int, shapes: list[tuple[int, ...]], before: int, after: int, locked: bool
) -> None:
  stack = make(Counting, num_layers)
  entries: dict[tuple[str, ...], Param] = {}
  for i in range(before):
    entries[("a", str(i))] = Param(jnp.full((2,), float(i)))
  for j, shape in enumerate(shapes):
    value = jnp.arange(num_layers * int(np.prod(shape)), dtype=jnp.float32).reshape(num_layers, *shape)
    entries[("net", "stack", "layer", f"p{j}")] = Param(value, j % 2 == 0, {STACKED: (num_layers,)})
  for i in range(after):
    entries[("z", str(i))] = Param(jnp.zeros(()), False)
  params = Params(entries, locked=locked)
  per_layer = stack.unstack(params)
  assert len(per_layer) == before + after + num_layers * len(shapes)
  assert all(STACKED not in param.metadata for param in per_layer.values())
  again = stack.stack(per_layer)
  assert same_structure(again, params)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert same_structure(stack.unstack(again), per_layer)
