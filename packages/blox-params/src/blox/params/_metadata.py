"""`Metadata`: the read-only, hashable mapping each param carries, and its known keys.

Metadata is static pytree structure (see `blox.params._structure`), so every
entry must be hashable; `as_metadata` is the one conversion from what users
pass (`None` or a mapping) to `Metadata`. The keys that blox itself reads and
writes are declared here, once: `SHARDING`, `STACKED`, `FROZEN_LAYERS` and the
random-stream tags `RNG_STREAM`, `RNG_SEED`, `RNG_COUNTER`.

Example:
  >>> m = as_metadata({'sharding': ('data', None)})
  >>> m['sharding'], hash(m) == hash(Metadata({'sharding': ('data', None)}))
  (('data', None), True)
  >>> as_metadata(None) is EMPTY_METADATA
  True
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any

__all__ = [
    "EMPTY_METADATA",
    "FROZEN_LAYERS",
    "Metadata",
    "RNG_COUNTER",
    "RNG_SEED",
    "RNG_STREAM",
    "SHARDING",
    "STACKED",
    "as_metadata",
]

SHARDING = "sharding"
"""The metadata key under which a param says how it is laid out over a device mesh.

One entry per dimension: a mesh or logical axis name, a tuple of names, or
None. Layers write it, `blox.parallel` reads it.
"""

STACKED = "stacked"
"""The metadata key under which a stacked param records its stacked axes.

A param stored for a stack of identical layers (`blox.graph.Repeat`) records
the sizes of its leading stacked axes, a tuple of ints, outermost first:
`(num_layers,)`, or `(outer, inner)` for a stack inside a stack. Its other
metadata (`SHARDING` too) describes one layer's dimensions, which follow the
stacked ones.
"""

FROZEN_LAYERS = "frozen_layers"
"""The metadata key under which a stacked param lists its frozen layers.

A sorted tuple of indices along the outermost stacked axis (see `STACKED`),
written by `Params.freeze(where, layers=...)`. The param stays trainable (one
flag covers all layers); `value_and_grad` gives these layers zero gradients
and `restore_frozen_layers` puts their values back after an optimizer step.
Both refuse the entry on a param that is not stacked, so a layer's params cut
out of a stack must not keep it.
"""

# Tools (per-lane folding, checkpoints, summaries) find every random stream in
# a Params by these tags, without the modules that made them.
RNG_STREAM = "rng_stream"
"""The metadata key that marks a param as random-stream state.

A random stream stores its state as params whose metadata maps `RNG_STREAM`
to `RNG_SEED` or `RNG_COUNTER`.
"""
RNG_SEED = "seed"
"""The `RNG_STREAM` tag of a stream's seed param (a PRNG key)."""
RNG_COUNTER = "counter"
"""The `RNG_STREAM` tag of a stream's counter param (a uint32 scalar)."""


class Metadata(Mapping[str, Hashable]):
  """A read-only, hashable mapping of metadata entries.

  Metadata travels in the static structure of `Params` (the pytree's aux
  data), where JAX hashes and compares it on every jitted call. Every value
  must therefore be hashable: use tuples, not lists.

  Example:
    >>> Metadata({'sharding': ('data', None)})['sharding']
    ('data', None)
  """

  __slots__ = ("_items", "_hash")

  _items: dict[str, Hashable]
  _hash: int

  def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
    items = dict(entries) if entries is not None else {}
    for key, value in items.items():
      if not isinstance(key, str):
        raise TypeError(f"Metadata keys must be strings, got {key!r}.")
      try:
        hash(value)
      except TypeError:
        raise TypeError(
            f"Metadata entry {key!r} has the unhashable value {value!r}; metadata"
            " is part of the static pytree structure and must be hashable (use a"
            " tuple instead of a list)."
        ) from None
    object.__setattr__(self, "_items", items)
    object.__setattr__(self, "_hash", hash(frozenset(items.items())))

  def __setattr__(self, name: str, value: object) -> None:
    raise AttributeError("Metadata is read-only.")

  def __reduce__(self) -> tuple[Any, ...]:
    # For copy, deepcopy and pickle: rebuilt from the entries, so the hash is
    # recomputed (string hashes differ between processes).
    return (Metadata, (dict(self._items),))

  def __getitem__(self, key: str) -> Hashable:
    return self._items[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    if self is other:
      return True
    if isinstance(other, Metadata):
      return self._hash == other._hash and self._items == other._items
    if isinstance(other, Mapping):
      return self._items == dict(other)
    return NotImplemented

  def __repr__(self) -> str:
    return f"Metadata({self._items!r})"

  def merged(self, changes: Mapping[str, Any]) -> Metadata:
    """Returns a new `Metadata` with `changes` added over these entries."""
    if not changes:
      return self
    return Metadata({**self._items, **changes})


EMPTY_METADATA = Metadata()


def as_metadata(metadata: Mapping[str, Any] | None) -> Metadata:
  """Converts `None` or a mapping to `Metadata`, raising `TypeError` otherwise."""
  if metadata is None:
    return EMPTY_METADATA
  if isinstance(metadata, Metadata):
    return metadata
  if not isinstance(metadata, Mapping):
    raise TypeError(
        f"metadata must be a mapping or None, got {type(metadata).__name__}."
    )
  return Metadata(metadata) if metadata else EMPTY_METADATA
