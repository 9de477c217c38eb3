"""Tests of `blox.graph.Repeat`: its settings, the layer it builds, and the errors of misuse.

The other Repeat tests sit beside this file: `test_graph_repeat_run.py`
(running and `repeat.scan`), `test_graph_repeat_stacking.py` (`stack`,
`unstack`, `layer_params`); with real layers in blox-nn's
`test_nn_repeat.py`, and on 8 devices in the workspace's
`tests/test_repeat_parallel.py`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from blox.graph import Graph, Module, Repeat, setting
from blox.params import STACKED, Param, Params


class Affine(Module):
  """`x * scale + shift`, both created from a counter param outside the layer."""

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    scale, params = self.get_param(params, "scale", x.shape[-1:], init=jax.nn.initializers.ones)
    shift, params = self.get_param(
        params, "shift", x.shape[-1:], init=lambda key, shape, dtype: jnp.full(shape, 0.5, dtype)
    )
    return x * scale + shift, params


class Scaled(Module):
  """`x * factor`: a layer with settings, so it needs more than its node."""

  width: int = setting(kw_only=False, doc="the width.")
  factor: float = setting(default=1.0, doc="the factor.")

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    return x * self.factor, params


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


def test_settings_give_the_signature_docstring_and_config() -> None:
  assert str(inspect.signature(Repeat)) == (
      "(graph, make_layer, num_layers, *, remat_policy=None, unroll=1)"
  )
  doc = inspect.getdoc(Repeat) or ""
  assert "\nArgs:\n  graph: " in doc and "\n  num_layers: how many times" in doc
  by_keyword = Repeat(Graph("net").child("stack"), make_layer=Affine, num_layers=2)
  assert dict(by_keyword.config) == {"make_layer": Affine, "num_layers": 2}
  with pytest.raises(TypeError, match=r"Repeat\(\.\.\.\): too many positional arguments"):
    Repeat(Graph("net").child("stack"), Affine, 2, "full")  # type: ignore[call-arg]  # the misuse under test


def test_a_module_instance_instead_of_a_factory_is_refused() -> None:
  built = Affine(Graph("net").child("affine"))
  with pytest.raises(
      TypeError,
      match=r"Repeat 'net/stack': make_layer must be a function node -> Module"
      r" \(e\.g\. lambda node: Affine\(node, \.\.\.\)\); got a Affine instance,"
      r" already built on 'net/affine'",
  ):
    make(built)  # type: ignore[arg-type]  # the misuse under test


def test_a_class_that_needs_more_than_the_node_is_refused_with_the_fix() -> None:
  with pytest.raises(
      TypeError,
      match=r"Repeat 'net/stack': make_layer is the class Scaled, which the repeat calls as"
      r" Scaled\(node\), .*missing a required argument: 'width'.*lambda node: Scaled\(node, \.\.\.\)",
  ):
    make(Scaled)  # type: ignore[arg-type]  # the misuse under test
  # A class that needs only its node, or a partial that supplies the rest, is a factory.
  stack = make(functools.partial(Scaled, width=2, factor=2.0), 3)
  y, _ = stack(Params(), jnp.ones(2))
  assert y.tolist() == [8.0, 8.0]
  assert isinstance(make(Affine).layer, Affine)


@pytest.mark.parametrize(
    ("make_layer", "message"),
    [
        (3, r"make_layer must be a function node -> Module .*; got int 3\."),
        (lambda: None, r"make_layer must be a function node -> Module, called with the node alone .*<lambda>\(\) cannot be called so"),
        (lambda node, size: None, r".*<lambda>\(node, size\) cannot be called so \(missing"),
    ],
)
def test_a_factory_that_cannot_be_called_with_the_node_is_refused(
    make_layer: Any, message: str
) -> None:
  graph = Graph("net")
  with pytest.raises(TypeError, match=r"Repeat 'net/stack': " + message):
    Repeat(graph.child("stack"), make_layer, 2)
  assert graph.children["stack"].module is None  # the failed repeat left its node free


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
      _, params = self.get_param(params, "a", (), init=jax.nn.initializers.ones)
      if self.param_path("a") in params and ("net", "stack", "layer", "a") in params:
        _, params = self.get_param(params, "b", (), init=jax.nn.initializers.ones)
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


