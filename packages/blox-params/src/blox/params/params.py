"""`Params`: the immutable container that holds all of a model's state.

Representation. A `Params` is two fields: a flat tuple of values and one
`_Structure` object (paths, trainable flags, metadata and the locked flag).
Flattening hands the tuple to JAX and the structure as aux data; unflattening
puts them back. No per-param pytree nodes, no dict building on the hot path:
`jax.jit` sees what a plain tuple would cost. Mapping views are built only
when asked for.

Example:
  >>> import jax, jax.numpy as jnp
  >>> params = Params()
  >>> w, params = params.get_or_create(
  ...     ('net', 'w'), shape=(2,), init=jax.nn.initializers.ones)
  >>> params = params.locked()
  >>> params[('net', 'w')].value
  Array([1., 1.], dtype=float32)
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blox.params.key_source import KeySource
from blox.params.ordering import Path, in_order, rank
from blox.params.param import Metadata, Param, as_metadata, describe_value

__all__ = ["Params", "Path"]

Initializer = Callable[[Any, Sequence[int], Any], Any]
Predicate = Callable[[Path, Param], bool]


class _Structure:
  """The static part of a `Params`: everything except the values.

  It is the pytree aux data, hashed and compared by `jax.jit` on every call.
  The hash is computed on first use and cached (creating params one by one
  builds many structures that are never hashed), and equality short-circuits
  on identity and on cached hashes that differ.
  """

  __slots__ = ("paths", "trainable", "metadata", "locked", "_hash", "_index", "_keys")

  def __init__(
      self,
      paths: tuple[Path, ...],
      trainable: tuple[bool, ...],
      metadata: tuple[Metadata, ...],
      locked: bool,
      index: dict[Path, int] | None = None,
  ) -> None:
    self.paths = paths
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

  def with_locked(self, locked: bool) -> _Structure:
    if locked == self.locked:
      return self
    return _Structure(self.paths, self.trainable, self.metadata, locked, self._index)

  def __reduce__(self) -> tuple[Any, ...]:
    # Only the fields: the cached hash depends on the process's string hash
    # seed, so it must be recomputed after unpickling.
    return (_Structure, (self.paths, self.trainable, self.metadata, self.locked))

  def __hash__(self) -> int:
    if self._hash is None:
      self._hash = hash((self.paths, self.trainable, self.metadata, self.locked))
    return self._hash

  def __eq__(self, other: object) -> bool:
    if self is other:
      return True
    if not isinstance(other, _Structure):
      return NotImplemented
    if self._hash is not None and other._hash is not None and self._hash != other._hash:
      return False
    return (
        self.locked == other.locked
        and self.paths == other.paths
        and self.trainable == other.trainable
        and self.metadata == other.metadata
    )

  def __repr__(self) -> str:
    # One line per path with its static fields: JAX prints this repr when two
    # structures differ (tree_map, jit shardings) and diffs the two texts, so
    # the changed line names the path whose flags or metadata differ.
    lines = [f"Params structure (locked={self.locked}, {len(self.paths)} paths):"]
    for path, trainable, metadata in zip(self.paths, self.trainable, self.metadata):
      lines.append(f"  {path!r}: trainable={trainable}, metadata={dict(metadata)!r}")
    return "\n".join(lines)


_EMPTY = _Structure((), (), (), False)


def _check_path(path: object) -> Path:
  if (
      not isinstance(path, tuple)
      or not path
      or not all(isinstance(part, str) for part in path)
  ):
    raise TypeError(
        f"A param path is a non-empty tuple of strings, like ('net', 'kernel');"
        f" got {path!r}."
    )
  return path


def _is_array(value: object) -> bool:
  """Whether `value` can be one param's value: exactly one pytree leaf with a
  shape and a dtype (numpy scalars such as `np.float32(1)` included)."""
  return isinstance(value, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def _check_value(path: Path, value: object) -> None:
  """Raises TypeError unless `value` can be the value of the param at `path`.

  Used where users put `Param`s in (the constructor, `params[path] = ...`),
  never in unflattening: JAX rebuilds `Params` with None, masks, shardings or
  optimizer placeholders as leaves, and those must pass through.
  """
  if not _is_array(value):
    raise TypeError(
        f"The value of param {path!r} must be an array (jax or numpy array, numpy"
        f" scalar or jax.ShapeDtypeStruct), got {type(value).__name__}; wrap it"
        " with jnp.asarray(...). A param holds exactly one array."
    )


def _canonical_dtype(dtype: Any) -> Any:
  """The dtype JAX actually creates for `dtype` (float32 for float64 while
  64-bit mode is off); typed PRNG key dtypes are returned as they are."""
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    return dtype
  return jax.dtypes.canonicalize_dtype(dtype)


def _path_text(path: tuple[object, ...]) -> str:
  return "/".join(str(part) for part in path)


def _dtype_text(dtype: Any) -> str:
  """`float32` for any spelling of a dtype (`jnp.float32`, 'float32', ...)."""
  try:
    return str(jnp.dtype(dtype))
  except TypeError:
    return str(dtype)


def _same_dtype(existing: Any, requested: Any) -> bool:
  """Whether two dtypes agree; also for typed PRNG key dtypes (`key<fry>`).

  `jnp.dtype` cannot interpret key dtypes, so they are compared as they are.
  """
  if existing == requested:
    return True
  try:
    return bool(jnp.dtype(existing) == jnp.dtype(requested))
  except TypeError:
    return False


class Params:
  """An immutable mapping from tuple paths to `Param`s, and a JAX pytree.

  Every operation returns a new `Params` and leaves its input untouched, with
  one exception: `params[path] = Param(value)` changes these params in place.
  It exists for loading values by hand into unlocked params (e.g. converting
  weights from another framework) and is refused on locked params. The
  leaves of the pytree are the values; trainable flags, metadata and the
  locked flag are static structure, so two `Params` with the same paths,
  flags and metadata share one compiled function.

  Unlocked params (the default) accept new params: that is initialisation.
  Locked params refuse them: that is runtime, where creating a param means a
  bug such as a misspelt name.

  Example:
    >>> params = Params()
    >>> params[('layer', 'bias')] = Param(jnp.zeros(3))  # unlocked only
    >>> trainable, rest = params.split()
    >>> len(trainable.merge(rest))
    1
  """

  __slots__ = ("_values", "_structure")

  _values: tuple[Any, ...]
  _structure: _Structure

  def __init__(
      self, entries: Mapping[Path, Param] | None = None, *, locked: bool = False
  ) -> None:
    if not entries:
      self._set(tuple(), _EMPTY.with_locked(locked))
      return
    for path, param in entries.items():
      _check_path(path)
      if not isinstance(param, Param):
        raise TypeError(f"Params holds Param objects; {path!r} is {type(param).__name__}.")
      _check_value(path, param.value)
    paths = tuple(in_order(entries))
    self._set(
        tuple(entries[p].value for p in paths),
        _Structure(
            paths,
            tuple(entries[p].trainable for p in paths),
            tuple(entries[p].metadata for p in paths),
            locked,
        ),
    )

  def _set(self, values: tuple[Any, ...], structure: _Structure) -> None:
    object.__setattr__(self, "_values", values)
    object.__setattr__(self, "_structure", structure)

  @staticmethod
  def _make(values: tuple[Any, ...], structure: _Structure) -> Params:
    # Every operation ends here; see `_set_values` below for why not
    # `object.__setattr__`.
    params: Params = _new_object(Params)
    _set_values(params, values)
    _set_structure(params, structure)
    return params

  @classmethod
  def _from_columns(
      cls,
      paths: Sequence[Path],
      values: Sequence[Any],
      trainable: Sequence[bool],
      metadata: Sequence[Metadata],
      locked: bool,
  ) -> Params:
    return cls._make(
        tuple(values),
        _Structure(tuple(paths), tuple(trainable), tuple(metadata), locked),
    )

  def __setattr__(self, name: str, value: object) -> None:
    raise AttributeError(
        "Params is immutable: operations return a new Params. To load a value by"
        " hand into unlocked params, use params[path] = Param(value)."
    )

  def __reduce__(self) -> tuple[Any, ...]:
    # For copy, deepcopy and pickle (`__setattr__` refuses the default route).
    return (_rebuild, (self._structure, self._values))

  # Locking.

  @property
  def is_locked(self) -> bool:
    """Whether new params are refused (runtime) rather than created (init)."""
    return self._structure.locked

  def locked(self) -> Params:
    """Returns these params locked: creating a new param becomes an error."""
    return Params._make(self._values, self._structure.with_locked(True))

  def unlocked(self) -> Params:
    """Returns these params unlocked, so that new params may be created."""
    return Params._make(self._values, self._structure.with_locked(False))

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
      raise KeyError(self._missing_message(path))
    return position

  def _missing_message(self, path: object) -> str:
    return f"No param at path {path!r}.{self._closest_hint(path)}"

  def _closest_hint(self, path: object) -> str:
    """A sentence naming the existing paths closest to `path` (for errors)."""
    known = {_path_text(p): p for p in self._structure.paths}
    wanted = _path_text(path) if isinstance(path, tuple) else str(path)
    close = difflib.get_close_matches(wanted, list(known), n=3, cutoff=0.5)
    if close:
      hint = f" Closest existing paths: {', '.join(repr(known[c]) for c in close)}."
    else:
      hint = f" The params hold {len(known)} paths."
    if not (isinstance(path, tuple) and path and all(isinstance(p, str) for p in path)):
      hint += " A param path is a non-empty tuple of strings, like ('net', 'kernel')."
    return hint

  def __getitem__(self, path: Path) -> Param:
    i = self._position(path)
    s = self._structure
    return Param(self._values[i], s.trainable[i], s.metadata[i])

  def __setitem__(self, path: Path, param: Param) -> None:
    """Puts `param` at `path`, in place; only while unlocked (loading by hand)."""
    _check_path(path)
    if self.is_locked:
      raise RuntimeError(
          f"Cannot set {path!r}: these params are locked. Call params.unlocked()"
          " first, or use params.set(...) to change an existing value."
      )
    if not isinstance(param, Param):
      raise TypeError(
          f"params[{path!r}] must be set to a Param, got {type(param).__name__};"
          " wrap the value as Param(value)."
      )
    _check_value(path, param.value)
    updated = self._with_entry(path, param.value, param.trainable, param.metadata)
    self._set(updated._values, updated._structure)

  def keys(self) -> KeysView[Path]:
    """The paths, in creation order (a view: no `Param`s are built)."""
    # The index lists the paths in order of position, i.e. creation order.
    return self._structure.index().keys()

  def values(self) -> ValuesView[Param]:
    """The `Param`s, in creation order."""
    return self.as_dict().values()

  def items(self) -> ItemsView[Path, Param]:
    """`(path, Param)` pairs, in creation order."""
    return self.as_dict().items()

  def as_dict(self) -> dict[Path, Param]:
    """A new dict from path to `Param`, in creation order."""
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
    params (paths, order, flags, metadata, locked flag), so it can be passed
    wherever JAX wants a tree matching them (`in_shardings`, optax masks).
    Its leaves may be anything, and are not checked: it is a tree, not a
    container of params to run a model on.

    Example:
      >>> params = Params({('w',): Param(jnp.ones(2)), ('b',): Param(jnp.ones(3))})
      >>> sizes = params.map(lambda path, param: param.value.size)
      >>> [sizes[path].value for path in sizes]
      [2, 3]
    """
    s = self._structure
    leaves = tuple(
        fn(path, Param(value, trainable, metadata))
        for path, value, trainable, metadata in zip(
            s.paths, self._values, s.trainable, s.metadata
        )
    )
    return Params._make(leaves, s)

  # Splitting and merging.

  def split(self, predicate: Predicate | None = None) -> tuple[Params, Params]:
    """Splits into `(matching, rest)`; by default trainable vs non-trainable.

    Both halves keep the locked flag. `matching.merge(rest)` gives back params
    with the same structure as these.

    Args:
      predicate: `predicate(path, param) -> bool`, or None for "is trainable".
    """
    s = self._structure
    if predicate is None:
      chosen = s.trainable
    else:
      chosen = tuple(
          bool(predicate(path, Param(value, trainable, metadata)))
          for path, value, trainable, metadata in zip(
              s.paths, self._values, s.trainable, s.metadata
          )
      )
    return self._select(chosen, True), self._select(chosen, False)

  def _select(self, chosen: Sequence[bool], keep: bool) -> Params:
    s = self._structure
    picks = [i for i, c in enumerate(chosen) if c == keep]
    return Params._from_columns(
        [s.paths[i] for i in picks],
        [self._values[i] for i in picks],
        [s.trainable[i] for i in picks],
        [s.metadata[i] for i in picks],
        s.locked,
    )

  def merge(self, other: Params) -> Params:
    """The union of these params and `other`; `other` wins where both have a path.

    Raises:
      ValueError: if one is locked and the other is not.
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
    entries: dict[Path, tuple[Any, bool, Metadata]] = {}
    for source in (self, other):
      s = source._structure
      for path, value, trainable, metadata in zip(
          s.paths, source._values, s.trainable, s.metadata
      ):
        entries[path] = (value, trainable, metadata)
    paths = in_order(entries)
    return Params._from_columns(
        paths,
        [entries[p][0] for p in paths],
        [entries[p][1] for p in paths],
        [entries[p][2] for p in paths],
        self.is_locked,
    )

  # The primitives modules are built on.

  def get_or_create(
      self,
      path: Path,
      shape: Sequence[int] | None = None,
      init: Initializer | None = None,
      dtype: Any = None,
      trainable: bool = True,
      metadata: Mapping[str, Any] | None = None,
      key_source: KeySource | None = None,
  ) -> tuple[Any, Params]:
    """Returns the value at `path`, creating it first if it is missing.

    An existing value is checked against `shape` and `dtype` when they are
    given; `init`, `trainable`, `metadata` and `key_source` only matter for
    creation. Creating calls `init(key, shape, dtype)` (dtype defaults to
    float32), where `key` is drawn from `key_source` (exactly one draw, even
    if `init` ignores it) or is None without one. A requested dtype means
    what JAX would make of it (`jax.dtypes.canonicalize_dtype`): float64 is
    float32 while 64-bit mode is off, for creation and for the check alike.
    An exception from `init` is re-raised with a note naming the param.

    Returns:
      `(value, params)`: params are these params, or a new container that also
      holds the created param (and the key source's advanced state).

    Raises:
      ValueError: the existing value has another shape or dtype; or a creation
        lacks `shape` or `init`, or `init` returns another shape.
      RuntimeError: creating while locked.
    """
    position = self._structure.index().get(_check_path(path))
    # Compare and create with the dtype JAX really makes: with 64-bit mode
    # off, float64 becomes float32 in every initializer.
    if dtype is not None:
      try:
        dtype = _canonical_dtype(dtype)
      except TypeError as error:
        raise TypeError(f"Param {path!r}: {dtype!r} is not a dtype ({error}).") from None
    if position is not None:
      value = self._values[position]
      self._check_matches(path, value, shape, dtype)
      return value, self
    if self.is_locked:
      raise RuntimeError(
          f"Params is locked: cannot create the new param {path!r}. Call"
          " params.unlocked() to add params (initialisation), or check the name"
          f" for a typo.{self._closest_hint(path)}"
      )
    if shape is None or init is None:
      raise ValueError(
          f"Param {path!r} does not exist yet; creating it needs both a shape and"
          f" an init function (got shape={shape!r}, init={init!r})."
      )
    shape = tuple(int(d) for d in shape)
    dtype = jnp.float32 if dtype is None else dtype
    params: Params = self
    key = None
    if key_source is not None:
      key, params = key_source(params)
    try:
      value = init(key, shape, dtype)
    except Exception as error:
      note = (
          f"While creating param {path!r} by calling its init function as"
          f" init(key, shape={shape}, dtype={_dtype_text(dtype)})."
      )
      if key is None:
        note += (
            " No key source (rng) was given, so key is None: give the module or"
            " get_param an rng if this init function draws random numbers."
        )
      error.add_note(note)
      raise
    if not _is_array(value):
      raise TypeError(
          f"The init function for {path!r} returned {type(value).__name__}, not an array."
      )
    if tuple(value.shape) != shape:
      raise ValueError(
          f"The init function for {path!r} returned shape {tuple(value.shape)},"
          f" but shape {shape} was requested."
      )
    if not _same_dtype(value.dtype, dtype):
      raise ValueError(
          f"The init function for {path!r} returned dtype {value.dtype}, but dtype"
          f" {_dtype_text(dtype)} was requested; make it honour its dtype argument."
      )
    created = params._with_entry(path, value, trainable, as_metadata(metadata))
    return value, created

  @staticmethod
  def _check_matches(path: Path, value: Any, shape: Sequence[int] | None, dtype: Any) -> None:
    if shape is not None and tuple(value.shape) != tuple(shape):
      raise ValueError(
          f"Param {path!r} exists with shape {tuple(value.shape)}, but shape"
          f" {tuple(shape)} was requested. Use another name for a different param."
      )
    if dtype is not None and not _same_dtype(value.dtype, dtype):
      raise ValueError(
          f"Param {path!r} exists with dtype {value.dtype}, but dtype"
          f" {_dtype_text(dtype)} was requested. Use another name for a different param."
      )

  def set(
      self,
      path: Path,
      value: Any = None,
      *,
      trainable: bool | None = None,
      metadata: Mapping[str, Any] | None = None,
  ) -> Params:
    """Returns params with the existing param at `path` changed.

    Works on locked params too (runtime state such as counters changes there).

    Args:
      path: an existing path.
      value: a new array of the same shape and dtype, or None to keep it.
      trainable: a new flag, or None to keep it.
      metadata: entries merged over the existing metadata, or None.

    Raises:
      KeyError: no param at `path`.
      TypeError: `value` is not an array.
      ValueError: `value` has another shape or dtype.
    """
    i = self._position(_check_path(path))
    s = self._structure
    old = self._values[i]
    if value is None:
      value = old
    else:
      if not _is_array(value):
        raise TypeError(
            f"The value for {path!r} must be an array, got {type(value).__name__};"
            " wrap it with jnp.asarray(...)."
        )
      if tuple(value.shape) != tuple(old.shape) or value.dtype != old.dtype:
        raise ValueError(
            f"Param {path!r} holds {describe_value(old)}; cannot set a value of"
            f" {describe_value(value)}. Create a new param for a new shape or dtype."
        )
    if trainable is not None and not isinstance(trainable, bool):
      raise TypeError(f"trainable must be a bool, got {type(trainable).__name__}.")
    new_trainable = s.trainable[i] if trainable is None else trainable
    new_metadata = s.metadata[i] if metadata is None else s.metadata[i].merged(metadata)
    if new_trainable == s.trainable[i] and new_metadata is s.metadata[i]:
      values = self._values[:i] + (value,) + self._values[i + 1 :]
      return Params._make(values, s)
    return self._with_entry(path, value, new_trainable, new_metadata)

  def _with_entry(
      self, path: Path, value: Any, trainable: bool, metadata: Metadata
  ) -> Params:
    """A copy with `path` set (replaced in place or inserted in creation order)."""
    s = self._structure
    index = s.index()
    position = index.get(path)
    paths, values = list(s.paths), list(self._values)
    flags, metas = list(s.trainable), list(s.metadata)
    new_index: dict[Path, int] | None
    if position is None:
      new_rank = rank(path)
      position = len(paths)
      while position > 0 and rank(paths[position - 1]) > new_rank:
        position -= 1
      if position == len(paths):
        # The common case while creating params: appended at the end, so the
        # old index plus one entry is right; a dict copy is far cheaper than
        # hashing every path again.
        new_index = index.copy()
        new_index[path] = position
      else:
        new_index = None  # positions shift: rebuilt when first needed
      paths.insert(position, path)
      values.insert(position, value)
      flags.insert(position, trainable)
      metas.insert(position, metadata)
    else:
      new_index = index  # same paths, same positions
      values[position], flags[position], metas[position] = value, trainable, metadata
    structure = _Structure(tuple(paths), tuple(flags), tuple(metas), s.locked, new_index)
    return Params._make(tuple(values), structure)

  # Interop.

  def to_state_dict(self) -> dict[str, Any]:
    """A nested dict of values keyed by path parts, e.g. `{'net': {'w': ...}}`.

    Flags, metadata and the locked flag are not included; pass a template to
    `Params.from_state_dict` to get them back. Useful with serialisers such
    as orbax or `flax.serialization` that work on nested dicts.
    """
    nested: dict[str, Any] = {}
    for path, value in zip(self._structure.paths, self._values):
      node = nested
      for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
          raise ValueError(
              f"Path {path!r} lies under another param's path; it cannot be nested."
          )
        node = child
      if path[-1] in node:
        raise ValueError(f"Path {path!r} is a prefix of other paths; it cannot be nested.")
      node[path[-1]] = value
    return nested

  @classmethod
  def from_state_dict(
      cls, state: Mapping[str, Any], template: Params | None = None
  ) -> Params:
    """Builds params from a nested dict made by `to_state_dict`.

    Args:
      state: nested mappings whose leaves are arrays.
      template: params whose trainable flags, metadata and locked flag are
        reused; its paths must equal those of `state`. Without a template
        every param is trainable, without metadata, and unlocked.
    """
    flat: dict[Path, Any] = {}

    def walk(prefix: Path, node: Mapping[str, Any]) -> None:
      for name, child in node.items():
        if isinstance(child, Mapping):
          walk(prefix + (name,), child)
        else:
          flat[prefix + (name,)] = child

    walk((), state)
    if template is None:
      return cls({path: Param(value) for path, value in flat.items()})
    missing = [p for p in template if p not in flat]
    extra = [p for p in flat if p not in template]
    s = template._structure
    mismatched = [
        f"{path!r}: {describe_value(flat[path])} where the template has"
        f" {describe_value(like)}"
        for path, like in zip(s.paths, template._values)
        if path in flat
        and (
            tuple(getattr(flat[path], "shape", ())) != tuple(like.shape)
            or getattr(flat[path], "dtype", None) != like.dtype
        )
    ]
    if missing or extra or mismatched:
      raise ValueError(
          "The state dict does not match the template:"
          f" missing {missing}, unexpected {extra}, mismatched {mismatched}."
      )
    return Params._make(tuple(flat[p] for p in s.paths), s)

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

# Flattening reads the two slots with a C-level getter (no Python frame per
# flatten): `jax.jit` flattens every argument on every call.
_flatten: Callable[[Params], tuple[tuple[Any, ...], _Structure]] = operator.attrgetter(
    "_values", "_structure"
)


def _rebuild(structure: _Structure, values: tuple[Any, ...]) -> Params:
  """Rebuilds a `Params` from `__reduce__`'s parts (copy, deepcopy, pickle).

  In a fresh process the paths are registered in the saved order, so that
  later `split`/`merge` keep it; paths this process already ranked otherwise
  are put into its creation order.
  """
  paths = structure.paths
  ranks = [rank(path) for path in paths]
  if any(a > b for a, b in zip(ranks, ranks[1:])):
    order = sorted(range(len(paths)), key=ranks.__getitem__)
    structure = _Structure(
        tuple(paths[i] for i in order),
        tuple(structure.trainable[i] for i in order),
        tuple(structure.metadata[i] for i in order),
        structure.locked,
    )
    values = tuple(values[i] for i in order)
  return Params._make(tuple(values), structure)


def _flatten_with_keys(
    params: Params,
) -> tuple[tuple[tuple[jax.tree_util.DictKey, Any], ...], _Structure]:
  s = params._structure
  return tuple(zip(s.key_entries(), params._values)), s


def _unflatten(structure: _Structure, values: Iterable[Any]) -> Params:
  params: Params = _new_object(Params)
  _set_values(params, tuple(values))  # a no-op copy when JAX passes a tuple
  _set_structure(params, structure)
  return params


jax.tree_util.register_pytree_with_keys(
    Params, _flatten_with_keys, _unflatten, flatten_func=_flatten
)
