"""Watching module calls while a function is traced: `tabulate`'s records, `capture`'s values.

`Module` subclasses get each public method and `__call__` wrapped (by the
module metaclass) in `recorded`: with nothing watching, the wrapper costs
one `ContextVar.get` per call, at trace time only (jitted code never runs
Python). Whoever watches is an `Observer` set in `CALLS`: tabulate's
`Recorder` (from `recording()`) or capture's collector
(`blox.graph._inspect._capture`), which runs each call through the recorder
it found there, if any, so that both can watch at once. `Module.sow` hands
its value to the observer (`sow_value`); the recorder ignores it.

While `recording()` is active, every method call `module.method(params,
...)` that returns `(output, params)` becomes a `Call`: the module, the
method, abstract inputs, outputs and params (before and after), the params
it read (through the `blox.params.recording_reads` hook) and created, and
the calls made inside it. A module calling its own methods (`__call__`
running `self.apply`) is one call; drawing a key from a key source
(`rng(params)`, returning a PRNG key) is part of the call that draws it. A
call inside a `jax.lax.scan` body (a `Repeat`'s layer) is traced, and so
recorded, once.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.graph import Graph, Module
  >>> from blox.graph._inspect._calls import recording
  >>> from blox.params import Params
  >>> class Scale(Module):
  ...   def __call__(self, params, x):
  ...     s, params = self.get_param(params, 's', (), init=jax.nn.initializers.ones)
  ...     return x * s, params
  >>> scale = Scale(Graph('net').child('scale'))
  >>> with recording() as recorder:
  ...   _ = jax.eval_shape(lambda x: scale(Params(), x)[0], jnp.ones(3))
  >>> [(call.where, call.method, list(call.created)) for call in recorder.calls]
  [("Scale 'net/scale'", '__call__', [('net', 'scale', 's')])]
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax

from blox.params import Param, Params, Path, is_prng_key, recording_reads

__all__ = [
    "CALLS",
    "Call",
    "Observer",
    "Recorder",
    "abstract",
    "is_call_result",
    "not_recording",
    "recorded",
    "recording",
    "sow_value",
]


class Observer(Protocol):
  """What `CALLS` holds while calls are watched: runs them, and takes sown values."""

  def record(self, module: Any, method: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
    """Runs `method(module, *args, **kwargs)` and returns its result, watching it."""

  def sow(self, module: Any, name: str, value: Any) -> None:
    """Takes `value`, sown by `module` under `name`."""


def abstract(tree: Any) -> Any:
  """`tree` with every array (concrete, traced or abstract) as a `ShapeDtypeStruct`."""
  def one(leaf: Any) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
      return leaf
    if isinstance(leaf, jax.Array) or hasattr(leaf, "aval"):
      aval = jax.typeof(leaf)
      weak = getattr(aval, "weak_type", False)
      # On Explicit mesh axes the sharding is part of the type (`tabulate`
      # shows it as jax.typeof does); elsewhere it says nothing, so none is kept.
      sharding = getattr(aval, "sharding", None)
      spec = tuple(getattr(sharding, "spec", ()) or ())
      kept = sharding if any(entry is not None for entry in spec) else None
      # jax leaves ShapeDtypeStruct.__init__ unannotated.
      return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=weak, sharding=kept)  # type: ignore[no-untyped-call]
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)  # type: ignore[no-untyped-call]
    return leaf
  return jax.tree.map(one, tree)


def is_call_result(result: Any) -> bool:
  """Whether a method's result makes it a module call: `(output, params)`, the
  output no PRNG key (a key drawn from a key source belongs to the call that
  draws it)."""
  if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Params)):
    return False
  return not (hasattr(result[0], "dtype") and is_prng_key(result[0]))


@dataclasses.dataclass(eq=False)
class Call:
  """One recorded module call; arrays in it are `ShapeDtypeStruct`s.

  `params` and `after` are the params the call received and returned (its
  frame: inside a `Repeat`'s layer, one layer's view). `reads` and `created`
  hold the params the call itself read or created (not those of the calls
  inside it, `children`), by path, as abstract `Param`s.
  """

  module: Any
  method: str
  params: Params
  args: tuple[Any, ...]
  kwargs: dict[str, Any]
  parent: Call | None
  outputs: Any = None
  after: Params | None = None
  reads: dict[Path, Param] = dataclasses.field(default_factory=dict)
  created: dict[Path, Param] = dataclasses.field(default_factory=dict)
  children: list[Call] = dataclasses.field(default_factory=list)

  @property
  def where(self) -> str:
    """The module, as its errors name it (`Linear 'net/out'`)."""
    return str(self.module.where())

  @property
  def depth(self) -> int:
    """How many recorded calls enclose this one."""
    return 0 if self.parent is None else self.parent.depth + 1

  def seen(self, path: Path) -> Param | None:
    """The param at `path` as this call's frame holds it (received, else
    returned), or None."""
    if path in self.params:
      return _lookup(self.params, path)
    if self.after is not None and path in self.after:
      return _lookup(self.after, path)
    return None


def _lookup(params: Params, path: Path) -> Param:
  ignored: set[Path] = set()
  with recording_reads(ignored):  # the recorder's own look-ups are no reads of the model's
    return params[path]


class Recorder:
  """The calls recorded so far (`calls`: the outermost ones, in call order).

  Also the read recorder of `blox.params.recording_reads`: a read goes to
  the innermost call running, or to `outside_reads` when none is.
  """

  def __init__(self) -> None:
    self.calls: list[Call] = []
    self.outside_reads: list[Path] = []
    self._stack: list[tuple[Call, list[Path]]] = []

  def add(self, path: Path) -> None:
    if self._stack:
      self._stack[-1][1].append(path)
    else:
      self.outside_reads.append(path)

  def sow(self, module: Any, name: str, value: Any) -> None:
    """Sown values are `capture`'s; a table has no place for them."""

  def record(self, module: Any, method: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
    """Runs `method(module, *args, **kwargs)`, recording it when it is a call."""
    running = self._stack[-1][0] if self._stack else None
    if not args or not isinstance(args[0], Params) or (
        running is not None and running.module is module):
      return method(module, *args, **kwargs)
    params = args[0]
    call = Call(module, method.__name__, abstract(params), abstract(args[1:]),
                abstract(dict(kwargs)), running)
    reads: list[Path] = []
    self._stack.append((call, reads))
    try:
      result = method(module, *args, **kwargs)
    finally:
      self._stack.pop()
    if not is_call_result(result):
      # Not a call (`Repeat.unstack`, a getter), or a key drawn from a key
      # source (`Rng`): what happened inside belongs to the enclosing call.
      for child in call.children:
        child.parent = running
      self._adopt(running, call.children, reads)
      return result
    output, after = result
    call.outputs = abstract(output)
    call.after = abstract(after)
    for path in reads:
      if path not in call.reads:
        call.reads[path] = _lookup(call.params if path in call.params else call.after, path)
    inside = {path for child in call.children for path in _created_below(child)}
    for path in call.after:
      if path not in call.params and path not in inside:
        call.created[path] = _lookup(call.after, path)
    self._adopt(running, [call], [])
    return result

  def _adopt(self, running: Call | None, calls: list[Call], reads: list[Path]) -> None:
    if running is None:
      self.calls.extend(calls)
      self.outside_reads.extend(reads)
    else:
      running.children.extend(calls)
      self._stack[-1][1].extend(reads)


def _created_below(call: Call) -> Iterator[Path]:
  yield from call.created
  for child in call.children:
    yield from _created_below(child)


CALLS: contextvars.ContextVar[Observer | None] = contextvars.ContextVar(
    "blox_graph_calls", default=None
)


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
  """Records the module calls (and their param reads) made in the block."""
  recorder = Recorder()
  token = CALLS.set(recorder)
  try:
    with recording_reads(recorder):
      yield recorder
  finally:
    CALLS.reset(token)


@contextlib.contextmanager
def not_recording() -> Iterator[None]:
  """Suspends watching (tabulate's own lowering of single calls)."""
  token = CALLS.set(None)
  ignored: set[Path] = set()
  try:
    with recording_reads(ignored):
      yield
  finally:
    CALLS.reset(token)


def recorded(method: Callable[..., Any]) -> Callable[..., Any]:
  """`method` reporting to the active observer, if any (see the module docstring)."""
  @functools.wraps(method)
  def call(self: Any, *args: Any, **kwargs: Any) -> Any:
    observer = CALLS.get()
    if observer is None:
      return method(self, *args, **kwargs)
    return observer.record(self, method, args, kwargs)
  call.__blox_recorded__ = True  # type: ignore[attr-defined]  # marks a wrapper, not wrapped twice
  return call


def sow_value(module: Any, name: str, value: Any) -> None:
  """`module.sow(name, value)`: hands `value` to the active observer, if any.

  Raises:
    TypeError: `name` is not a string.
    ValueError: `name` is empty or holds a '/'.
  """
  if not isinstance(name, str) or not name or "/" in name:
    problem = "is empty" if name == "" else (
        "holds a '/'" if isinstance(name, str) else f"is a {type(name).__name__}")
    error = ValueError if isinstance(name, str) else TypeError
    raise error(
        f"{module.where()}: sow(name, value): the name {name!r} {problem}; give one"
        " non-empty string without '/' (it extends the module's path, as a param name does)."
    )
  observer = CALLS.get()
  if observer is not None:
    observer.sow(module, name, value)
