"""Argument checks shared by the layers that slide a window over spatial axes.

Convolutions and pools take inputs laid out as `(*batch, *spatial, channels)`
and per-spatial-axis arguments (window sizes, strides, dilations, padding).
These helpers turn the user's arguments into one tuple per spatial axis and
raise errors that say which argument was wrong and where.

Example:
  >>> as_tuple(2, 3, 'strides', 'Conv')
  (2, 2, 2)
  >>> normalize_padding('same', 2, 'Conv', allowed=('SAME', 'VALID'))
  'SAME'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

__all__ = ["Padding", "as_size_tuple", "as_tuple", "normalize_padding"]

# A padding mode ('SAME', 'VALID', ...) or one (low, high) pair per spatial axis.
Padding = Union[str, Sequence[tuple[int, int]]]


def _is_int(value: object) -> bool:
  # bool is an int subclass, but `strides=True` is surely a mistake.
  return isinstance(value, int) and not isinstance(value, bool)


def _positive_ints(value: object) -> tuple[int, ...]:
  """`value` as a tuple of positive ints, or `()` when it is anything else."""
  if not isinstance(value, Sequence) or isinstance(value, str):
    return ()
  ints = tuple(v for v in value if _is_int(v) and v > 0)
  return ints if len(ints) == len(value) else ()


def as_size_tuple(value: object, name: str, where: str) -> tuple[int, ...]:
  """A non-empty sequence of positive ints (a kernel or window shape) as a tuple.

  An int is refused: it would not say how many spatial axes there are.
  """
  if _is_int(value) or not isinstance(value, Sequence) or isinstance(value, str):
    raise TypeError(
        f"{where}: {name} must be a sequence with one size per spatial axis, such"
        f" as (3,) for 1-D or (3, 3) for 2-D inputs; got {value!r}."
    )
  sizes = _positive_ints(value)
  if not sizes:
    raise ValueError(
        f"{where}: {name} must hold at least one positive int, got {value!r}."
    )
  return sizes


def as_tuple(value: object, n: int, name: str, where: str) -> tuple[int, ...]:
  """An int (used for every spatial axis) or `n` positive ints, as a tuple."""
  values = _positive_ints((value,) * n if _is_int(value) else value)
  if len(values) != n:
    raise ValueError(
        f"{where}: {name} must be a positive int or {n} positive ints (one per"
        f" spatial axis), got {value!r}."
    )
  return values


def normalize_padding(
    padding: object, n: int, where: str, allowed: tuple[str, ...]
) -> str | tuple[tuple[int, int], ...]:
  """An upper-case mode from `allowed`, or `n` (low, high) pairs of ints."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode not in allowed:
      raise ValueError(
          f"{where}: padding must be one of {', '.join(map(repr, allowed))} or"
          f" {n} (low, high) pairs, got {padding!r}."
      )
    return mode
  pairs: list[tuple[int, int]] = []
  if isinstance(padding, Sequence):
    for pair in padding:
      if not (isinstance(pair, Sequence) and len(pair) == 2 and all(map(_is_int, pair))):
        break
      pairs.append((pair[0], pair[1]))
    else:
      if len(pairs) == n:
        return tuple(pairs)
  raise ValueError(
      f"{where}: explicit padding must be {n} (low, high) pairs of ints, one per"
      f" spatial axis, such as {((1, 1),) * n!r}; got {padding!r}."
  )
