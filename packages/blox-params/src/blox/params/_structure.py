"""The static part of a `Params` (its pytree aux data), and the order rule.

A `Structure` holds everything of a `Params` except the values: the paths,
one rank per path, the trainable flags, the metadata and the locked flag.
`jax.jit` hashes and compares it on every call, so two containers share a
compiled function exactly when their structures are equal.

The order of paths: creation order, carried by ranks. This is the one place
the rule is written down; every operation of `Params` follows it.

- Each entry carries a rank, an int. Within a structure the ranks are unique
  and the entries are listed by increasing rank.
- A container built from given entries (`Params({...})`,
  `Params.from_state_dict(state)` without a template, `load(path)` without
  `like`) gets ranks 0..n-1 in the given order (dict order, file order).
- Creating a param (`get_or_create`, or `params[path] = ...` for a new path)
  appends it with rank max+1. Changing an existing param (`set`,
  `params[path] = ...`, `map`, locking) keeps every rank.
- `split` keeps each entry's rank, so each half lists its paths in the order
  of the whole.
- `a.merge(b)` lists the union by rank. A path in both keeps `a`'s rank and
  takes `b`'s value, flag and metadata ("other wins"). When the ranks of the
  union are all distinct (the halves of one split, or sub-splits of a half)
  they are kept as they are, so `t.merge(r)` gives back exactly the structure
  that was split: a train step does not retrace and its `out_shardings` keep
  matching. When ranks collide (unrelated containers), entries are ordered
  by `(rank, side)` (`a`'s entry first on equal ranks) and renumbered 0..n-1,
  so ranks stay unique; the result depends only on the two inputs.
- Copies and pickles keep the structure, ranks included: a copy is the same
  container and hits the same jit cache entry.

Ranks are part of equality, the hash and the repr (one line per path, which
JAX prints and diffs when two structures differ).

Example:
  >>> a = fresh((('w',), ('b',)), (True, False), (EMPTY_METADATA,) * 2, False)
  >>> a.ranks
  (0, 1)
  >>> t, r = a.select([0]), a.select([1])
  >>> merged, _ = merge(r, t)
  >>> merged == a
  True
  >>> print(merged)
  Params structure (locked=False, 2 paths):
    ('w',): rank=0, trainable=True, metadata={}
    ('b',): rank=1, trainable=False, metadata={}
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, TypeVar

import jax

from blox.params._metadata import EMPTY_METADATA, Metadata
from blox.params._paths import Path, path_text

__all__ = ["EMPTY", "EMPTY_METADATA", "Structure", "fresh", "merge", "take"]

_T = TypeVar("_T")


class Structure:
  """Paths, ranks, trainable flags, metadata and the locked flag of a `Params`.

  The hash is computed on first use and cached (creating params one by one
  builds many structures that are never hashed), and equality short-circuits
  on identity and on cached hashes that differ.
  """

  __slots__ = ("paths", "ranks", "trainable", "metadata", "locked", "_hash", "_index", "_keys")

  def __init__(
      self,
      paths: tuple[Path, ...],
      ranks: tuple[int, ...],
      trainable: tuple[bool, ...],
      metadata: tuple[Metadata, ...],
      locked: bool,
      index: dict[Path, int] | None = None,
  ) -> None:
    self.paths = paths
    self.ranks = ranks
    self.trainable = trainable
    self.metadata = metadata
    self.locked = locked
    self._hash: int | None = None
    # `index`, when given, must map exactly `paths` to their positions; it is
    # never mutated once a structure holds it, so structures may share it.
    self._index = index
    self._keys: tuple[jax.tree_util.DictKey, ...] | None = None

  def index(self) -> dict[Path, int]:
    """Path to position, built on first use. Never mutate the result."""
    if self._index is None:
      self._index = {path: i for i, path in enumerate(self.paths)}
    return self._index

  def key_entries(self) -> tuple[jax.tree_util.DictKey, ...]:
    """Pytree keys, one `DictKey(path)` per value, built on first use."""
    if self._keys is None:
      self._keys = tuple(jax.tree_util.DictKey(path) for path in self.paths)
    return self._keys

  def next_rank(self) -> int:
    """The rank a newly created param gets: one more than the largest."""
    return self.ranks[-1] + 1 if self.ranks else 0

  def with_locked(self, locked: bool) -> Structure:
    """This structure with the locked flag `locked` (itself if unchanged)."""
    if locked == self.locked:
      return self
    return Structure(
        self.paths, self.ranks, self.trainable, self.metadata, locked, self._index
    )

  def with_entry(self, position: int, trainable: bool, metadata: Metadata) -> Structure:
    """The entry at `position` with new static fields; rank and order kept."""
    flags = self.trainable[:position] + (trainable,) + self.trainable[position + 1 :]
    metas = self.metadata[:position] + (metadata,) + self.metadata[position + 1 :]
    return Structure(self.paths, self.ranks, flags, metas, self.locked, self._index)

  def appended(self, path: Path, trainable: bool, metadata: Metadata) -> Structure:
    """A new entry for `path` (not yet present) at the end, rank max+1."""
    # A dict copy plus one entry is far cheaper than hashing every path again,
    # and creating params one by one does this once per param.
    index = self.index().copy()
    index[path] = len(self.paths)
    return Structure(
        self.paths + (path,),
        self.ranks + (self.next_rank(),),
        self.trainable + (trainable,),
        self.metadata + (metadata,),
        self.locked,
        index,
    )

  def select(self, positions: Sequence[int]) -> Structure:
    """The entries at `positions` (increasing), each with its own rank."""
    return Structure(
        take(self.paths, positions),
        take(self.ranks, positions),
        take(self.trainable, positions),
        take(self.metadata, positions),
        self.locked,
    )

  def __reduce__(self) -> tuple[Any, ...]:
    # Only the fields: the cached hash depends on the process's string hash
    # seed, so it must be recomputed after unpickling.
    return (
        Structure,
        (self.paths, self.ranks, self.trainable, self.metadata, self.locked),
    )

  def __hash__(self) -> int:
    if self._hash is None:
      self._hash = hash(
          (self.paths, self.ranks, self.trainable, self.metadata, self.locked)
      )
    return self._hash

  def __eq__(self, other: object) -> bool:
    if self is other:
      return True
    if not isinstance(other, Structure):
      return NotImplemented
    if self._hash is not None and other._hash is not None and self._hash != other._hash:
      return False
    return (
        self.locked == other.locked
        and self.paths == other.paths
        and self.ranks == other.ranks
        and self.trainable == other.trainable
        and self.metadata == other.metadata
    )

  def __repr__(self) -> str:
    # One line per path with its static fields: JAX prints this repr when two
    # structures differ (tree_map, jit shardings) and diffs the two texts, so
    # the changed line names the path whose rank, flag or metadata differ.
    lines = [f"Params structure (locked={self.locked}, {len(self.paths)} paths):"]
    for path, rank, trainable, metadata in zip(
        self.paths, self.ranks, self.trainable, self.metadata
    ):
      lines.append(
          f"  {path_text(path)}: rank={rank}, trainable={trainable}, metadata={dict(metadata)!r}"
      )
    return "\n".join(lines)


EMPTY = Structure((), (), (), (), False)


def fresh(
    paths: Sequence[Path],
    trainable: Sequence[bool],
    metadata: Sequence[Metadata],
    locked: bool,
) -> Structure:
  """A structure for entries given in order: ranks 0..n-1 in that order."""
  return Structure(
      tuple(paths), tuple(range(len(paths))), tuple(trainable), tuple(metadata), locked
  )


def merge(a: Structure, b: Structure) -> tuple[Structure, tuple[int, ...]]:
  """The structure of `a.merge(b)` (see the module docstring for the rule).

  Returns the structure and, per merged entry, the position of its value in
  `a`'s values followed by `b`'s. Both inputs must have the same locked flag.
  """
  na = len(a.paths)
  b_index = b.index()
  # Candidates: every entry of `a`, then those of `b` whose path `a` lacks;
  # `sources` says where each candidate's value and static fields come from.
  if b_index.keys().isdisjoint(a.paths):  # the halves of a split, typically
    sources: Sequence[int] = range(na + len(b.paths))
    ranks_all = a.ranks + b.ranks
  else:
    a_index = a.index()
    rest = [j for j, path in enumerate(b.paths) if path not in a_index]
    sources = [  # other wins for shared paths; then b's own entries
        *(i if (j := b_index.get(path)) is None else na + j for i, path in enumerate(a.paths)),
        *(na + j for j in rest),
    ]
    ranks_all = a.ranks + tuple(b.ranks[j] for j in rest)
  # A stable sort by rank: on equal ranks `a`'s candidate (listed first) wins.
  order = sorted(range(len(ranks_all)), key=ranks_all.__getitem__)
  ranks = take(ranks_all, order)
  if any(map(operator.eq, ranks, ranks[1:])):
    ranks = tuple(range(len(ranks)))  # colliding ranks: renumber
  sources = take(sources, order)
  structure = Structure(
      take(a.paths + b.paths, sources),
      ranks,
      take(a.trainable + b.trainable, sources),
      take(a.metadata + b.metadata, sources),
      a.locked,
  )
  return structure, sources


def take(items: Sequence[_T], positions: Sequence[int]) -> tuple[_T, ...]:
  """`tuple(items[i] for i in positions)`, in one C-level call (merge is on
  the path of every train step that splits and merges outside `jax.jit`)."""
  if len(positions) == 1:
    return (items[positions[0]],)  # itemgetter of one index returns the item
  if not positions:
    return ()
  picked: tuple[_T, ...] = operator.itemgetter(*positions)(items)
  return picked
