"""`Graph`: the static tree of names that gives every param its path.

A graph holds no arrays. Each node has a name and at most one bound module;
a module's params live under its node's path, e.g. `('net', 'mlp', 'kernel')`.
A node may also carry a mixed-precision `Policy` that its modules and those
below it inherit (see `blox.graph._policy`).

Example:
  >>> net = Graph('net')
  >>> mlp = net.child('mlp')
  >>> (net / 'head').path
  ('net', 'head')
  >>> mlp.root is net
  True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from blox.graph._policy import Policy, check_policy

if TYPE_CHECKING:
  from blox.graph._module import Module

__all__ = ["Graph"]


class Graph:
  """A node in the static naming tree. `Graph(name)` makes a root.

  Args:
    name: the node's name, a non-empty string without '/'.
    policy: the mixed-precision `Policy` of this node, inherited field by
      field by the nodes below it (see `Module.policy`); None sets none.
  """

  def __init__(
      self, name: str, *, policy: Policy | None = None, _parent: Graph | None = None
  ) -> None:
    if not isinstance(name, str) or not name or "/" in name:
      raise ValueError(
          f"A graph node name must be a non-empty string without '/', got {name!r}."
      )
    self._name = name
    self._parent = _parent
    self._path: tuple[str, ...] = (_parent.path if _parent else ()) + (name,)
    self._policy = check_policy(policy, "/".join(self._path))
    self._children: dict[str, Graph] = {}
    self._module: Module | None = None

  @property
  def name(self) -> str:
    return self._name

  @property
  def path(self) -> tuple[str, ...]:
    """Names from the root to this node, e.g. `('net', 'mlp')`."""
    return self._path

  @property
  def parent(self) -> Graph | None:
    return self._parent

  @property
  def root(self) -> Graph:
    node = self
    while node._parent is not None:
      node = node._parent
    return node

  @property
  def module(self) -> Module | None:
    """The module bound to this node, or None."""
    return self._module

  @property
  def policy(self) -> Policy | None:
    """The policy set on this node itself (None if none), not the inherited one;
    `Module.policy()` gives the effective policy."""
    return self._policy

  @property
  def children(self) -> dict[str, Graph]:
    """The child nodes by name, in creation order (a copy)."""
    return dict(self._children)

  def child(self, name: str, *, policy: Policy | None = None) -> Graph:
    """Creates and returns a new child node; a repeated name is an error.

    `policy`, if given, is the child's own `Policy`; its None fields inherit
    this node's effective policy.
    """
    if name in self._children:
      raise ValueError(
          f"Graph node {'/'.join(self._path)!r} already has a child named {name!r};"
          " pick another name."
      )
    node = Graph(name, policy=policy, _parent=self)
    self._children[name] = node
    return node

  def __truediv__(self, name: str) -> Graph:
    """`graph / 'name'` is `graph.child('name')`."""
    return self.child(name)

  def walk(self) -> Iterator[tuple[tuple[str, ...], Module]]:
    """Yields `(path, module)` depth-first for this node and every descendant
    that has a bound module, in creation order."""
    if self._module is not None:
      yield self._path, self._module
    for node in self._children.values():
      yield from node.walk()

  def _bind(self, module: Module) -> None:
    if self._parent is None:
      raise ValueError(
          f"Cannot bind {type(module).__name__} to the root node {self._name!r};"
          f" bind it to a child, e.g. graph.child('{type(module).__name__.lower()}')."
      )
    if self._module is not None:
      raise ValueError(
          f"Graph node {'/'.join(self._path)!r} already has the module"
          f" {type(self._module).__name__}; give each module its own node."
      )
    self._module = module

  def __repr__(self) -> str:
    bound = f", module={type(self._module).__name__}" if self._module else ""
    return f"Graph({'/'.join(self._path)!r}{bound})"
