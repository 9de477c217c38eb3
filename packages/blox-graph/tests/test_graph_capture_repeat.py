"""`capture` through a scan over layers: the hooks a layer stack calls, and `Repeat`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module, Repeat, capture
from blox.graph._inspect._capture import collecting, emit_stacked
from blox.params import Params


class Halve(Module):
  """`x / 2`, sowing its input."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    self.sow("input", x)
    return x / 2, params


class Loop(Module):
  """Runs its step `steps` times in a `jax.lax.scan`, as a layer stack does,
  through the capture hooks."""

  def __init__(self, graph: Graph, make_step: Callable[[Graph], Module], steps: int) -> None:
    super().__init__(graph)
    self.steps = steps
    self.step = make_step(graph.child("step"))

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    def body(h: jax.Array, _: None) -> tuple[jax.Array, Any]:
      with collecting() as inner:
        h, _unchanged = self.step(params, h)
      return h, inner.values

    y, stacked = jax.lax.scan(body, x, length=self.steps)
    emit_stacked(stacked)
    return y, params


def test_each_path_in_the_body_gets_its_values_stacked() -> None:
  loop = Loop(Graph("net").child("loop"), Halve, 3)
  x = jnp.array([8.0, 16.0])
  for run in (capture(loop, modules=True), jax.jit(capture(loop, modules=True))):
    (y, _), seen = run(Params(), x)
    assert set(seen) == {("net", "loop"), ("net", "loop", "step"), ("net", "loop", "step", "input")}
    (inputs,) = seen[("net", "loop", "step", "input")]
    np.testing.assert_allclose(inputs, [x, x / 2, x / 4])
    (outputs,) = seen[("net", "loop", "step")]
    np.testing.assert_allclose(outputs, [x / 2, x / 4, x / 8])
    np.testing.assert_allclose(seen[("net", "loop")][0], y)


def test_a_scan_in_a_scan_stacks_outer_then_inner() -> None:
  loops = Loop(Graph("net").child("outer"), lambda node: Loop(node, Halve, 3), 2)
  (y, _), seen = capture(loops)(Params(), jnp.array(64.0))
  (inputs,) = seen[("net", "outer", "step", "step", "input")]
  assert inputs.shape == (2, 3)
  np.testing.assert_allclose(inputs, [[64.0, 32.0, 16.0], [8.0, 4.0, 2.0]])
  assert float(y) == 1.0


def test_without_a_capture_the_scan_gets_no_extra_output() -> None:
  loop = Loop(Graph("net").child("loop"), Halve, 3)
  with collecting() as inner:
    pass
  assert inner.values == {}
  emit_stacked({})  # nothing to hand out: nothing happens
  jaxpr = jax.make_jaxpr(loop)(Params(), jnp.ones(2))
  (scan,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
  assert len(scan.outvars) == 1  # the carry only
  with pytest.raises(RuntimeError, match=r"emit_stacked: no capture is active.*'net/loop/step'"):
    emit_stacked({("net", "loop", "step"): (jnp.ones(3),)})


class Affine(Module):
  """`x * scale + shift`, sowing its output's mean."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    scale, params = self.get_param(params, "scale", x.shape[-1:], init=jax.nn.initializers.ones)
    shift, params = self.get_param(params, "shift", x.shape[-1:], init=jax.nn.initializers.ones)
    y = x * scale + shift
    self.sow("mean", y.mean())
    return y, params


def test_repeat_gives_one_entry_per_layer_stacked_like_its_params() -> None:
  blocks = Repeat(Graph("net").child("blocks"), Affine, num_layers=3)
  x = jnp.arange(4.0)
  _, params = blocks(Params(), x)
  params = params.map(lambda path, p: p.value * (1 + jnp.arange(3.0)[:, None]))
  layer = ("net", "blocks", "layer")
  for run in (capture(blocks, modules=True), jax.jit(capture(blocks, modules=True))):
    (y, _), seen = run(params, x)
    assert set(seen) == {("net", "blocks"), layer, (*layer, "mean")}
    h, outputs = x, []
    for i in range(3):
      h, _ = blocks.layer(blocks.layer_params(params, i), h)
      outputs.append(h)
    (stacked,) = seen[layer]
    assert stacked.shape == (3, 4)
    np.testing.assert_allclose(stacked, outputs, rtol=1e-6)
    np.testing.assert_allclose(seen[(*layer, "mean")][0], [o.mean() for o in outputs], rtol=1e-6)
    np.testing.assert_allclose(seen[("net", "blocks")][0], y)


def test_a_repeat_in_a_repeat_stacks_outer_then_inner() -> None:
  stack = Repeat(Graph("net").child("outer"), lambda node: Repeat(node, Affine, 3), 2)
  x = jnp.zeros(2)
  _, params = stack(Params(), x)
  (_, _), seen = capture(stack)(params, x)
  (means,) = seen[("net", "outer", "layer", "layer", "mean")]
  assert means.shape == (2, 3)
  np.testing.assert_allclose(means.reshape(-1), 1.0 + jnp.arange(6.0))
