"""Tests of `Graph`: naming, navigation, bound modules and walking."""

from __future__ import annotations

from typing import Any

import pytest

from blox.graph import Graph, Module
from blox.params import Params


class _Identity(Module):
  def __call__(self, params: Params, x: Any) -> tuple[Any, Params]:
    return x, params


def test_child_and_slash_give_nested_paths() -> None:
  root = Graph("net")
  mlp = root.child("mlp")
  head = root / "head"
  assert mlp.path == ("net", "mlp")
  assert head.path == ("net", "head")
  assert (mlp / "dense").path == ("net", "mlp", "dense")
  assert list(root.children) == ["mlp", "head"]


def test_repeated_child_name_raises_naming_the_node() -> None:
  root = Graph("net")
  root.child("mlp")
  with pytest.raises(ValueError, match=r"'net'.*already has a child named 'mlp'"):
    root.child("mlp")
  with pytest.raises(ValueError, match="already has a child"):
    root / "mlp"


@pytest.mark.parametrize("name", ["", "a/b", "/"])
def test_invalid_names_raise(name: str) -> None:
  with pytest.raises(ValueError, match="non-empty string without '/'"):
    Graph(name)
  root = Graph("net")
  with pytest.raises(ValueError, match="non-empty string without '/'"):
    root.child(name)
  assert root.children == {}


def test_name_parent_root_and_no_metadata() -> None:
  root = Graph("net")
  mid = root.child("block")
  leaf = mid.child("dense")
  assert (leaf.name, mid.name, root.name) == ("dense", "block", "net")
  assert leaf.parent is mid and mid.parent is root and root.parent is None
  assert leaf.root is root and root.root is root
  # A graph node is naming only: nothing read a free-form metadata dict.
  assert not hasattr(root, "metadata")


def test_children_is_a_copy() -> None:
  root = Graph("net")
  root.child("a")
  children = root.children
  children.clear()
  assert list(root.children) == ["a"]


def test_module_property_reports_the_bound_module() -> None:
  root = Graph("net")
  node = root.child("id")
  assert node.module is None
  module = _Identity(node)
  assert node.module is module
  assert root.module is None


def test_walk_is_depth_first_over_bound_descendants() -> None:
  root = Graph("net")
  a = root.child("a")
  a1 = _Identity(a.child("a1"))
  unbound = a.child("unbound")
  a2 = _Identity(unbound.child("a2"))
  b = _Identity(root.child("b"))
  found = list(root.walk())
  assert found == [
      (("net", "a", "a1"), a1),
      (("net", "a", "unbound", "a2"), a2),
      (("net", "b"), b),
  ]
  assert [path for path, _ in a.walk()] == [("net", "a", "a1"), ("net", "a", "unbound", "a2")]
  # A bound node yields itself before its descendants; an empty subtree nothing.
  outer = _Identity(root.child("outer"))
  inner = _Identity(outer.graph.child("inner"))
  assert [m for _, m in outer.graph.walk()] == [outer, inner]
  assert list(root.child("empty").walk()) == []


def test_repr_names_the_path_and_module() -> None:
  root = Graph("net")
  node = root.child("id")
  assert repr(node) == "Graph('net/id')"
  _Identity(node)
  assert repr(node) == "Graph('net/id', module=_Identity)"
  assert repr(root) == "Graph('net')"
