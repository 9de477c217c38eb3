"""`tabulate`: a table of the module calls a function makes, run abstractly.

`fn(params, *args, **kwargs)` is traced with `jax.eval_shape` (nothing is
computed or allocated) while the module calls are recorded
(`blox.graph._calls`); each becomes a row, nested under the call it was made
in: module type and configuration, input and output shapes and dtypes, the
compute dtype, the params it read or created (each param on a line of its
own, with its sharding), and FLOPs. `blox.graph._tabulate_table` lays the
rows out.

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

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from blox.graph._calls import Call, abstract, not_recording, recording
from blox.graph._display import Table
from blox.graph._repeat import Repeat
from blox.graph._summary_rows import compute_dtype_name, sharding_text
from blox.graph._tabulate_table import CallLine, ParamLine, render_calls
from blox.params import Param, Params, Path, measure, split_arrays

__all__ = ["tabulate"]

_SHORT_DTYPES = {
    "float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint64": "u64", "uint32": "u32", "uint16": "u16", "uint8": "u8",
}


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
  one layer's numbers; the `Repeat`'s line counts all N. Likewise, a jitted
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


def _layers(call: Call) -> int:
  """How often each call made inside `call` runs per run of `call`."""
  return call.module.num_layers if isinstance(call.module, Repeat) else 1


def _flops_of(call: Call, flops: dict[int, int | None]) -> int | None:
  if not call.children:
    return flops[id(call)]
  inner = _sum_flops(_flops_of(child, flops) for child in call.children)
  return None if inner is None else inner * _layers(call)


def _sum_flops(values: Iterable[int | None]) -> int | None:
  total = 0
  for value in values:
    if value is None:
      return None
    total += value
  return total


def _footprint(call: Call) -> dict[Path, tuple[int, int]]:
  """`(count, bytes)` of each param `call` and the calls inside it use; a
  Repeat's layer params counted once per layer."""
  used = {path: measure(param.value)[2:] for path, param in {**call.reads, **call.created}.items()}
  for child in call.children:
    used.update(_footprint(child))
  if isinstance(call.module, Repeat):
    prefix, layers = call.module.layer_path, call.module.num_layers
    used = {
        path: (count * layers, nbytes * layers) if path[: len(prefix)] == prefix else (count, nbytes)
        for path, (count, nbytes) in used.items()
    }
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
  yield CallLine(
      depth=call.depth, name=name, label=repr(call.module),
      repeat=_layers(parent) if parent is not None and _layers(parent) > 1 else None,
      inputs=_inputs_text(call.args, call.kwargs), outputs=_tree_text(call.outputs),
      compute=_compute(call), count=count, nbytes=nbytes, flops=_flops_of(call, flops),
      params=tuple(params),
  )
  for child in call.children:
    yield from _lines(child, call, flops)


def _param_line(call: Call, path: Path, param: Param, use: str) -> ParamLine:
  own = call.module.graph.path
  name = "/".join(path[len(own):] if path[: len(own)] == own else path)
  shape, dtype, count, nbytes = measure(param.value)
  return ParamLine(name, _array_text(shape, dtype), sharding_text(param), use, count, nbytes)


def _compute(call: Call) -> str:
  known = compute_dtype_name(call.module)
  if known is not None:
    return _short(known)
  for leaf in jax.tree.leaves(call.outputs):
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.inexact):
      return _short(str(dtype))
  return ""


def _short(dtype: str) -> str:
  return _SHORT_DTYPES.get(dtype, dtype)


def _array_text(shape: tuple[int, ...], dtype: Any) -> str:
  return f"{_short(str(dtype))}[{','.join(map(str, shape))}]"


def _tree_text(tree: Any) -> str:
  """`f32[2,3]` for an array; `Type(leaf, ...)`, `(...)`, `[...]`, `{k: ...}` for pytrees."""
  if isinstance(tree, jax.ShapeDtypeStruct):
    return _array_text(tuple(tree.shape), tree.dtype)
  if tree is None:
    return "None"
  if isinstance(tree, dict):
    return "{" + ", ".join(f"{k}: {_tree_text(v)}" for k, v in tree.items()) + "}"
  if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
    inner = ", ".join(_tree_text(v) for v in tree)
    return f"[{inner}]" if isinstance(tree, list) else f"({inner})"
  children, _ = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is not tree)
  if len(children) == 1 and children[0] is tree:  # a leaf: a static value
    text = _short_repr(tree)
    return text if len(text) <= 24 else text[:21] + "..."
  return f"{type(tree).__name__}({', '.join(_tree_text(c) for c in children)})"


def _inputs_text(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
  parts = [_tree_text(a) for a in args] + [f"{k}={_tree_text(v)}" for k, v in kwargs.items()]
  return ", ".join(parts)



def _short_repr(value: Any) -> str:
  """A static argument: modules by type, other values by repr."""
  if hasattr(value, "where") and hasattr(value, "graph"):
    return type(value).__name__
  return repr(value)
