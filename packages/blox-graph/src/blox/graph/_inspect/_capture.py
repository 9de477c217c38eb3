"""`capture`: a function's outputs, and the intermediate values of its module calls.

`capture(fn, modules)` runs `fn` with a `Collector` set in `CALLS`, the
variable the `recorded` wrappers of module methods read anyway (one
`ContextVar.get` per call, at trace time: no second wrapper). The collector
runs each call (through tabulate's recorder when one is active too), keeps
the outputs of the calls `modules` selects and every value a module sows
(`Module.sow`), and hands them back: nothing is stored on a module, and
under `jax.jit` the values are outputs of the traced function.

A value can only be returned from the trace it was made in. A module called
inside a transformation that `fn` applies itself (`jax.vmap`, `jax.jit`, a
`jax.lax.scan`) makes values of an inner trace, so the collector refuses
them with an error (it compares JAX's opaque trace state). A layer stack's
scan is the exception, through the two hooks for it: inside the scan body,
`with collecting() as inner:` gathers the body's values in a collector of
the body's own trace; the body returns `inner.values` as a scan output, and
after the scan `emit_stacked(values)` hands the stacked values (each with a
leading layer axis) to the enclosing capture. With no capture active,
`collecting()` sets nothing and its `values` are `{}`: the scan gets no
extra output.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.graph import Graph, Module
  >>> from blox.params import Params
  >>> class Scale(Module):
  ...   def __call__(self, params, x):
  ...     s, params = self.get_param(params, 's', (), init=jax.nn.initializers.ones)
  ...     self.sow('mean', x.mean())
  ...     return x * s, params
  >>> scale = Scale(Graph('net').child('scale'))
  >>> _, params = scale(Params(), jnp.ones(3))
  >>> (y, _), seen = jax.jit(capture(scale, modules=True))(params, jnp.arange(3.0))
  >>> {path: [value.tolist() for value in values] for path, values in seen.items()}
  {('net', 'scale'): [[0.0, 1.0, 2.0]], ('net', 'scale', 'mean'): [1.0]}
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jax.extend.core import get_opaque_trace_state

from blox.graph._inspect._calls import CALLS, Observer, Recorder, is_call_result
from blox.graph._module import Module
from blox.params import Params, Path

__all__ = ["Collector", "Modules", "capture", "collecting", "emit_stacked"]

# What `capture(fn, modules=...)` accepts to select module calls.
Modules = bool | str | type[Module] | tuple[type[Module], ...] | Callable[[Module], bool] | None

# jax leaves it unannotated; a typed name keeps mypy's untyped-call check on
# everywhere else. Equal states mean the same trace.
_trace_state: Callable[[], object] = get_opaque_trace_state


def _never(module: Module) -> bool:
  return False


def _always(module: Module) -> bool:
  return True


def _selector(modules: Modules) -> Callable[[Module], bool]:
  """`modules` as a predicate on modules; see `capture`."""
  if modules is None or modules is False:
    return _never
  if modules is True:
    return _always
  if isinstance(modules, str):
    try:
      pattern = re.compile(modules)
    except re.error as error:
      raise ValueError(
          f"capture(fn, modules={modules!r}): not a regular expression ({error}); pass"
          " one that matches whole slash-joined module paths, e.g. 'net/blocks/.*'."
      ) from None
    return lambda module: pattern.fullmatch("/".join(module.graph.path)) is not None
  if isinstance(modules, tuple) or isinstance(modules, type):
    types = modules if isinstance(modules, tuple) else (modules,)
    wrong = [t for t in types if not (isinstance(t, type) and issubclass(t, Module))]
    if wrong or not types:
      raise TypeError(
          f"capture(fn, modules=...): a type or tuple of types selects modules by"
          f" type, but {wrong[0] if wrong else '()'!r} is no Module subclass; pass"
          " Module subclasses, e.g. modules=(Linear, RMSNorm)."
      )
    return lambda module: isinstance(module, types)
  if isinstance(modules, Module):
    path = "/".join(modules.graph.path)
    raise TypeError(
        f"capture(fn, modules=...): got the module {modules.where()} itself; select"
        f" it by its path, modules={path!r}, or with a predicate,"
        " modules=lambda m: m is module."
    )
  if callable(modules):
    predicate = modules
    return lambda module: bool(predicate(module))
  raise TypeError(
      f"capture(fn, modules=...): got {type(modules).__name__}; pass None (sown values"
      " only), True (every module call), a regular expression on slash-joined module"
      " paths, a Module subclass or tuple of them, or a predicate module -> bool."
  )


class Collector:
  """What one run of a captured function collects: the selected calls'
  outputs and the sown values, by path, in call order (`values`).

  `recorder` is tabulate's recorder found active, through which the calls
  run; `trace`, the JAX trace the values may come from.
  """

  def __init__(self, select: Callable[[Module], bool], recorder: Recorder | None) -> None:
    self.select = select
    self.recorder = recorder
    self.trace = _trace_state()
    self._entries: dict[Path, list[Any]] = {}
    self._running: list[Any] = []

  @property
  def values(self) -> dict[Path, tuple[Any, ...]]:
    """The values collected so far, by path (sorted, as JAX sorts dict keys)."""
    return {path: tuple(self._entries[path]) for path in sorted(self._entries)}

  def record(self, module: Any, method: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
    """Runs the call, keeping its output when `select` takes its module."""
    if not args or not isinstance(args[0], Params) or (
        self._running and self._running[-1] is module):  # a module's own methods: one call
      return self._run(module, method, args, kwargs)
    chosen = self.select(module)
    self._running.append(module)
    try:
      result = self._run(module, method, args, kwargs)
    finally:
      self._running.pop()
    if chosen and is_call_result(result):
      self.take(module.graph.path, [result[0]], f"{module.where()} was called",
                ", or leave this module out of `modules`")
    return result

  def _run(self, module: Any, method: Callable[..., Any], args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> Any:
    if self.recorder is not None:
      return self.recorder.record(module, method, args, kwargs)
    return method(module, *args, **kwargs)

  def sow(self, module: Any, name: str, value: Any) -> None:
    """Keeps `value` under `(*module.graph.path, name)`."""
    if name in module.graph.children:
      raise ValueError(
          f"{module.where()}: sow({name!r}, ...) names the child node"
          f" {'/'.join((*module.graph.path, name))!r}, whose module outputs would"
          " share its key in the captured values; sow under another name."
      )
    self.take((*module.graph.path, name), [value], f"{module.where()} sowed {name!r}",
              ", or sow the value outside it")

  def take(self, path: Path, values: list[Any], what: str, fix: str = "") -> None:
    """Appends `values` to the entries of `path`, if they come from this trace;
    else raises, saying `what` happened and, besides capturing inside, `fix`."""
    if _trace_state() != self.trace:
      raise ValueError(
          f"capture: {what} inside a JAX transformation that the captured function"
          " applies itself (jax.vmap, jax.jit, jax.lax.scan, jax.checkpoint, ...), and"
          " values cannot leave the transformation they are made in. Capture inside it"
          f" (jax.vmap(capture(f)), not capture(lambda ...: jax.vmap(f)(...))){fix}."
          " Only a Repeat hands its layers' values out of its scan."
      )
    self._entries.setdefault(path, []).extend(values)


def capture(
    fn: Callable[..., Any], modules: Modules = None
) -> Callable[..., tuple[Any, dict[Path, tuple[Any, ...]]]]:
  """`fn`, returning `(its outputs, intermediates)`: module outputs and sown values.

  `capture(fn, modules)(*args, **kwargs)` calls `fn(*args, **kwargs)` and
  returns `(outputs, intermediates)`. `intermediates` is a dict from paths
  (tuples of names, like params' paths; `'/'.join(path)` gives the text
  form) to tuples of values, each tuple in call order, keys sorted:

  - `(*module_path,)`: the output of every call of a module that `modules`
    selects, as `tabulate` counts calls (`__call__` or a public method that
    takes params and returns `(output, params)`; a module calling its own
    methods is one call, drawing a PRNG key none);
  - `(*module_path, name)`: every value the module sowed with
    `self.sow(name, value)`, whatever `modules` says.

  `modules` selects the module calls: None (the default, as Flax's
  `nnx.capture`) records none, only sown values; True records every call; a
  string is a regular expression that the whole slash-joined module path
  must match (`'net/blocks/.*'`); a `Module` subclass or a tuple of them
  selects by type; any other callable is a predicate `module -> bool`.

  Nothing is stored on a module: the values are returned, so the captured
  function composes with JAX's transformations applied to it:
  `jax.jit(capture(fn))`, `jax.vmap(capture(fn))` (values batched as the
  outputs are), `jax.grad(capture(loss), has_aux=True)` (the intermediates
  are the aux output). A transformation applied inside `fn` is another
  matter: values made inside it cannot leave it, and capturing one is an
  error that says so. A `Repeat`'s layers are the exception: each path
  inside a layer gets the entries of one layer's run, each stacked along a
  leading axis of `num_layers` (as the layer's params are; `(outer, inner)`
  for a Repeat inside a Repeat). A capture inside another takes the values
  of the calls made in it; the outer one sees them as its outputs.

  Args:
    fn: the function to run; a module itself qualifies.
    modules: which module calls to record the outputs of (see above).

  Returns:
    A function of `fn`'s arguments returning `(fn's outputs, intermediates)`.

  Raises:
    TypeError, ValueError: `modules` is none of the forms above (at once);
      a module sows under the name of one of its child nodes, or a value
      comes from inside a transformation of `fn` (when the function runs).

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.graph import Graph, Module
    >>> from blox.params import Params
    >>> class Double(Module):
    ...   def __call__(self, params, x):
    ...     self.sow('norm', jnp.linalg.norm(x))
    ...     return 2 * x, params
    >>> double = Double(Graph('net').child('double'))
    >>> (y, params), seen = capture(double)(Params(), jnp.array([3.0, 4.0]))
    >>> seen
    {('net', 'double', 'norm'): (Array(5., dtype=float32),)}
  """
  if not callable(fn):
    raise TypeError(
        f"capture(fn, ...): fn must be callable, got {type(fn).__name__}; pass the"
        " model or a function that calls it."
    )
  select = _selector(modules)

  @functools.wraps(fn, updated=())  # fn's name and signature; a module's attributes stay its own
  def captured(*args: Any, **kwargs: Any) -> tuple[Any, dict[Path, tuple[Any, ...]]]:
    collector = Collector(select, _recorder_of(CALLS.get()))
    token = CALLS.set(collector)
    try:
      outputs = fn(*args, **kwargs)
    finally:
      CALLS.reset(token)
    return outputs, collector.values

  return captured


def _recorder_of(observer: Observer | None) -> Recorder | None:
  if isinstance(observer, Collector):
    return observer.recorder
  return observer if isinstance(observer, Recorder) else None


@contextlib.contextmanager
def collecting() -> Iterator[Collector]:
  """For a layer stack's scan body: collects the values of the calls made in
  the block, in a collector of the body's trace, when a capture is active.

  The body returns `inner.values` as a scan output (`{}` when no capture is
  active: no output at all), and the code after the scan passes the stacked
  result to `emit_stacked`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from blox.graph import Graph, Module, capture
    >>> from blox.graph._inspect._capture import collecting, emit_stacked
    >>> from blox.params import Params
    >>> class Half(Module):
    ...   def __call__(self, params, x):
    ...     self.sow('seen', x)
    ...     return x / 2, params
    >>> half = Half(Graph('net').child('half'))
    >>> def body(x, _):
    ...   with collecting() as inner:
    ...     x, _ = half(Params(), x)
    ...   return x, inner.values
    >>> def run(x):
    ...   x, stacked = jax.lax.scan(body, x, length=3)
    ...   emit_stacked(stacked)
    ...   return x
    >>> y, seen = capture(run)(jnp.array(8.0))
    >>> seen[('net', 'half', 'seen')][0].tolist()  # one entry, stacked over 3 runs
    [8.0, 4.0, 2.0]
  """
  observer = CALLS.get()
  if not isinstance(observer, Collector):
    yield Collector(_never, None)  # detached: nothing reaches it, its values stay {}
    return
  inner = Collector(observer.select, observer.recorder)
  token = CALLS.set(inner)
  try:
    yield inner
  finally:
    CALLS.reset(token)


def emit_stacked(values: Mapping[Path, tuple[Any, ...]]) -> None:
  """Hands the values a scan's body collected (`collecting`), stacked by the
  scan, to the active capture: each path's entries are appended as they are,
  with their leading layer axis.

  Raises:
    RuntimeError: `values` is not empty but no capture is active (call it
      in the context the scan ran in, right after the scan).
  """
  if not values:
    return
  observer = CALLS.get()
  if not isinstance(observer, Collector):
    raise RuntimeError(
        f"emit_stacked: no capture is active to take the values of {len(values)} paths"
        f" ({'/'.join(next(iter(values)))!r}, ...); call it right after the scan whose"
        " body entered collecting(), in the same context."
    )
  for path, entries in values.items():
    observer.take(path, list(entries), f"a layer stack handed out {'/'.join(path)!r}")
