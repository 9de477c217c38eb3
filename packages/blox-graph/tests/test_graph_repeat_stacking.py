"""Tests of `blox.graph.Repeat`'s stacked params: `stack`, `unstack` and `layer_params`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blox.graph import Graph, Module, Repeat
from blox.params import STACKED, Param, Params
from graph_repeat_layers import Affine, Counting, make, same_structure


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


def test_a_layer_view_drops_the_frozen_layers_of_the_stack() -> None:
  from blox.params import FROZEN_LAYERS, STACKED

  from blox.graph._stacking import drop_stacked

  view = drop_stacked({STACKED: (3,), FROZEN_LAYERS: (0, 2), "sharding": ("embed",)})
  assert dict(view) == {"sharding": ("embed",)}
