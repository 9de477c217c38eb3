"""`Module`: a computation bound to one graph node, with lazily created params.

A module stores configuration only, each constructor argument as an
attribute of the same name (its `config` and `repr` are read from those). Its
params live in a `Params` container under the node's path and are created on
the first forward pass, when the input shapes are known.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> class Scale(Module):
  ...   def __call__(self, params, x):
  ...     s, params = self.get_param(
  ...         params, 'scale', x.shape[-1:], jax.nn.initializers.ones)
  ...     return x * s, params
  >>> scale = Scale(Graph('net').child('scale'))
  >>> y, params = scale(Params(), jnp.ones(3))
  >>> scale.param_path('scale')
  ('net', 'scale', 'scale')
  >>> scale.where()  # how error messages name the module
  "Scale 'net/scale'"
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import FunctionType, MappingProxyType
from typing import Any

import numpy as np

from blox.graph._calls import recorded
from blox.graph._config import init_config
from blox.graph._graph import Graph
from blox.graph._policy import Policy, effective_policy
from blox.params import Initializer, KeySource, Params

__all__ = ["Module"]


class _ModuleMeta(abc.ABCMeta):
  """Checks that `Module.__init__` ran, and frees the node of a failed constructor;
  wraps each subclass's `__call__` and public methods for `tabulate` (see
  `blox.graph._calls`: one `ContextVar.get` per call while tracing).

  The first two need to see the whole construction, from before the first line of the
  outermost `__init__` to after its last, which only the metaclass does.
  """

  def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
    super().__init__(name, bases, namespace)
    # Module's own methods (get_param, ...) are no module calls; a subclass's
    # public methods and __call__ are, when they take and return params.
    if not any(isinstance(base, _ModuleMeta) for base in bases):
      return
    for attribute, value in namespace.items():
      if (attribute == "__call__" or not attribute.startswith("_")) and isinstance(
          value, FunctionType) and not getattr(value, "__blox_recorded__", False):
        setattr(cls, attribute, recorded(value))

  def __call__(cls, *args: Any, **kwargs: Any) -> Any:
    graph = args[0] if args else kwargs.get("graph")
    bound_before = graph.module if isinstance(graph, Graph) else None
    try:
      module = super().__call__(*args, **kwargs)
    except BaseException:
      # A constructor that fails after binding (say, on a bad argument) must
      # not leave its node claimed by a half-built module.
      if isinstance(graph, Graph) and graph.module is not bound_before:
        graph._module = bound_before
      raise
    if "_graph" not in module.__dict__:
      raise RuntimeError(
          f"{cls.__name__}.__init__ did not call super().__init__(graph); every"
          " Module must, so that it is bound to its graph node."
      )
    return module


def _short(value: Any) -> str:
  """A compact repr for configuration values: modules by path, functions by name."""
  if isinstance(value, Module):
    return f"{type(value).__name__}@{'/'.join(value.graph.path)}"
  if isinstance(value, (list, tuple)) and any(isinstance(v, Module) for v in value):
    inner = ", ".join(_short(v) for v in value)
    return f"[{inner}]" if isinstance(value, list) else f"({inner})"
  if isinstance(value, np.dtype):
    return value.name
  if callable(value) and hasattr(value, "__name__"):
    return str(value.__name__)
  return repr(value)


class Module(metaclass=_ModuleMeta):
  """Base class of everything that owns params under a graph node.

  Subclasses call `super().__init__(graph)`, store each constructor argument
  they keep under its own name (`self.value = value`: `config`, `repr` and
  `summary` read those attributes), and implement
  `__call__(params, ...) -> (output, params)`. Their error messages start
  with `self.where()`, e.g. `Linear 'net/out': ...`, so that every error names
  the module at fault in the same way. While `tabulate` runs, each call of
  `__call__` or a public method that takes params first and returns
  `(output, params)` is recorded as one of its rows.
  """

  def __init__(self, graph: Graph) -> None:
    if not isinstance(graph, Graph):
      raise TypeError(
          f"{type(self).__name__} needs a Graph node as its first argument, got"
          f" {type(graph).__name__}; pass a node such as"
          f" Graph('net').child('{type(self).__name__.lower()}')."
      )
    graph._bind(self)
    self._graph = graph

  @property
  def graph(self) -> Graph:
    """The graph node this module is bound to."""
    return self._graph

  @property
  def config(self) -> Mapping[str, Any]:
    """The module's configuration, read from its attributes, read-only.

    For each parameter of the class's `__init__` after `graph`, the attribute
    of the same name, unless the module stores none or it equals the
    parameter's default. Read afresh on every access, so it always agrees
    with what the module computes with; `repr` and `summary` show the same.

    Example:
      >>> class AddConstant(Module):
      ...   def __init__(self, graph, value, scale=1.0):
      ...     super().__init__(graph)
      ...     self.value, self.scale = value, scale
      ...   def __call__(self, params, x):
      ...     return x * self.scale + self.value, params
      >>> adder = AddConstant(Graph('net').child('add'), value=10.0)
      >>> dict(adder.config), adder
      ({'value': 10.0}, AddConstant(value=10.0))
      >>> adder.value = 100.0
      >>> adder
      AddConstant(value=100.0)
    """
    return MappingProxyType(init_config(self))

  def where(self) -> str:
    """How errors name this module: its type and slash-joined path in quotes.

    For a `Linear` bound to `Graph('net').child('out')` this is
    `Linear 'net/out'`. It is also what blox passes on as the `where`
    argument of its helpers (`static_scan`, `dynamic_scan`, ...), so their
    errors name the module the same way. Usable once `Module.__init__` has
    bound the graph node, i.e. right after `super().__init__(graph)`.
    """
    return f"{type(self).__name__} '{'/'.join(self._graph.path)}'"

  def policy(self) -> Policy:
    """The effective mixed-precision `Policy` of this module's node.

    Field by field, the nearest value that is not None on the module's node
    or its ancestors (`Graph(..., policy=...)`, `graph.child(..., policy=...)`),
    so a node can override one field and inherit the others; fields no node
    sets are None. This is THE way a module reads its policy: a user-written
    module that supports mixed precision calls `self.policy()` where it
    creates params and computes (an explicit constructor argument, such as
    the `dtype` of the blox.nn layers, should win over it). Don't store an
    attribute named `policy` on a module: it would hide this method.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from blox.graph import Graph, Policy
      >>> from blox.params import Params
      >>> class Scale(Module):
      ...   def __call__(self, params, x):
      ...     policy = self.policy()
      ...     s, params = self.get_param(params, 'scale', x.shape[-1:],
      ...         jax.nn.initializers.ones, dtype=policy.param_dtype)
      ...     dtype = policy.compute_dtype
      ...     if dtype is None:  # no opinion: promote, as jnp would
      ...       dtype = jnp.result_type(x, s)
      ...     return x.astype(dtype) * s.astype(dtype), params
      >>> net = Graph('net', policy=Policy(param_dtype=jnp.float32,
      ...                                  compute_dtype=jnp.bfloat16))
      >>> scale = Scale(net.child('scale', policy=Policy(compute_dtype=jnp.float16)))
      >>> scale.policy()
      Policy(param_dtype=float32, compute_dtype=float16, output_dtype=None)
      >>> y, params = scale(Params(), jnp.ones(3))
      >>> y.dtype, params[('net', 'scale', 'scale')].value.dtype
      (dtype('float16'), dtype('float32'))
    """
    return effective_policy(self._graph)

  def param_path(self, name: str | tuple[str, ...]) -> tuple[str, ...]:
    """The full path of this module's param `name`.

    `name` is one name, or a tuple of names for a param nested below the
    module's node: a module that owns several groups of params without
    child modules (attention's `('query', 'kernel')`, ...) names them so.
    """
    if isinstance(name, tuple):
      return self._graph.path + name
    return self._graph.path + (name,)

  def get_param(
      self,
      params: Params,
      name: str | tuple[str, ...],
      shape: Sequence[int] | None = None,
      init: Initializer | None = None,
      dtype: Any = None,
      trainable: bool = True,
      metadata: Mapping[str, Any] | None = None,
      rng: KeySource | None = None,
  ) -> tuple[Any, Params]:
    """Returns `(value, params)` for this module's param `name`, creating it
    with `init(key, shape, dtype)` on first use (dtype defaults to float32).

    When the param exists, a given `shape` or `dtype` must match it; the other
    arguments only matter for creation. With `rng`, creation draws exactly one
    key from it. See `Params.get_or_create` for the errors raised.
    """
    return params.get_or_create(
        self.param_path(name),
        shape=shape,
        init=init,
        param_dtype=dtype,
        trainable=trainable,
        metadata=metadata,
        rng=rng,
    )

  def set_param(
      self,
      params: Params,
      name: str | tuple[str, ...],
      value: Any = None,
      trainable: bool | None = None,
      metadata: Mapping[str, Any] | None = None,
  ) -> Params:
    """Returns params with this module's existing param `name` changed.

    See `Params.set`: same shape and dtype; metadata is merged.
    """
    return params.set(
        self.param_path(name), value, trainable=trainable, metadata=metadata
    )

  @abc.abstractmethod
  def __call__(self, params: Params, *args: Any, **kwargs: Any) -> tuple[Any, Params]:
    """Runs the module: `(params, inputs, ...) -> (outputs, params)`."""

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={_short(v)}" for k, v in self.config.items())
    return f"{type(self).__name__}({args})"
