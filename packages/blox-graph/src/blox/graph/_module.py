"""`Module`: a computation bound to one graph node, with lazily created params.

A module stores configuration only: its settings, declared once on the
class (see `blox.graph.setting`), as attributes of the same names. Its
params live in a `Params` container under the node's path and are created on
the first forward pass, when the input shapes are known.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.graph import Graph
  >>> from blox.params import Params
  >>> class Scale(Module):
  ...   def __call__(self, params, x):
  ...     s, params = self.get_param(
  ...         params, 'scale', x.shape[-1:], init=jax.nn.initializers.ones)
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
import inspect
from collections.abc import Mapping, Sequence
from types import FunctionType, MappingProxyType
from typing import TYPE_CHECKING, Any, dataclass_transform

import numpy as np

from blox.graph._inspect._calls import recorded, sow_value
from blox.graph._settings import collect_settings, config_of, document_settings, make_init, setting
from blox.graph._graph import Graph
from blox.graph._policy import Policy, effective_policy
from blox.params import Initializer, KeySource, Params

__all__ = ["Module"]


@dataclass_transform(kw_only_default=True, eq_default=False, field_specifiers=(setting,))
class _ModuleMeta(abc.ABCMeta):
  """Makes each module class from its declared settings (see `_settings`); checks
  that `Module.__init__` ran and frees the node of a failed constructor; wraps
  each subclass's `__call__` and public methods for `tabulate` (see
  `blox.graph._calls`: one `ContextVar.get` per call while tracing).

  The checks need to see the whole construction, from before the first line of
  the outermost `__init__` to after its last, which only the metaclass does.
  `dataclass_transform` tells type checkers that the constructor is made from
  the annotated class attributes, as it is here at runtime.
  """

  def __new__(
      mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
  ) -> _ModuleMeta:
    settings, own = collect_settings(name, bases, namespace)
    cls = super().__new__(mcs, name, bases, namespace, **kwargs)
    cls.__blox_settings__ = settings  # type: ignore[attr-defined]  # set on every module class
    if not any(isinstance(base, _ModuleMeta) for base in bases):
      return cls  # Module itself, whose __init__ is written by hand
    if "__init__" not in namespace and (own or "__post_init__" in namespace):
      written = next(
          (k for k in cls.__mro__[1:-2] if "__init__" in vars(k)
           and not getattr(vars(k)["__init__"], "__blox_generated__", False)), None)
      if written is not None:
        what = f"declares settings ({', '.join(own)})" if own else "defines __post_init__"
        raise TypeError(
            f"{name} {what} but inherits the hand-written"
            f" __init__ of {written.__name__}, which does not know them; write"
            f" {name}.__init__ yourself, or declare {written.__name__}'s arguments"
            " as settings too."
        )
      init = make_init(cls, settings)
      init.__blox_generated__ = True  # type: ignore[attr-defined]  # read just above
      setattr(cls, "__init__", init)  # the constructor made from the settings
    if settings and "__doc__" in namespace:
      cls.__doc__ = document_settings(cls.__doc__, settings)
    return cls

  @property
  def __signature__(cls) -> inspect.Signature:
    """What `inspect.signature(cls)` shows: the constructor's arguments (the
    metaclass's own `__call__` would otherwise show as `(*args, **kwargs)`).

    A property of the metaclass, so that instances do not inherit it: the
    signature of a module instance is that of its `__call__`.
    """
    signature = inspect.signature(getattr(cls, "__init__"))  # unbound: its first parameter is self
    return signature.replace(parameters=list(signature.parameters.values())[1:])

  def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> None:
    super().__init__(name, bases, namespace, **kwargs)
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

  A subclass declares its settings once, as annotated class attributes
  (`size: int = setting(kw_only=False, doc=...)`, see `blox.graph.setting`),
  and gets from them its constructor `(graph, *sizes, **settings)`, its
  `config`, `repr`, the argument column of `summary` and the `Args:` section
  of its docstring; checks that involve several settings go in
  `__post_init__(self)`. A subclass may instead write `__init__` by hand,
  calling `super().__init__(graph)` and storing what it keeps as attributes
  (its `config` then shows its public attributes). Either way it implements
  `__call__(params, ...) -> (output, params)`, and its error messages start
  with `self.where()`, e.g. `Linear 'net/out': ...`, so that every error
  names the module at fault in the same way. While `tabulate` runs, each
  call of `__call__` or a public method that takes params first and returns
  `(output, params)` is recorded as one of its rows.

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.graph import Graph, setting
    >>> from blox.params import Params
    >>> class AddConstant(Module):
    ...   "Adds a constant."
    ...   value: float = setting(kw_only=False, doc="what is added.")
    ...   scale: float = setting(default=1.0, doc="what the input is scaled by first.")
    ...   def __call__(self, params, x):
    ...     return x * self.scale + self.value, params
    >>> adder = AddConstant(Graph('net').child('add'), 10.0)
    >>> adder, dict(adder.config)
    (AddConstant(value=10.0), {'value': 10.0})
    >>> adder.value = 100.0  # a plain attribute: config and repr follow it
    >>> adder
    AddConstant(value=100.0)
    >>> import inspect
    >>> inspect.signature(AddConstant)
    <Signature (graph, value, *, scale=1.0)>
  """

  if TYPE_CHECKING:
    # For type checkers, the first constructor argument (see the metaclass).
    graph: Graph = setting(kw_only=False)

  def __init__(self, graph: Graph) -> None:
    if not isinstance(graph, Graph):
      raise TypeError(
          f"{type(self).__name__} needs a Graph node as its first argument, got"
          f" {type(graph).__name__}; pass a node such as"
          f" Graph('net').child('{type(self).__name__.lower()}')."
      )
    graph._bind(self)
    self._graph = graph

  if not TYPE_CHECKING:
    @property
    def graph(self) -> Graph:
      """The graph node this module is bound to."""
      return self._graph

  @property
  def config(self) -> Mapping[str, Any]:
    """The module's configuration, read from its attributes, read-only.

    Each declared setting whose value differs from its default, read afresh
    on every access, so it always agrees with what the module computes with;
    `repr` and `summary` show the same. A module that declares no settings
    shows its public instance attributes.

    Example:
      >>> class AddConstant(Module):
      ...   def __init__(self, graph, value):
      ...     super().__init__(graph)
      ...     self.value = value
      ...   def __call__(self, params, x):
      ...     return x + self.value, params
      >>> adder = AddConstant(Graph('net').child('add'), value=10.0)
      >>> dict(adder.config), adder
      ({'value': 10.0}, AddConstant(value=10.0))
    """
    return MappingProxyType(config_of(self, type(self).__blox_settings__))  # type: ignore[attr-defined]  # set by the metaclass

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
      ...         init=jax.nn.initializers.ones, param_dtype=policy.param_dtype)
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
      *,
      init: Initializer | None = None,
      param_dtype: Any = None,
      trainable: bool = True,
      metadata: Mapping[str, Any] | None = None,
      rng: KeySource | None = None,
  ) -> tuple[Any, Params]:
    """Returns `(value, params)` for this module's param `name`, creating it
    with `init(key, shape, param_dtype)` on first use (float32 by default).

    When the param exists, a given `shape` or `param_dtype` must match it;
    the other arguments only matter for creation. With `rng`, creation draws
    exactly one key from it. See `Params.get_or_create` for the errors raised.
    """
    return params.get_or_create(
        self.param_path(name),
        shape,
        init=init,
        param_dtype=param_dtype,
        trainable=trainable,
        metadata=metadata,
        rng=rng,
    )

  def set_param(
      self,
      params: Params,
      name: str | tuple[str, ...],
      value: Any = None,
      *,
      trainable: bool | None = None,
      metadata: Mapping[str, Any] | None = None,
  ) -> Params:
    """Returns params with this module's existing param `name` changed.

    See `Params.set`: same shape and dtype; metadata is merged.
    """
    return params.set(
        self.param_path(name), value, trainable=trainable, metadata=metadata
    )

  def sow(self, name: str, value: Any) -> None:
    """Hands `value` to an active `blox.graph.capture`, under `(*path, name)`.

    A module's way to expose a value it computes on the way (an attention
    map, a norm): `capture(fn)` returns every value sown while `fn` runs, in
    call order. Without a capture this does nothing (one `ContextVar.get`,
    at trace time: jitted code never sees it). `name` must be a non-empty
    string without '/', and not the name of one of the module's child nodes.

    Example:
      >>> import jax.numpy as jnp
      >>> from blox.graph import Graph, capture
      >>> from blox.params import Params
      >>> class Centre(Module):
      ...   def __call__(self, params, x):
      ...     self.sow('mean', x.mean())
      ...     return x - x.mean(), params
      >>> centre = Centre(Graph('net').child('centre'))
      >>> _, seen = capture(centre)(Params(), jnp.array([1.0, 3.0]))
      >>> seen
      {('net', 'centre', 'mean'): (Array(2., dtype=float32),)}
    """
    sow_value(self, name, value)

  @abc.abstractmethod
  def __call__(self, params: Params, *args: Any, **kwargs: Any) -> tuple[Any, Params]:
    """Runs the module: `(params, inputs, ...) -> (outputs, params)`."""

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={_short(v)}" for k, v in self.config.items())
    return f"{type(self).__name__}({args})"
