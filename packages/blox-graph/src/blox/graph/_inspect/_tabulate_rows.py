"""`tabulate`'s rows: module calls, nested, and the text of their values.

A `CallLine` per call (indented by its depth, its param lines below it) in
seven columns: call or param (`kernel (read)`, `kernel (new)`), inputs or
shape, outputs or sharding, compute dtype, element count, bytes, FLOPs. The
headings and text columns wrap (at most a few lines, then `...`) so that
every line fits the width; numbers are never cut. The layout itself is the
renderer `summary` uses too (`blox.graph._inspect._table`).

Example:
  >>> line = CallLine(0, 'net', 'Dense()', None, 'f32[2]', 'f32[3]', 'f32', 6, 24, 12,
  ...                 (ParamLine('w', 'f32[2,3]', '', 'read', 6, 24),))
  >>> print(render_calls([line], 80, used=1, totals=(6, 24, 12), whole=12))
  1 module calls; 1 params used, 6 (24 B)
  call / param  in / shape  out / sharding  compute  params  bytes  flops
  -----------------------------------------------------------------------
  net  Dense()  f32[2]      f32[3]          f32           6     24     12
    w (read)    f32[2,3]                                  6     24
  -----------------------------------------------------------------------
  module calls (Repeat layers x their count)              6     24     12
  whole function, compiled (XLA)                                       12
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax

from blox.graph._inspect._display import Table
from blox.graph._inspect._table import GAP, Column, Label, Row, human_bytes, number, render

__all__ = ["CallLine", "ParamLine", "array_text", "inputs_text", "render_calls", "short_dtype", "tree_text"]

# The call column wraps worst (paths and configurations), so it is cut half
# as eagerly as the inputs and outputs; the compute dtype and numbers never are.
_COLUMNS = (
    Column("call / param", floor=16, weight=0.5, lines=3),
    Column("in / shape", floor=10, lines=3),
    Column("out / sharding", floor=10, lines=3),
    Column("compute"),
    Column("params", numeric=True),
    Column("bytes", numeric=True),
    Column("flops", numeric=True),
)
_TOTAL = "module calls (Repeat layers x their count)"
_WHOLE = "whole function, compiled (XLA)"
_SHORT_DTYPES = {
    "float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint64": "u64", "uint32": "u32", "uint16": "u16", "uint8": "u8",
}


@dataclass(frozen=True)
class ParamLine:
  """A param a call read or created: its name below the module, shape, sharding."""

  name: str
  shape: str
  sharding: str
  use: str
  count: int
  nbytes: int


@dataclass(frozen=True)
class CallLine:
  """One module call: `repeat` is N for a call that runs N times per run of
  the call it is made in (a `Repeat`'s layer, shown `x N`)."""

  depth: int
  name: str
  label: str
  repeat: int | None
  inputs: str
  outputs: str
  compute: str
  count: int
  nbytes: int
  flops: int | None
  params: tuple[ParamLine, ...] = ()


def _call_row(line: CallLine) -> Row:
  repeat = f" x{line.repeat}" if line.repeat is not None else ""
  return Row(line.depth, (
      f"{line.name}{repeat}{GAP}{line.label}", line.inputs, line.outputs, line.compute,
      number(line.count), number(line.nbytes), number(line.flops),
  ))


def _param_row(depth: int, param: ParamLine) -> Row:
  return Row(depth, (f"{param.name} ({param.use})", param.shape, param.sharding, "",
                     number(param.count), number(param.nbytes), ""))


def render_calls(
    lines: Sequence[CallLine],
    width: int,
    *,
    used: int,
    totals: tuple[int, int, int | None],
    whole: int | None,
) -> Table:
  """The table of `lines`, each text line at most `width` long where numbers allow.

  Args:
    lines: the calls, in order, each with its params.
    width: the longest line allowed, in characters.
    used: how many params the calls read or created.
    totals: `(count, bytes, FLOPs)` of the outermost calls together.
    whole: the whole function's FLOPs, compiled.
  """
  rows: list[Row] = []
  for line in lines:
    rows.append(_call_row(line))
    rows.extend(_param_row(line.depth + 1, p) for p in line.params)
  count, nbytes, flops = totals
  footer = [
      Row(0, (_TOTAL, "", "", "", number(count), number(nbytes), number(flops)), Label(_TOTAL)),
      Row(0, (_WHOLE, "", "", "", "", "", number(whole)), Label(_WHOLE)),
  ]
  title = f"{len(lines):,} module calls; {used:,} params used, {count:,} ({human_bytes(nbytes)})"
  return render(_COLUMNS, title, rows, footer, width)


def short_dtype(dtype: str) -> str:
  """`f32` for float32, and so on; other dtypes by name."""
  return _SHORT_DTYPES.get(dtype, dtype)


def array_text(shape: tuple[int, ...], dtype: Any, spec: tuple[Any, ...] = ()) -> str:
  """`f32[2,3]`; with a sharding spec, its mesh axes as jax.typeof shows them.

  Example:
    >>> array_text((8, 4), 'float32', ('data', None))
    'f32[8@data,4]'
  """
  def dim(index: int, size: int) -> str:
    entry = spec[index] if index < len(spec) else None
    if entry is None:
      return str(size)
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    return f"{size}@{'+'.join(names) if len(names) == 1 else '(' + ','.join(names) + ')'}"

  return f"{short_dtype(str(dtype))}[{','.join(dim(i, n) for i, n in enumerate(shape))}]"


def tree_text(tree: Any) -> str:
  """`f32[2,3]` for an array; `Type(leaf, ...)`, `(...)`, `[...]`, `{k: ...}` for pytrees."""
  if isinstance(tree, jax.ShapeDtypeStruct):
    spec = tuple(getattr(getattr(tree, "sharding", None), "spec", ()) or ())
    return array_text(tuple(tree.shape), tree.dtype, spec)
  if tree is None:
    return "None"
  if isinstance(tree, dict):
    return "{" + ", ".join(f"{k}: {tree_text(v)}" for k, v in tree.items()) + "}"
  if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
    inner = ", ".join(tree_text(v) for v in tree)
    return f"[{inner}]" if isinstance(tree, list) else f"({inner})"
  children, _ = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is not tree)
  if len(children) == 1 and children[0] is tree:  # a leaf: a static value
    text = _short_repr(tree)
    return text if len(text) <= 24 else text[:21] + "..."
  return f"{type(tree).__name__}({', '.join(tree_text(c) for c in children)})"


def inputs_text(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
  """A call's arguments after its params: `f32[8,16], is_training=True`."""
  parts = [tree_text(a) for a in args] + [f"{k}={tree_text(v)}" for k, v in kwargs.items()]
  return ", ".join(parts)


def _short_repr(value: Any) -> str:
  """A static argument: modules by type, other values by repr."""
  if hasattr(value, "where") and hasattr(value, "graph"):
    return type(value).__name__
  return repr(value)
