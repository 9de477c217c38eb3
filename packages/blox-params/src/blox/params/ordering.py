"""The one order in which every `Params` lists its paths: creation order.

Training steps take `Params` apart (`split`) and put them back together
(`merge`). If the result listed its paths in another order, its pytree
structure would differ from the input's: `jax.jit` would retrace, and
`out_shardings` built from the input would no longer match. So the order must
be a function of the set of paths alone.

The order used is the order in which paths were first seen by this process
(created by a module, set by hand, or loaded). It reads like the model's code
(a kernel before its bias) and `split`/`merge` round-trip it exactly.

Example:
  >>> rank(('net', 'kernel')) < rank(('net', 'bias'))  # on first sight
  True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

Path = tuple[str, ...]

_ranks: dict[Path, int] = {}
_next_rank = itertools.count()


def rank(path: Path) -> int:
  """The position of `path` in the process-wide creation order."""
  found = _ranks.get(path)
  if found is None:
    found = _ranks.setdefault(path, next(_next_rank))
  return found


def in_order(paths: Iterable[Path]) -> list[Path]:
  """`paths` sorted into creation order."""
  return sorted(paths, key=rank)
