"""`tabulate`: a table of the module calls a function makes, run abstractly.

`fn(params, *args, **kwargs)` is traced with `jax.eval_shape` (nothing is
computed or allocated) while the module calls are recorded
(`blox.graph._inspect._calls`); each becomes a row, nested under the call it was made
in: module type and configuration, input and output shapes and dtypes, the
compute dtype, the params it read or created (each param on a line of its
own, with its sharding), and FLOPs. `blox.graph._inspect._tabulate_rows`
lays the rows out.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from blox.graph import Graph, Module, tabulate
  >>> from blox.params import Params
  >>> class Dense(Module):
  ...   def __call__(self, params, x):
  ...     w, params = self.get_param(params, 'w', (x.shape[-1], 2), init=jax.nn.initializers.ones)
  ...     return x @ w, params
  >>> dense = Dense(Graph('net').child('dense'))
  >>> _, params = dense(Params(), jnp.ones((4, 3)))
  >>> print(tabulate(dense, params, jnp.ones((4, 3))))
  1 module calls; 1 params used, 6 (24 B)
  call / param        in / shape  out / sharding  compute  params  bytes  flops
  -----------------------------------------------------------------------------
  net/dense  Dense()  f32[4,3]    f32[4,2]        f32           6     24     48
    w (read)          f32[3,2]                                  6     24
  -----------------------------------------------------------------------------
  module calls (Repeat layers x their count)                    6     24     48
  whole function, compiled (XLA)                                             48
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from blox.graph._inspect._calls import Call, abstract, not_recording, recording
from blox.graph._inspect._display import Table
from blox.graph._inspect._summary_rows import compute_dtype_name, sharding_text
from blox.graph._inspect._tabulate_rows import (
    CallLine,
    ParamLine,
    array_text,
    inputs_text,
    render_calls,
    short_dtype,
    tree_text,
)
from blox.graph._stacking import stacked_sizes
from blox.params import Param, Params, Path, measure, split_arrays

__all__ = ["tabulate"]


def tabulate(
    fn: Callable[..., Any], params: Params, *args: Any, width: int = 100, **kwargs: Any
) -> Table:
  """A table of the module calls of `fn(params, *args, **kwargs)`, run abstractly.

  The call runs under `jax.eval_shape`: nothing is computed or allocated,
  and `args` may be arrays or `jax.ShapeDtypeStruct`s (other arguments are
  passed as they are). Every call of a `Module`'s `__call__` or public
  method that takes params first and returns `(output, params)` is a row,
  nested under the call it was made in (a module calling its own methods is
  one call, and drawing a key from an `Rng` is part of the call that draws
  it): its path and `repr` (type and configuration), its inputs and
  outputs (`bf16[16,32]`, pytrees as `KVCache(...)`), its compute dtype
  (the module's `dtype` or policy, as in `summary`, else its first floating
  output's dtype), the params it and the calls inside it read or created
  (element count and bytes), and FLOPs. Below each call, one line per param
  the call itself read (`kernel (read)`) or created (`kernel (new)`): its
  name below the module, shape and dtype, and sharding metadata.

  Repeat. The layer of a `Repeat` runs in a `jax.lax.scan`, which traces it
  once: its calls show once, the layer's line marked `x N` (N layers), with
  one layer's numbers; the `Repeat`'s line counts all N. This is read from
  the params' `STACKED` metadata (a call that sees a param with N fewer
  layers stacked than its caller does runs N times), so a layer that uses
  no param shows without its count. Likewise, a jitted
  function that `fn` calls twice with the same input shapes runs its Python
  once, so its second call shows no rows (and a jitted `fn` traced before
  for the same shapes none at all: pass the function before `jax.jit`).

  FLOPs. Estimated with XLA's cost analysis (on the default backend) in two
  ways, both shown. (1) Per call: each call without module calls inside is
  lowered and compiled alone on its recorded abstract inputs,
  `jax.jit(method).lower(...).compile().cost_analysis()['flops']`; a call
  with calls inside shows the sum of theirs (a `Repeat`'s times its number of
  layers), so what a module computes around its inner calls (a residual
  addition) is in no call's count; `?` where a call cannot be lowered alone
  (it uses a named axis of an enclosing `vmap`, say). XLA counts the body of
  a loop once, so a module that loops over time inside (`dynamic_scan`)
  counts one step. The `module calls` line sums the outermost calls.
  (2) Whole function: `jax.jit(fn).lower(params, *args,
  **kwargs).compile().cost_analysis()['flops']`, the `whole function` line,
  everything `fn` computes but each loop body (each `Repeat`) once.

  Args:
    fn: the function to inspect, called as `fn(params, *args, **kwargs)`;
      a module itself qualifies.
    params: the params to pass (concrete or abstract; empty and unlocked to
      tabulate initialisation).
    *args: further positional arguments of `fn`.
    width: the longest line allowed, in characters (text cells wrap or are
      cut with `...` to fit; numbers never are). Reserved: a `width`
      argument of `fn` needs a wrapper (`lambda p, x: fn(p, x, width=3)`).
    **kwargs: keyword arguments of `fn`.

  Returns:
    The table as a `Table`: a `str` that Jupyter displays as HTML.

  Raises:
    TypeError: `fn` is not callable or `params` is not a `Params`.
    ValueError: `fn` made no module call with the params.
  """
  if not callable(fn):
    raise TypeError(
        f"tabulate(fn, params, ...): fn must be callable, got {type(fn).__name__};"
        " pass the model or a function of (params, *inputs)."
    )
  if not isinstance(params, Params):
    raise TypeError(
        f"tabulate(fn, params, ...): params must be a blox Params, got"
        f" {type(params).__name__}; pass the Params the model was initialised with"
        " (or Params() to tabulate initialisation)."
    )
  call, traced = _traced_call(fn, args, kwargs)
  with recording() as recorder:
    jax.eval_shape(call, params, traced)
  if not recorder.calls:
    used = "read params but" if recorder.outside_reads else "read no param and"
    raise ValueError(
        f"tabulate: {getattr(fn, '__name__', type(fn).__name__)}(params, ...) {used}"
        " made no module call with the params it was given; tabulate shows module"
        " calls, so pass the model (or a function that calls it with these params),"
        " e.g. tabulate(model, params, x). A jitted fn traced before for the same"
        " shapes runs no Python at all: pass the function before jax.jit."
    )
  try:
    whole = _flops(call, abstract(params), abstract(traced))
  except Exception:  # noqa: BLE001  # outputs XLA cannot compile (strings, say): shown '?'
    whole = None
  flops: dict[int, int | None] = {}
  for leaf in _leaves(recorder.calls):
    flops[id(leaf)] = _call_flops(leaf)
  lines = [line for root in recorder.calls for line in _lines(root, None, flops)]
  footprint = _footprint_of(recorder.calls)
  count, nbytes = _sum(footprint.values())
  total_flops = _sum_flops(_flops_of(root, flops) for root in recorder.calls)
  return render_calls(lines, width, used=len(footprint), totals=(count, nbytes, total_flops),
                      whole=whole)


def _traced_call(
    fn: Callable[..., Any], args: Any, kwargs: Any
) -> tuple[Callable[[Params, list[Any]], Any], list[Any]]:
  """`fn` as a function of `(params, arrays)`; other arguments stay static."""
  arrays, rebuild = split_arrays(args, kwargs)

  def call(params: Params, traced: list[Any]) -> Any:
    call_args, call_kwargs = rebuild(traced)
    return fn(params, *call_args, **call_kwargs)

  return call, arrays


def _flops(call: Callable[..., Any], params: Params, arrays: list[Any]) -> int | None:
  """XLA's FLOP count of `call(params, arrays)`, compiled; None when XLA has none."""
  with not_recording():
    analysis = jax.jit(call).lower(params, arrays).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # one entry per computation, older jax
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return int(analysis["flops"])


def _call_flops(call: Call) -> int | None:
  """The FLOPs of one recorded call lowered alone; None when it cannot be."""
  run, arrays = _traced_call(getattr(call.module, call.method), call.args, call.kwargs)
  try:
    return _flops(run, call.params, arrays)
  except Exception:  # noqa: BLE001  # an estimate: a call that needs its context shows '?'
    return None


def _leaves(calls: list[Call]) -> Iterator[Call]:
  for call in calls:
    if call.children:
      yield from _leaves(call.children)
    else:
      yield call


def _used(call: Call) -> Iterator[Path]:
  """The paths `call` and the calls inside it read or created."""
  yield from call.reads
  yield from call.created
  for child in call.children:
    yield from _used(child)


def _runs(call: Call, child: Call) -> int:
  """How often `child` runs per run of `call`, from the params' `STACKED`
  metadata: a layer stack's scan hands its layer each param with the
  outermost stacked axis dropped, one run per layer."""
  for path in _used(child):
    outer, inner = call.seen(path), child.seen(path)
    if outer is None or inner is None:
      continue
    around, within = stacked_sizes(outer.metadata), stacked_sizes(inner.metadata)
    if len(around) > len(within):
      return math.prod(around[: len(around) - len(within)])
  return 1


def _flops_of(call: Call, flops: dict[int, int | None]) -> int | None:
  if not call.children:
    return flops[id(call)]
  total = 0
  for child in call.children:
    inner = _flops_of(child, flops)
    if inner is None:
      return None
    total += inner * _runs(call, child)
  return total


def _sum_flops(values: Iterable[int | None]) -> int | None:
  total = 0
  for value in values:
    if value is None:
      return None
    total += value
  return total


def _footprint(call: Call) -> dict[Path, tuple[int, int]]:
  """`(count, bytes)` of each param `call` and the calls inside it use, as
  `call`'s frame holds it: a layer stack's params with all their layers."""
  used = {path: measure(param.value)[2:] for path, param in {**call.reads, **call.created}.items()}
  for child in call.children:
    for path, size in _footprint(child).items():
      mine = call.seen(path)
      used[path] = size if mine is None else measure(mine.value)[2:]
  return used


def _footprint_of(calls: list[Call]) -> dict[Path, tuple[int, int]]:
  used: dict[Path, tuple[int, int]] = {}
  for call in calls:
    used.update(_footprint(call))
  return used


def _sum(sizes: Any) -> tuple[int, int]:
  count = nbytes = 0
  for c, b in sizes:
    count += c
    nbytes += b
  return count, nbytes


def _lines(call: Call, parent: Call | None, flops: dict[int, int | None]) -> Iterator[CallLine]:
  path = call.module.graph.path
  base = parent.module.graph.path if parent is not None else ()
  name = "/".join(path[len(base):] if path[: len(base)] == base and path != base else path)
  if call.method != "__call__":
    name = f"{name}.{call.method}"
  count, nbytes = _sum(_footprint(call).values())
  params = [
      _param_line(call, p, param, "new" if p in call.created else "read")
      for p, param in {**call.reads, **call.created}.items()
  ]
  runs = _runs(parent, call) if parent is not None else 1
  yield CallLine(
      depth=call.depth, name=name, label=repr(call.module), repeat=runs if runs > 1 else None,
      inputs=inputs_text(call.args, call.kwargs), outputs=tree_text(call.outputs),
      compute=_compute(call), count=count, nbytes=nbytes, flops=_flops_of(call, flops),
      params=tuple(params),
  )
  for child in call.children:
    yield from _lines(child, call, flops)


def _param_line(call: Call, path: Path, param: Param, use: str) -> ParamLine:
  own = call.module.graph.path
  name = "/".join(path[len(own):] if path[: len(own)] == own else path)
  shape, dtype, count, nbytes = measure(param.value)
  return ParamLine(name, array_text(shape, dtype), sharding_text(param), use, count, nbytes)


def _compute(call: Call) -> str:
  known = compute_dtype_name(call.module)
  if known is not None:
    return short_dtype(known)
  for leaf in jax.tree.leaves(call.outputs):
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.inexact):
      return short_dtype(str(dtype))
  return ""
