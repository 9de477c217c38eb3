"""Property tests of `Params` over random containers and operation sequences.

The containers hold tiny numpy arrays (cheap to make, and valid pytree
leaves), random paths from a small alphabet (so that paths collide across
containers and merges), random trainable flags and random hashable metadata.
No test here compiles anything: the jitted checks live in
test_params_pytree.py, outside the hypothesis loops.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blox.params import Metadata, Param, Params, Path


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as a plain object: the jax stubs leave
  `PyTreeDef` unresolved, so mypy refuses `==` on it."""
  return jax.tree.structure(tree)

# Every generated path starts with "prop" (a habit from when the order was
# process-wide; now each container carries its own ranks).
_NAMES = ("a", "b", "net", "w", "bias", "kernel")
_paths: st.SearchStrategy[Path] = st.lists(
    st.sampled_from(_NAMES), min_size=1, max_size=3
).map(lambda names: ("prop", *names))
_shapes: st.SearchStrategy[tuple[int, ...]] = st.lists(
    st.integers(0, 3), max_size=2
).map(tuple)
_dtypes = st.sampled_from([np.dtype(np.float32), np.dtype(np.int32)])
_hashables: st.SearchStrategy[Hashable] = (
    st.none()
    | st.integers(-2, 2)
    | st.sampled_from(["data", "model", "seed"])
    | st.tuples(st.sampled_from(["data", "model"]) | st.none())
)
_metadata: st.SearchStrategy[dict[str, Hashable]] = st.dictionaries(
    st.sampled_from(["sharding", "tag", "scale"]), _hashables, max_size=2
)

_SETTINGS = settings(max_examples=40, deadline=None)

# Names never drawn by the strategies: paths built from them are new to
# every generated container.
_fresh_names = (f"fresh{i}" for i in itertools.count())


@st.composite
def _params(
    draw: st.DrawFn,
    min_size: int = 0,
    max_size: int = 6,
    locked: bool | None = None,
) -> Params:
  paths = draw(st.lists(_paths, unique=True, min_size=min_size, max_size=max_size))
  entries = {}
  for i, path in enumerate(paths):
    value = np.full(draw(_shapes), i, draw(_dtypes))
    entries[path] = Param(value, draw(st.booleans()), draw(_metadata))
  is_locked = draw(st.booleans()) if locked is None else locked
  return Params(entries, locked=is_locked)


Snapshot = tuple[bool, Any, tuple[tuple[Path, Any, bool, Metadata], ...]]


def _snapshot(params: Params) -> Snapshot:
  """Everything observable about `params`, holding the value objects."""
  entries = tuple(
      (path, p.value, p.trainable, p.metadata) for path, p in params.items()
  )
  return params.is_locked, _treedef(params), entries


def _assert_unchanged(params: Params, snapshot: Snapshot) -> None:
  locked, treedef, entries = snapshot
  assert params.is_locked == locked
  assert _treedef(params) == treedef
  now = tuple((path, p.value, p.trainable, p.metadata) for path, p in params.items())
  assert len(now) == len(entries)
  for (path, value, trainable, metadata), (path0, value0, trainable0, metadata0) in zip(
      now, entries
  ):
    assert path == path0
    assert value is value0
    assert trainable == trainable0
    assert metadata == metadata0


def _is_prefix_free(paths: list[Path]) -> bool:
  return not any(
      p != q and q[: len(p)] == p for p in paths for q in paths
  )


# Operations for the immutability property. Each takes the current params and
# a way to draw more data, and returns the params to continue with; the
# runner checks that the input (and every other container involved) is
# unchanged afterwards.

Draw = Callable[[st.SearchStrategy[Any]], Any]


def _op_locked(params: Params, draw: Draw) -> Params:
  return params.locked()


def _op_unlocked(params: Params, draw: Draw) -> Params:
  return params.unlocked()


def _op_split(params: Params, draw: Draw) -> Params:
  matching, rest = params.split()
  return matching.merge(rest) if draw(st.booleans()) else matching


def _op_split_predicate(params: Params, draw: Draw) -> Params:
  names = draw(st.sets(st.sampled_from(_NAMES)))
  matching, rest = params.split(lambda path, param: path[-1] in names)
  return rest


def _op_merge(params: Params, draw: Draw) -> Params:
  other: Params = draw(_params(locked=params.is_locked))
  before = _snapshot(other)
  merged = params.merge(other)
  _assert_unchanged(other, before)
  return merged


def _op_create(params: Params, draw: Draw) -> Params:
  path = (next(_fresh_names),)
  shape = draw(_shapes)
  if params.is_locked:
    with pytest.raises(RuntimeError):
      params.get_or_create(path, shape, init=lambda key, s, d: np.zeros(s, d))
    return params
  _, created = params.get_or_create(path, shape, init=lambda key, s, d: np.zeros(s, d))
  return created


def _op_get_existing(params: Params, draw: Draw) -> Params:
  if not len(params):
    return params
  path = draw(st.sampled_from(list(params)))
  value = params[path].value
  got, same = params.get_or_create(path, value.shape, param_dtype=value.dtype)
  assert got is value and same is params
  return same


def _op_set(params: Params, draw: Draw) -> Params:
  if not len(params):
    return params
  path = draw(st.sampled_from(list(params)))
  old = params[path].value
  return params.set(
      path,
      np.ones(old.shape, old.dtype) if draw(st.booleans()) else None,
      trainable=draw(st.none() | st.booleans()),
      metadata=draw(st.none() | _metadata),
  )


def _op_tree_map(params: Params, draw: Draw) -> Params:
  result: Params = jax.tree.map(lambda x: x + 1, params)
  return result


def _op_views(params: Params, draw: Draw) -> Params:
  # Changing what the views return must not reach the params.
  as_dict = params.as_dict()
  as_dict.clear()
  list(params.keys()), list(params.values()), list(params.items())
  return params


def _op_setitem_on_a_copy(params: Params, draw: Draw) -> Params:
  # `params[path] = ...` works in place, but only on the object it is called
  # on: the unlocked copy, never the params it came from.
  copy = params.unlocked()
  path = draw(_paths)
  copy[path] = Param(np.zeros(2, np.float32), draw(st.booleans()), draw(_metadata))
  assert path in copy
  return copy


def _op_state_dict(params: Params, draw: Draw) -> Params:
  if not _is_prefix_free(list(params)):
    return params
  return Params.from_state_dict(params.to_state_dict(), template=params)


_OPERATIONS: dict[str, Callable[[Params, Draw], Params]] = {
    "locked": _op_locked,
    "unlocked": _op_unlocked,
    "split": _op_split,
    "split_predicate": _op_split_predicate,
    "merge": _op_merge,
    "create": _op_create,
    "get_existing": _op_get_existing,
    "set": _op_set,
    "tree_map": _op_tree_map,
    "views": _op_views,
    "setitem_on_a_copy": _op_setitem_on_a_copy,
    "state_dict": _op_state_dict,
}


@settings(max_examples=60, deadline=None)
@given(_params(), st.lists(st.sampled_from(sorted(_OPERATIONS)), max_size=8), st.data())
def test_no_operation_changes_its_input(
    params: Params, operations: list[str], data: st.DataObject
) -> None:
  seen: list[tuple[Params, Snapshot]] = [(params, _snapshot(params))]
  for name in operations:
    current, before = seen[-1]
    result = _OPERATIONS[name](current, data.draw)
    _assert_unchanged(current, before)
    seen.append((result, _snapshot(result)))
  # Nothing done later reached any container made earlier.
  for container, snapshot in seen:
    _assert_unchanged(container, snapshot)


@_SETTINGS
@given(_params())
def test_mapping_views_agree(params: Params) -> None:
  paths = list(params)
  assert len(params) == len(paths) == len(set(paths))
  assert list(params.keys()) == paths
  assert [path for path, _ in params.items()] == paths
  for (path, param), value_param in zip(params.items(), params.values()):
    assert path in params
    assert params[path] == param == value_param
  assert params.as_dict() == dict(params.items())


@_SETTINGS
@given(_params(), _paths)
def test_missing_paths_raise_key_error_naming_the_path(params: Params, path: Path) -> None:
  if path in params:
    assert params[path].value is params.as_dict()[path].value
    return
  with pytest.raises(KeyError, match="No param at path") as info:
    params[path]
  assert repr(path) in str(info.value)


def _ranks(params: Params) -> tuple[int, ...]:
  ranks: tuple[int, ...] = params._structure.ranks
  return ranks


@_SETTINGS
@given(_params(), st.randoms(use_true_random=False))
def test_a_container_lists_its_entries_in_the_given_order(
    params: Params, rnd: random.Random
) -> None:
  assert _ranks(params) == tuple(range(len(params)))
  entries = list(params.items())
  rnd.shuffle(entries)
  rebuilt = Params(dict(entries), locked=params.is_locked)
  assert list(rebuilt) == [path for path, _ in entries]
  assert _ranks(rebuilt) == tuple(range(len(params)))
  # The same order gives the same tree structure; another order another one.
  same_order = Params(dict(params.items()), locked=params.is_locked)
  assert _treedef(same_order) == _treedef(params)
  if list(rebuilt) != list(params):
    assert _treedef(rebuilt) != _treedef(params)
  else:
    assert _treedef(rebuilt) == _treedef(params)


@_SETTINGS
@given(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=6, unique=True), st.data())
def test_paths_are_listed_in_creation_order(names: list[str], data: st.DataObject) -> None:
  root = next(_fresh_names)
  paths = [(root, name) for name in names]
  params = Params()
  for path in paths:
    _, params = params.get_or_create(path, (1,), init=lambda key, s, d: np.zeros(s, d))
  assert list(params) == paths
  assert _ranks(params) == tuple(range(len(paths)))
  # Put together from entries, a container lists them as given; set by
  # hand, new paths are appended like created ones.
  shuffled = data.draw(st.permutations(paths))
  again = Params({path: params[path] for path in shuffled})
  assert list(again) == shuffled
  late = Params()
  for path in shuffled:
    late[path] = params[path]
  assert list(late) == shuffled
  assert _treedef(late) == _treedef(again)
  # Setting an existing path keeps its place and rank.
  late[shuffled[0]] = Param(np.ones(3, np.float32))
  assert list(late) == shuffled and _ranks(late) == _ranks(again)
  # Creating in a half of a split appends after the whole's ranks.
  chosen = data.draw(st.sets(st.sampled_from(paths)))
  half, rest = params.split(lambda path, _: path in chosen)
  _, grown = half.get_or_create((root, "new"), (1,), init=lambda key, s, d: np.zeros(s, d))
  assert list(grown)[-1] == (root, "new")
  assert _ranks(grown)[-1] == (max(_ranks(half)) + 1 if len(half) else 0)


@_SETTINGS
@given(_params(), st.lists(st.booleans(), min_size=6, max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_split_then_merge_round_trips_for_any_predicate_and_nested_splits(
    params: Params, first: list[bool], second: list[bool]
) -> None:
  position = {path: i for i, path in enumerate(params)}
  left, right = params.split(lambda path, _: first[position[path]])
  # Sub-splits of a half, merged back in any grouping and order.
  left_a, left_b = left.split(lambda path, _: second[position[path]])
  for merged in (
      left.merge(right),
      right.merge(left),
      left_a.merge(left_b).merge(right),
      right.merge(left_b).merge(left_a),
      left_b.merge(right.merge(left_a)),
  ):
    assert list(merged) == list(params)
    assert _ranks(merged) == _ranks(params)
    assert _treedef(merged) == _treedef(params)
    for leaf, original in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
      assert leaf is original


@_SETTINGS
@given(_params(), st.data())
def test_merging_unrelated_containers_is_deterministic_with_unique_ranks(
    params: Params, data: st.DataObject
) -> None:
  other: Params = data.draw(_params(locked=params.is_locked))
  merged = params.merge(other)
  again = params.merge(other)
  assert list(merged) == list(again)
  assert _treedef(merged) == _treedef(again)
  ranks = _ranks(merged)
  assert len(set(ranks)) == len(ranks) == len(merged)
  assert list(ranks) == sorted(ranks)
  # A path in both keeps self's place: its rank decides, self first on ties.
  own_rank = dict(zip(params, _ranks(params)))
  own_rank.update({p: r for p, r in zip(other, _ranks(other)) if p not in own_rank})
  side = {p: 0 if p in params else 1 for p in merged}
  assert list(merged) == sorted(merged, key=lambda p: (own_rank[p], side[p]))
  # Merging the result with either input's paths again changes no order.
  assert list(merged.merge(other)) == list(merged)


@_SETTINGS
@given(_params(), st.sets(st.sampled_from(_NAMES)))
def test_split_partitions_and_merge_restores_the_structure(
    params: Params, names: set[str]
) -> None:
  predicates: list[Callable[[Path, Param], bool] | None] = [
      None,
      lambda path, param: path[-1] in names,
  ]
  for predicate in predicates:
    matching, rest = params.split(predicate)
    for path, param in params.items():
      chosen = param.trainable if predicate is None else predicate(path, param)
      assert (path in matching) == chosen
      assert (path in rest) == (not chosen)
    assert matching.is_locked == rest.is_locked == params.is_locked
    # Each half lists its paths in the order of the whole.
    assert list(matching) == [p for p in params if p in matching]
    for merged in (matching.merge(rest), rest.merge(matching)):
      assert list(merged) == list(params)
      assert _treedef(merged) == _treedef(params)
      assert hash(_treedef(merged)) == hash(_treedef(params))
      for leaf, original in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        assert leaf is original


@_SETTINGS
@given(_params(), st.data())
def test_merge_takes_the_union_and_other_wins(params: Params, data: st.DataObject) -> None:
  other: Params = data.draw(_params(locked=params.is_locked))
  merged = params.merge(other)
  assert set(merged) == set(params) | set(other)
  assert merged.is_locked == params.is_locked
  for path in merged:
    expected = other[path] if path in other else params[path]
    assert merged[path] == expected
  # The order does not depend on which side a path came from.
  assert list(merged) == list(Params(merged.as_dict()))


@_SETTINGS
@given(_params(locked=False), _params(locked=True))
def test_merge_refuses_locked_with_unlocked(unlocked: Params, locked: Params) -> None:
  for a, b in ((unlocked, locked), (locked, unlocked)):
    with pytest.raises(ValueError, match="locked and unlocked"):
      a.merge(b)


@_SETTINGS
@given(_params())
def test_locking_round_trips_and_keeps_the_entries(params: Params) -> None:
  locked = params.locked()
  unlocked = params.unlocked()
  assert locked.is_locked and not unlocked.is_locked
  assert locked.locked().is_locked and not locked.unlocked().is_locked
  for other in (locked, unlocked):
    assert other.as_dict() == params.as_dict()
  assert _treedef(locked) != _treedef(unlocked)
  assert _treedef(locked.unlocked().locked()) == _treedef(locked)


@_SETTINGS
@given(_params())
def test_flatten_unflatten_round_trip(params: Params) -> None:
  leaves, treedef = jax.tree.flatten(params)
  assert len(leaves) == len(params)
  for leaf, param in zip(leaves, params.values()):
    assert leaf is param.value
  rebuilt = jax.tree.unflatten(treedef, leaves)
  assert isinstance(rebuilt, Params)
  assert rebuilt.as_dict() == params.as_dict()
  assert rebuilt.is_locked == params.is_locked
  assert _treedef(rebuilt) == treedef
  keyed, keyed_treedef = jax.tree_util.tree_flatten_with_path(params)
  same_treedef: object = keyed_treedef
  assert same_treedef == treedef
  for (key_path, leaf), path in zip(keyed, params):
    assert repr(path) in jax.tree_util.keystr(key_path)
    assert leaf is params[path].value


@_SETTINGS
@given(_params(min_size=1), st.data())
def test_static_fields_are_part_of_the_tree_structure(
    params: Params, data: st.DataObject
) -> None:
  treedef = _treedef(params)
  path = data.draw(st.sampled_from(list(params)))
  param = params[path]
  flipped = params.set(path, trainable=not param.trainable)
  assert _treedef(flipped) != treedef
  retagged = params.set(path, metadata={"extra": ("changed", len(param.metadata))})
  assert _treedef(retagged) != treedef
  relocked = params.unlocked() if params.is_locked else params.locked()
  assert _treedef(relocked) != treedef
  # A new value of the same shape and dtype keeps the structure.
  same = params.set(path, np.zeros(param.value.shape, param.value.dtype))
  assert _treedef(same) == treedef


@_SETTINGS
@given(_params())
def test_state_dict_round_trip(params: Params) -> None:
  if not _is_prefix_free(list(params)):
    with pytest.raises(ValueError, match="cannot be nested"):
      params.to_state_dict()
    return
  state = params.to_state_dict()
  for path, param in params.items():
    node: Any = state
    for part in path:
      node = node[part]
    assert node is param.value
  restored = Params.from_state_dict(state, template=params)
  assert restored.as_dict() == params.as_dict()
  assert _treedef(restored) == _treedef(params)
  plain = Params.from_state_dict(state)
  # Without a template the order is the state dict's (depth first).
  def depth_first(node: Any, prefix: Path) -> list[Path]:
    found: list[Path] = []
    for name, child in node.items():
      found += depth_first(child, prefix + (name,)) if isinstance(child, dict) else [prefix + (name,)]
    return found
  assert list(plain) == depth_first(state, ())
  assert sorted(plain) == sorted(params)
  assert not plain.is_locked
  for path, param in plain.items():
    assert param.value is params[path].value
    assert param.trainable and not param.metadata
