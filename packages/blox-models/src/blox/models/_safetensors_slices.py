"""Which elements of a stored tensor an index selects, as runs of consecutive ones.

A tensor is stored row-major. An index of ints and slices (numpy's basic
indexing) selects a grid of elements; the innermost axes the selection keeps
whole, plus one partly kept axis, make runs of consecutive elements, one run
per point of the grid of the other (outer) axes. A reader reads each run
straight into its place in the result: a leading-axis slice or the whole
tensor is one run, a column slice one run per row.

Example:
  >>> rows = select((slice(1, 3),), (4, 5))  # rows 1 and 2: one run
  >>> rows.shape, rows.runs, rows.run, rows.starts().tolist()
  ((2, 5), 1, 10, [5])
  >>> column = select((slice(None), -2), (3, 4))  # a column: a run per row
  >>> column.shape, column.run, column.starts().tolist()
  ((3,), 1, [2, 6, 10])
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["Index", "Selection", "check_index", "select"]

Index = tuple[slice | int, ...]


class Selection(NamedTuple):
  """What an index selects from a row-major tensor, in elements.

  `shape` is the result's; the result is `starts()` runs of `run` consecutive
  elements each, in order; `outer` holds the (count, stride) of each axis
  between runs, outermost first; `offset` is the first element selected.
  """

  shape: tuple[int, ...]
  offset: int
  outer: tuple[tuple[int, int], ...]
  run: int

  @property
  def runs(self) -> int:
    """How many runs make the result."""
    return math.prod(count for count, _ in self.outer)

  def starts(self) -> npt.NDArray[np.int64]:
    """The first element of each run, in the result's (row-major) order."""
    starts = np.full((), self.offset, np.int64)
    for count, stride in self.outer:
      starts = starts[..., None] + np.arange(count, dtype=np.int64) * stride
    return starts.reshape(-1)


def select(key: Index, shape: tuple[int, ...]) -> Selection:
  """The runs that `key` (checked by `check_index`) selects from `shape`."""
  strides = [math.prod(shape[axis + 1:]) for axis in range(len(shape))]
  offset = 0
  axes: list[tuple[int, int]] = []  # (count, stride) of each axis the result keeps
  for axis, size in enumerate(shape):
    item = key[axis] if axis < len(key) else slice(None)
    if isinstance(item, int):
      offset += (item % size) * strides[axis]
    else:
      start, stop, step = item.indices(size)
      count = len(range(start, stop, step))
      offset += start * strides[axis] if count else 0
      axes.append((count, step * strides[axis]))
  result = tuple(count for count, _ in axes)
  run = 1
  # An innermost axis extends the run when its elements follow the run's
  # end, or when it keeps one element.
  while axes and (axes[-1][0] == 1 or axes[-1][1] == run):
    run *= axes.pop()[0]
  return Selection(result, offset, tuple(axes), run)


def check_index(index: object, shape: tuple[int, ...], what: str) -> Index:
  """Checks `index` against `shape`; returns it with numpy ints made ints.

  Raises:
    TypeError: `index` is not a tuple of ints and slices of ints.
    IndexError: it has more entries than `shape` axes, or an int past its axis.
    ValueError: a slice has step 0.
  """
  if index is None:
    return ()
  if not isinstance(index, tuple):
    raise TypeError(
        f"The index into {what} must be a tuple of ints and slices, one per"
        f" leading axis, like (slice(0, 2),) or (0, slice(None)); got {index!r}."
    )
  if len(index) > len(shape):
    raise IndexError(
        f"The index {index!r} has {len(index)} entries, but {what} has shape"
        f" {shape}: {len(shape)} axes."
    )
  checked: list[slice | int] = []
  for axis, (item, size) in enumerate(zip(index, shape)):
    if isinstance(item, slice):
      parts = (item.start, item.stop, item.step)
      if not all(part is None or _is_int(part) for part in parts):
        raise TypeError(f"The slice {item!r} into axis {axis} of {what} must hold ints or None.")
      start, stop, step = (None if part is None else operator.index(part) for part in parts)
      if step == 0:
        raise ValueError(f"The slice {item!r} into axis {axis} of {what} has step 0.")
      checked.append(slice(start, stop, step))
    elif _is_int(item):
      position = operator.index(item)
      if not -size <= position < size:
        raise IndexError(
            f"Index {position} is out of range for axis {axis} of {what}, of size {size}."
        )
      checked.append(position)
    else:
      raise TypeError(
          f"The index into {what} holds {item!r} at axis {axis}; only ints and"
          " slices are read from disk (no Ellipsis, None or arrays): index the"
          " array read instead."
      )
  return tuple(checked)


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
