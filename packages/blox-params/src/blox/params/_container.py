"""`Params`: the immutable container that holds all of a model's state.

Representation. A `Params` is two slots: a flat tuple of values and one
`Structure` (paths, ranks, trainable flags, metadata and the locked flag; see
`blox.params._structure`, which also states the order rule). `build` is the
one way to make a `Params` from a structure and values: every operation and
pytree unflattening use it. Mapping views are built only when asked for.

`Params` is one public type; the operations with the longest contracts
(`get_or_create` and `set`, `astype`, `freeze`, `unfreeze`, `replace_values`,
the state dict conversions) are functions in their own modules (`_creation`,
`_cast`, `_freezing`, `_replace_values`, `_state_dict`) that the class takes
as its methods, and the order rule lives in `_structure`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = Params()
  >>> w, params = params.get_or_create(
  ...     ('net', 'w'), (2,), init=jax.nn.initializers.ones)
  >>> params = params.locked()
  >>> params[('net', 'w')].value
  Array([1., 1.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from typing import Any

from blox.params._cast import astype
from blox.params._creation import get_or_create, set_param
from blox.params._freezing import freeze, unfreeze
from blox.params._measure import describe_value
from blox.params._metadata import Metadata
from blox.params._param import Param, check_param
from blox.params._paths import Path, check_path, closest_hint, path_text
from blox.params._structure import EMPTY, Structure, fresh, merge, take
from blox.params._html import params_html
from blox.params._pytree import register
from blox.params._replace_values import replace_values
from blox.params._state_dict import from_state_dict, to_state_dict
from blox.params._unused import READS

__all__ = ["Params", "build"]

Predicate = Callable[[Path, Param], Any]


class Params:
  """An immutable mapping from tuple paths to `Param`s, and a JAX pytree.

  Every operation returns a new `Params` and leaves its input untouched, with
  one exception: `params[path] = Param(value)` changes these params in place.
  It exists for loading values by hand into unlocked params (e.g. converting
  weights from another framework) and is refused on locked params. The
  leaves of the pytree are the values; ranks, trainable flags, metadata and
  the locked flag are static structure, so two `Params` with equal
  structures share one compiled function.

  Unlocked params (the default) accept new params: that is initialisation.
  Locked params refuse them: that is runtime, where creating a param means a
  bug such as a misspelt name.

  Args:
    entries: `Param`s by path, listed in the given order (ranks 0..n-1).
    locked: whether the params start locked.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> params = Params()
    >>> params[('layer', 'bias')] = Param(jnp.zeros(3))  # unlocked only
    >>> trainable, rest = params.split()
    >>> len(trainable.merge(rest))
    1
  """

  __slots__ = ("_values", "_structure")

  _values: tuple[Any, ...]
  _structure: Structure

  def __init__(
      self, entries: Mapping[Path, Param] | None = None, *, locked: bool = False
  ) -> None:
    if not entries:
      _fill(self, EMPTY.with_locked(locked), ())
      return
    for path, param in entries.items():
      check_param(path, param)
    params = list(entries.values())
    structure = fresh(
        list(entries), [p.trainable for p in params], [p.metadata for p in params], locked
    )
    _fill(self, structure, tuple(p.value for p in params))

  def __setattr__(self, name: str, value: object) -> None:
    raise AttributeError(
        "Params is immutable: operations return a new Params. To load a value by"
        " hand into unlocked params, use params[path] = Param(value)."
    )

  def __reduce__(self) -> tuple[Any, ...]:
    # For copy, deepcopy and pickle (`__setattr__` refuses the default route).
    # The structure travels whole, ranks included: a copy is the same
    # container, with the same pytree structure.
    return (build, (self._structure, self._values))

  # Locking.

  @property
  def is_locked(self) -> bool:
    """Whether new params are refused (runtime) rather than created (init)."""
    return self._structure.locked

  def locked(self) -> Params:
    """Returns these params locked: creating a new param becomes an error."""
    return build(self._structure.with_locked(True), self._values)

  def unlocked(self) -> Params:
    """Returns these params unlocked, so that new params may be created."""
    return build(self._structure.with_locked(False), self._values)

  # Mapping access.

  def __len__(self) -> int:
    return len(self._values)

  def __iter__(self) -> Iterator[Path]:
    return iter(self._structure.paths)

  def __contains__(self, path: object) -> bool:
    try:
      return path in self._structure.index()
    except TypeError:  # unhashable, e.g. a list: never a path
      return False

  def _position(self, path: Path) -> int:
    try:
      position = self._structure.index().get(path)
    except TypeError:
      raise TypeError(
          f"A param path is a non-empty tuple of strings, like ('net', 'kernel');"
          f" got the unhashable {type(path).__name__} {path!r}."
      ) from None
    if position is None:
      raise KeyError(
          f"No param at path {path!r}.{closest_hint(path, self._structure.paths)}"
      )
    return position

  def __getitem__(self, path: Path) -> Param:
    i = self._position(path)
    reads = READS.get()  # the unused-params recorder; None unless it runs
    if reads is not None:
      reads.add(path)
    s = self._structure
    return Param(self._values[i], s.trainable[i], s.metadata[i])

  def __setitem__(self, path: Path, param: Param) -> None:
    """Puts `param` at `path`, in place; only while unlocked (loading by hand).

    An existing path keeps its rank and position; a new one is appended with
    rank max+1, as if created.
    """
    check_path(path)
    if self.is_locked:
      raise RuntimeError(
          f"Cannot set {path_text(path)}: these params are locked. Call"
          " params.unlocked() first, or use params.set(...) to change an existing"
          " value."
      )
    check_param(path, param)
    position = self._structure.index().get(path)
    if position is None:
      updated = self._inserted(path, param.value, param.trainable, param.metadata)
    else:
      updated = self._changed(position, param.value, param.trainable, param.metadata)
    _fill(self, updated._structure, updated._values)

  def keys(self) -> KeysView[Path]:
    """The paths, in order (a view: no `Param`s are built)."""
    # The index lists the paths in order of position.
    return self._structure.index().keys()

  def values(self) -> ValuesView[Param]:
    """The `Param`s, in order."""
    return self.as_dict().values()

  def items(self) -> ItemsView[Path, Param]:
    """`(path, Param)` pairs, in order."""
    return self.as_dict().items()

  def as_dict(self) -> dict[Path, Param]:
    """A new dict from path to `Param`, in order."""
    s = self._structure
    return {
        path: Param(value, trainable, metadata)
        for path, value, trainable, metadata in zip(
            s.paths, self._values, s.trainable, s.metadata
        )
    }

  def map(self, fn: Callable[[Path, Param], Any]) -> Params:
    """A `Params`-shaped pytree whose leaf at each path is `fn(path, param)`.

    The one way to build a tree of something else that lines up with these
    params: masks (`param_mask`), shardings (`blox.parallel.param_shardings`),
    checkpoint templates. The result has the same pytree structure as these
    params (paths, ranks, flags, metadata, locked flag), so it can be passed
    wherever JAX wants a tree matching them (`in_shardings`, optax masks).
    Its leaves may be anything, and are not checked: it is a tree, not a
    container of params to run a model on.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = Params({('w',): Param(jnp.ones(2)), ('b',): Param(jnp.ones(3))})
      >>> sizes = params.map(lambda path, param: param.value.size)
      >>> [sizes[path].value for path in sizes]
      [2, 3]
    """
    s = self._structure
    return build(s, tuple(
        fn(path, Param(value, trainable, metadata))
        for path, value, trainable, metadata in zip(
            s.paths, self._values, s.trainable, s.metadata
        )
    ))

  # Splitting and merging.

  def split(self, predicate: Predicate | None = None) -> tuple[Params, Params]:
    """Splits into `(matching, rest)`; by default trainable vs non-trainable.

    Both halves keep the locked flag and each entry's rank, so
    `matching.merge(rest)` gives back exactly these params' structure.

    Args:
      predicate: `predicate(path, param) -> bool`, or None for "is trainable".

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = Params({('w',): Param(jnp.ones(2)), ('n',): Param(jnp.ones(1), False)})
      >>> trainable, rest = params.split()
      >>> list(trainable), list(rest)
      ([('w',)], [('n',)])
    """
    s = self._structure
    if predicate is None:
      chosen: Sequence[bool] = s.trainable
    else:
      chosen = [
          bool(predicate(path, Param(value, trainable, metadata)))
          for path, value, trainable, metadata in zip(
              s.paths, self._values, s.trainable, s.metadata
          )
      ]
    picked = [i for i, c in enumerate(chosen) if c]
    others = [i for i, c in enumerate(chosen) if not c]
    return self._selected(picked), self._selected(others)

  def _selected(self, positions: Sequence[int]) -> Params:
    return build(self._structure.select(positions), take(self._values, positions))

  def merge(self, other: Params) -> Params:
    """The union of these params and `other`; `other` wins where both have a path.

    Paths are listed by rank (see `blox.params._structure`): the halves of a
    split merge back to exactly the structure that was split, in either
    order; for unrelated containers whose ranks collide, entries are ordered
    by (rank, side), self's first on equal ranks, and renumbered 0..n-1.

    Raises:
      TypeError: `other` is not `Params`.
      ValueError: one is locked and the other is not.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> a = Params({('w',): Param(jnp.ones(2))})
      >>> b = Params({('b',): Param(jnp.zeros(2))})
      >>> list(a.merge(b)), list(b.merge(a))
      ([('w',), ('b',)], [('b',), ('w',)])
    """
    if not isinstance(other, Params):
      raise TypeError(f"Can only merge Params, got {type(other).__name__}.")
    if self.is_locked != other.is_locked:
      raise ValueError(
          f"Cannot merge locked and unlocked params (this one is_locked="
          f"{self.is_locked}, the other is_locked={other.is_locked}); call"
          " .locked() or .unlocked() on one of them first."
      )
    if not len(other):
      return self
    if not len(self):
      return other
    structure, sources = merge(self._structure, other._structure)
    return build(structure, take(self._values + other._values, sources))

  def _changed(self, i: int, value: Any, trainable: bool, metadata: Metadata) -> Params:
    """A copy with the entry at position `i` changed; its rank is kept."""
    s = self._structure
    values = self._values[:i] + (value,) + self._values[i + 1 :]
    if trainable == s.trainable[i] and metadata is s.metadata[i]:
      return build(s, values)  # a new value only: the very same structure
    return build(s.with_entry(i, trainable, metadata), values)

  def _inserted(self, path: Path, value: Any, trainable: bool, metadata: Metadata) -> Params:
    """A copy with a new param at `path` (not yet present), rank max+1."""
    return build(
        self._structure.appended(path, trainable, metadata), self._values + (value,)
    )

  def _restructured(self, structure: Structure) -> Params:
    """These values under a new structure of the same paths, ranks and order
    (new trainable flags or metadata); see `blox.params._freezing`."""
    return build(structure, self._values)

  # Operations defined in their own modules, where their contracts and
  # examples live; each takes these params as its first argument.

  get_or_create = get_or_create  # `blox.params._creation`, with `set`
  set = set_param
  astype = astype  # `blox.params._cast`
  freeze = freeze  # `blox.params._freezing`
  unfreeze = unfreeze
  replace_values = replace_values  # `blox.params._replace_values`
  to_state_dict = to_state_dict  # `blox.params._state_dict`
  from_state_dict = classmethod(from_state_dict)

  def _repr_html_(self) -> str:
    """An HTML table for Jupyter: paths, shapes, dtypes, sizes, shardings; no values."""
    return params_html(self)

  def __repr__(self) -> str:
    s = self._structure
    header = f"Params(locked={s.locked}, {len(s.paths)} params)"
    if not s.paths:
      return header
    names = [repr(p) for p in s.paths]
    kinds = [describe_value(v) for v in self._values]
    name_width = max(len(n) for n in names)
    kind_width = max(len(k) for k in kinds)
    lines = [header + ":"]
    for name, kind, trainable in zip(names, kinds, s.trainable):
      flag = "" if trainable else "non-trainable"
      lines.append(f"  {name:<{name_width}}  {kind:<{kind_width}}  {flag}".rstrip())
    return "\n".join(lines)


# The slots' own setters, looked up once: they write past
# `Params.__setattr__` (which refuses every assignment) more cheaply than
# `object.__setattr__`, which looks the attribute up on every call.
_new_object = object.__new__
_set_values = Params.__dict__["_values"].__set__
_set_structure = Params.__dict__["_structure"].__set__


def build(structure: Structure, values: Iterable[Any]) -> Params:
  """The one way to make a `Params` from a structure and its values.

  Every operation ends here, and so does pytree unflattening (this is the
  registered unflatten function), so it is kept to three C-level calls; the
  values are not checked. `tuple(values)` is free when they are a tuple.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> params = Params({('w',): Param(jnp.ones(1))})
    >>> build(params._structure, [jnp.zeros(1)])[('w',)].value
    Array([0.], dtype=float32)
  """
  params: Params = _new_object(Params)
  _set_values(params, tuple(values))
  _set_structure(params, structure)
  return params


def _fill(params: Params, structure: Structure, values: tuple[Any, ...]) -> None:
  """`build` into an existing object: `__init__` and `__setitem__`."""
  _set_values(params, values)
  _set_structure(params, structure)


register(Params, build)
