"""`Param`: one value with its trainable flag and metadata.

`Param` is the user-facing view of a single entry of `Params`. The container
itself stores values, flags and metadata in separate columns; a `Param` is
built on access and taken apart on insertion.

Example:
  >>> import jax.numpy as jnp
  >>> p = Param(jnp.zeros((2, 3)), metadata={'sharding': (None, 'model')})
  >>> p.sharding
  (None, 'model')
  >>> p.replace(trainable=False).trainable
  False
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any


__all__ = ["Metadata", "Param"]


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


class Param:
  """A parameter value with its trainable flag and metadata.

  Args:
    value: an array (or an abstract `jax.ShapeDtypeStruct`).
    trainable: whether `Params.split()` puts it with the gradient-receiving
      half. Must be a `bool`.
    metadata: a mapping of hashable values, e.g. `{'sharding': ('data',)}`.
  """

  __slots__ = ("value", "trainable", "metadata")

  value: Any
  trainable: bool
  metadata: Metadata

  def __init__(
      self,
      value: Any,
      trainable: bool = True,
      metadata: Mapping[str, Any] | None = None,
  ) -> None:
    if not isinstance(trainable, bool):
      raise TypeError(
          f"trainable must be a bool, got {type(trainable).__name__}."
      )
    object.__setattr__(self, "value", value)
    object.__setattr__(self, "trainable", trainable)
    object.__setattr__(self, "metadata", as_metadata(metadata))

  def __setattr__(self, name: str, value: object) -> None:
    raise AttributeError("Param is immutable; use replace(...) instead.")

  def __reduce__(self) -> tuple[Any, ...]:
    # For copy, deepcopy and pickle (`__setattr__` refuses the default route).
    return (Param, (self.value, self.trainable, self.metadata))

  @property
  def sharding(self) -> tuple[Any, ...]:
    """The `'sharding'` metadata entry (mesh axis names per dim), or `()`."""
    spec = self.metadata.get("sharding", ())
    return tuple(spec) if isinstance(spec, tuple) else (spec,)

  def replace(self, **changes: Any) -> Param:
    """Returns a copy with the given fields (value, trainable, metadata) changed."""
    unknown = set(changes) - {"value", "trainable", "metadata"}
    if unknown:
      raise TypeError(f"Param has no fields {sorted(unknown)}.")
    return Param(
        changes.get("value", self.value),
        changes.get("trainable", self.trainable),
        changes.get("metadata", self.metadata),
    )

  def __eq__(self, other: object) -> bool:
    # Compares structure and identity of the value: array equality is
    # elementwise in JAX and has no single truth value.
    if not isinstance(other, Param):
      return NotImplemented
    return (
        self.value is other.value
        and self.trainable == other.trainable
        and self.metadata == other.metadata
    )

  __hash__ = None  # type: ignore[assignment]  # values are arrays: not hashable

  def __repr__(self) -> str:
    parts = [describe_value(self.value)]
    if not self.trainable:
      parts.append("trainable=False")
    if self.metadata:
      parts.append(f"metadata={dict(self.metadata)!r}")
    return f"Param({', '.join(parts)})"


def describe_value(value: Any) -> str:
  """Shape and dtype of an array-like (`float32[3, 4]`), never its contents."""
  shape = getattr(value, "shape", None)
  dtype = getattr(value, "dtype", None)
  if shape is None or dtype is None:
    return type(value).__name__
  return f"{dtype}{list(shape)}"
