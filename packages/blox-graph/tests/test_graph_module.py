"""Tests of `Module`: binding, configuration capture and the param primitives."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph, Module, setting
from blox.params import Params


class _Scale(Module):
  """Multiplies by a learned vector; a minimal module with one param."""

  size: int = setting(kw_only=False)
  label: str = setting(default="scale")

  def __call__(self, params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    scale, params = self.get_param(
        params, "scale", (self.size,), init=jax.nn.initializers.ones
    )
    return x * scale, params


class _Wrapper(Module):
  inner: Module = setting(kw_only=False)
  fn: Any = setting(default=jnp.tanh)

  def __call__(self, params: Params, x: Any) -> tuple[Any, Params]:
    return x, params


def test_binding_to_the_root_raises() -> None:
  with pytest.raises(ValueError, match=r"root node 'net'.*graph.child\('_scale'\)"):
    _Scale(Graph("net"), 3)


def test_binding_to_an_already_bound_node_raises() -> None:
  node = Graph("net").child("s")
  first = _Scale(node, 3)
  with pytest.raises(ValueError, match=r"'net/s' already has the module _Scale"):
    _Scale(node, 4)
  assert node.module is first


def test_graph_argument_must_be_a_graph() -> None:
  with pytest.raises(TypeError, match=r"_Scale needs a Graph node.*got str; pass a node such as Graph\(.net.\).child"):
    _Scale("net/s", 3)  # type: ignore[arg-type]  # the misuse under test


def test_forgetting_super_init_raises_at_construction() -> None:
  class Forgetful(Module):
    def __init__(self, graph: Graph) -> None:
      self.graph_node = graph

    def __call__(self, params: Params) -> tuple[None, Params]:
      return None, params

  with pytest.raises(RuntimeError, match=r"Forgetful.__init__ did not call super\(\).__init__\(graph\)"):
    Forgetful(Graph("net").child("f"))


def test_constructor_arguments_are_captured() -> None:
  root = Graph("net")
  scale = _Scale(root.child("s"), 4)
  assert dict(scale.config) == {"size": 4}
  assert scale.graph.path == ("net", "s")
  with pytest.raises(TypeError):
    scale.config["size"] = 5  # type: ignore[index]  # read-only mapping under test
  named = _Scale(root.child("t"), size=2, label="x")
  assert dict(named.config) == {"size": 2, "label": "x"}


def test_repr_lists_the_given_arguments() -> None:
  root = Graph("net")
  scale = _Scale(root.child("s"), 4, label="y")
  assert repr(scale) == "_Scale(size=4, label='y')"
  wrapper = _Wrapper(root.child("w"), scale, fn=jax.nn.relu)
  assert repr(wrapper) == "_Wrapper(inner=_Scale@net/s, fn=relu)"


def test_where_is_the_type_and_the_slash_joined_path_in_quotes() -> None:
  root = Graph("net")
  scale = _Scale(root.child("block").child("s"), 3)
  assert scale.where() == "_Scale 'net/block/s'"

  class _Louder(_Scale):
    pass

  # The instance's own type, so a subclass is named as itself.
  assert _Louder(root.child("loud"), 3).where() == "_Louder 'net/loud'"


def test_get_param_creates_then_reuses() -> None:
  scale = _Scale(Graph("net").child("s"), 3)
  y, params = scale(Params(), jnp.full((3,), 2.0))
  np.testing.assert_allclose(y, 2.0)
  assert list(params) == [("net", "s", "scale")]
  assert scale.param_path("scale") == ("net", "s", "scale")
  value, same = scale.get_param(params, "scale")
  assert same is params
  np.testing.assert_allclose(value, 1.0)


def test_set_param_returns_new_params() -> None:
  scale = _Scale(Graph("net").child("s"), 3)
  _, params = scale(Params(), jnp.ones(3))
  params = params.locked()
  changed = scale.set_param(params, "scale", jnp.full((3,), 5.0))
  y, _ = scale(changed, jnp.ones(3))
  np.testing.assert_allclose(y, 5.0)
  np.testing.assert_allclose(params[("net", "s", "scale")].value, 1.0)
  frozen = scale.set_param(params, "scale", trainable=False, metadata={"tag": "x"})
  assert not frozen[("net", "s", "scale")].trainable
  assert frozen[("net", "s", "scale")].metadata == {"tag": "x"}


def test_get_param_with_another_shape_or_dtype_raises() -> None:
  scale = _Scale(Graph("net").child("s"), 3)
  _, params = scale(Params(), jnp.ones(3))
  with pytest.raises(ValueError, match=r"\('net', 's', 'scale'\) exists with shape \(3,\)"):
    scale.get_param(params, "scale", (4,))
  with pytest.raises(ValueError, match=r"\('net', 's', 'scale'\) exists with dtype float32"):
    scale.get_param(params, "scale", (3,), param_dtype=jnp.int32)


def test_creating_while_locked_raises() -> None:
  scale = _Scale(Graph("net").child("s"), 3)
  with pytest.raises(RuntimeError, match=r"locked.*\('net', 's', 'scale'\)"):
    scale(Params().locked(), jnp.ones(3))


class AddConstant(Module):
  """The spec's user module: stores its one argument under its own name."""

  def __init__(self, graph: Graph, value: float) -> None:
    super().__init__(graph)
    self.value = value

  def __call__(self, params: Params, x: Any) -> tuple[Any, Params]:
    return x + self.value, params


def test_repr_and_config_follow_a_changed_attribute() -> None:
  adder = AddConstant(Graph("cache").child("add"), value=10.0)
  assert repr(adder) == "AddConstant(value=10.0)"
  adder.value = 100.0
  assert repr(adder) == "AddConstant(value=100.0)"
  assert dict(adder.config) == {"value": 100.0}
  y, _ = adder(Params(), jnp.zeros(2))
  np.testing.assert_allclose(y, 100.0)


def test_config_shows_non_defaults() -> None:
  class _Partly(Module):
    size: int = setting(kw_only=False)
    rate: float = setting(default=0.5)
    kept: str = setting(default="a")

    def __call__(self, params: Params) -> tuple[None, Params]:
      return None, params

  root = Graph("net")
  partly = _Partly(root.child("p"), 3, kept="a")
  assert dict(partly.config) == {"size": 3}
  assert repr(partly) == "_Partly(size=3)"
  partly.kept = "b"
  assert repr(partly) == "_Partly(size=3, kept='b')"
  # A default given explicitly is not shown; a changed one is, at once.
  scale = _Scale(root.child("s"), 4, label="scale")
  assert repr(scale) == "_Scale(size=4)"
  scale.label = "z"
  assert dict(scale.config) == {"size": 4, "label": "z"}


def test_a_hand_written_init_shows_its_public_attributes() -> None:
  class _Stored(Module):
    def __init__(self, graph: Graph, size: int, rate: float = 0.5) -> None:
      super().__init__(graph)
      self.size = size
      self._rate = rate  # private: not configuration

    def __call__(self, params: Params) -> tuple[None, Params]:
      return None, params

  stored = _Stored(Graph("net").child("s"), 3, rate=0.1)
  assert dict(stored.config) == {"size": 3}
  assert repr(stored) == "_Stored(size=3)"


def test_config_never_compares_arrays_elementwise() -> None:
  class _Offset(Module):
    offset: Any = setting(default=None)
    table: Any = setting(default=(1, 2))

    def __call__(self, params: Params) -> tuple[None, Params]:
      return None, params

  root = Graph("net")
  assert repr(_Offset(root.child("none"))) == "_Offset()"
  offset = _Offset(root.child("o"), offset=jnp.ones(2), table=np.ones(2))
  assert set(offset.config) == {"offset", "table"}
  assert "offset=Array([1., 1.], dtype=float32)" in repr(offset)
  # A tuple holding arrays, whose == raises on its truth value, is shown too.
  odd = _Offset(root.child("odd"), table=(np.ones(2), np.ones(2)))
  assert set(odd.config) == {"table"}


def test_a_subclass_adds_settings_after_its_bases() -> None:
  class _Named(_Scale):
    name: str = setting(default="n")

  named = _Named(Graph("net").child("n"), 2, name="x")
  # The base's settings are inherited; `label` keeps its default, so is not shown.
  assert repr(named) == "_Named(size=2, name='x')"
  assert named.label == "scale"


def test_a_failed_constructor_frees_its_node() -> None:
  class _Picky(Module):
    def __init__(self, graph: Graph, size: int) -> None:
      super().__init__(graph)
      if size <= 0:
        raise ValueError(f"{self.where()}: size must be positive, got {size}; pass size >= 1.")
      self.size = size

    def __call__(self, params: Params) -> tuple[None, Params]:
      return None, params

  node = Graph("net").child("p")
  with pytest.raises(ValueError, match="_Picky 'net/p': size must be positive"):
    _Picky(node, 0)
  assert node.module is None
  assert _Picky(node, 1).graph is node
