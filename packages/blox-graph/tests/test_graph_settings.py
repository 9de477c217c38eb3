"""Tests of settings declared once: the constructor, signature, docstring and config they give."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import jax.numpy as jnp
import pytest

from blox.graph import Graph, Module, setting
from blox.params import Params


def _positive(value: Any, name: str, where: str) -> Any:
  if not isinstance(value, int) or value < 1:
    raise ValueError(f"{where}: {name} must be a positive int, got {value!r}.")
  return value


class _Affine(Module):
  """Scales and shifts.

  Example:
    >>> 1 + 1
    2
  """

  size: int = setting(kw_only=False, check=_positive, doc="the width.")
  scale: float = setting(default=1.0, doc="the factor.")
  shift: float = setting(default=0.0, doc="the offset.")
  tag: str = setting(doc="a required keyword.")
  kind: ClassVar[str] = "affine"

  def __call__(self, params: Params, x: Any) -> tuple[Any, Params]:
    return x * self.scale + self.shift, params


def test_the_constructor_takes_sizes_by_position_and_the_rest_by_keyword() -> None:
  signature = inspect.signature(_Affine)
  assert str(signature) == "(graph, size, *, scale=1.0, shift=0.0, tag)"
  affine = _Affine(Graph("net").child("a"), 3, tag="t", shift=2.0)
  assert (affine.size, affine.scale, affine.shift, affine.tag) == (3, 1.0, 2.0, "t")
  with pytest.raises(TypeError, match=r"_Affine\(\.\.\.\): too many positional arguments; it takes \(graph, size\) by position and every other argument by keyword"):
    _Affine(Graph("net").child("b"), 3, 2.0)  # type: ignore[call-arg]  # the misuse under test
  with pytest.raises(TypeError, match=r"_Affine\(\.\.\.\): missing a required argument: 'tag'"):
    _Affine(Graph("net").child("c"), 3)  # type: ignore[call-arg]  # the misuse under test


def test_a_check_runs_in_the_constructor_and_names_the_module() -> None:
  node = Graph("net").child("a")
  with pytest.raises(ValueError, match=r"_Affine 'net/a': size must be a positive int, got 0"):
    _Affine(node, 0, tag="t")
  # The failed constructor freed the node.
  assert node.module is None


def test_class_vars_are_no_settings() -> None:
  affine = _Affine(Graph("net").child("a"), 2, tag="t")
  assert "kind" not in inspect.signature(_Affine).parameters
  assert affine.kind == "affine"


def test_config_and_repr_follow_the_attributes() -> None:
  affine = _Affine(Graph("net").child("a"), 2, tag="t")
  assert repr(affine) == "_Affine(size=2, tag='t')"
  affine.scale = 3.0
  assert dict(affine.config) == {"size": 2, "tag": "t", "scale": 3.0}
  y, _ = affine(Params(), jnp.ones(2))
  assert y.tolist() == [3.0, 3.0]


def test_the_docstring_lists_the_settings_before_the_example() -> None:
  doc = _Affine.__doc__ or ""
  assert "Args:\n  graph: the node this module binds to.\n  size: the width." in doc
  assert doc.index("Args:") < doc.index("Example:")
  assert "tag: a required keyword." in doc


def test_post_init_runs_after_the_settings_are_stored() -> None:
  class _Pair(Module):
    low: int = setting(kw_only=False)
    high: int = setting(kw_only=False)

    def __post_init__(self) -> None:
      if self.low > self.high:
        raise ValueError(f"{self.where()}: low ({self.low}) must not exceed high ({self.high}).")
      self._width = self.high - self.low

    def __call__(self, params: Params) -> tuple[int, Params]:
      return self._width, params

  assert _Pair(Graph("net").child("p"), 1, 4)(Params())[0] == 3
  with pytest.raises(ValueError, match=r"_Pair 'net/q': low \(5\) must not exceed high \(4\)"):
    _Pair(Graph("net").child("q"), 5, 4)


def test_a_subclass_keeps_base_positionals_first() -> None:
  class _Base(Module):
    width: int = setting(kw_only=False)
    rate: float = setting(default=0.1)

    def __call__(self, params: Params) -> tuple[None, Params]:
      return None, params

  class _Derived(_Base):
    depth: int = setting(kw_only=False)
    mode: str = setting(default="a")

  assert str(inspect.signature(_Derived)) == "(graph, width, depth, *, mode='a', rate=0.1)"
  derived = _Derived(Graph("net").child("d"), 4, 2, rate=0.5)
  assert (derived.width, derived.depth, derived.rate) == (4, 2, 0.5)


def test_a_required_positional_after_a_defaulted_one_is_refused() -> None:
  with pytest.raises(TypeError, match=r"'b' has no default but follows 'a'"):
    class _Bad(Module):  # noqa: F841 (the class statement is what fails)
      a: int = setting(default=1, kw_only=False)
      b: int = setting(kw_only=False)  # type: ignore[misc]  # the misuse under test


def test_settings_cannot_extend_a_hand_written_init() -> None:
  class _HandWritten(Module):
    def __init__(self, graph: Graph, size: int) -> None:
      super().__init__(graph)
      self.size = size

    def __call__(self, params: Params) -> tuple[None, Params]:
      return None, params

  with pytest.raises(TypeError, match=r"_Extended declares settings \(extra\) but inherits the hand-written __init__ of _HandWritten"):
    class _Extended(_HandWritten):  # noqa: F841 (the class statement is what fails)
      extra: int = setting(default=0)


def test_a_subclass_without_settings_inherits_a_hand_written_init() -> None:
  class _HandWritten(Module):
    def __init__(self, graph: Graph, size: int) -> None:
      super().__init__(graph)
      self.size = size

    def __call__(self, params: Params) -> tuple[None, Params]:
      return None, params

  class _Louder(_HandWritten):
    pass

  louder = _Louder(Graph("net").child("l"), 3)  # type: ignore[call-arg]  # mypy synthesises (graph) here
  assert louder.size == 3
  assert str(inspect.signature(_Louder)) == "(graph: 'Graph', size: 'int') -> 'None'"


def test_setting_without_annotation_is_refused() -> None:
  with pytest.raises(TypeError, match=r"setting\(\.\.\.\) needs an annotation"):
    class _Bare(Module):  # noqa: F841 (the class statement is what fails)
      size = setting(default=1)


def test_post_init_runs_in_a_module_without_settings() -> None:
  class _Built(Module):
    def __post_init__(self) -> None:
      self.children = [self.graph.child("a"), self.graph.child("b")]

    def __call__(self, params: Params) -> tuple[int, Params]:
      return len(self.children), params

  built = _Built(Graph("net").child("built"))
  assert built(Params())[0] == 2
  assert str(inspect.signature(_Built)) == "(graph)"
