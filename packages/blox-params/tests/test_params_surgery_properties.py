"""Property tests of the param surgery: `astype`, `freeze`/`unfreeze`,
`replace_values` and `restore_frozen_layers` keep the container's invariants.

Whatever the container (random paths, dtypes, flags, metadata, lock state),
each operation keeps the paths in their order, the ranks and the lock state,
changes only what it documents, and leaves its input untouched. Tiny numpy
arrays, nothing compiled.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from blox.params import FROZEN_LAYERS, STACKED, Metadata, Param, Params, Path, restore_frozen_layers

_NAMES = ("a", "b", "net", "w", "kernel")
_paths: st.SearchStrategy[Path] = st.lists(
    st.sampled_from(_NAMES), min_size=1, max_size=3
).map(tuple)
_dtypes: st.SearchStrategy[np.dtype[Any]] = st.sampled_from(
    [np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int32), np.dtype(bool)]
)
_metadata: st.SearchStrategy[dict[str, Hashable]] = st.dictionaries(
    st.sampled_from(["sharding", "tag"]), st.none() | st.integers(-2, 2), max_size=2
)
_SETTINGS = settings(max_examples=40, deadline=None)


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


@st.composite
def _params(draw: st.DrawFn, min_size: int = 0) -> Params:
  paths = draw(st.lists(_paths, unique=True, min_size=min_size, max_size=6))
  entries = {}
  for i, path in enumerate(paths):
    value = np.full(draw(st.lists(st.integers(0, 3), max_size=2)), i).astype(draw(_dtypes))
    entries[path] = Param(value, draw(st.booleans()), draw(_metadata))
  return Params(entries, locked=draw(st.booleans()))


Entries = list[tuple[Path, Any, bool, Metadata]]


def _entries(params: Params) -> Entries:
  return [(path, p.value, p.trainable, p.metadata) for path, p in params.items()]


def _same_frame(new: Params, old: Params) -> None:
  """Paths in order, ranks and lock state as they were."""
  assert list(new) == list(old)
  assert new._structure.ranks == old._structure.ranks
  assert new.is_locked == old.is_locked


def _is_float(value: Any) -> bool:
  return bool(np.issubdtype(value.dtype, np.floating))


@_SETTINGS
@given(_params(), st.sampled_from([np.float16, np.float32, "bfloat16"]))
def test_astype_casts_float_values_and_keeps_all_else(params: Params, dtype: Any) -> None:
  before = _entries(params)
  cast = params.astype(dtype)
  _same_frame(cast, params)
  assert _treedef(cast) == _treedef(params)
  for (path, value, trainable, metadata), (_, new, new_trainable, new_metadata) in zip(
      before, _entries(cast)
  ):
    assert (new_trainable, new_metadata) == (trainable, metadata)
    if _is_float(value):
      assert new.dtype == np.dtype(dtype) and new.shape == value.shape
      np.testing.assert_array_equal(new, value.astype(dtype))
    else:
      assert new is value
  assert _entries(params) == before


@_SETTINGS
@given(_params(min_size=1), st.data())
def test_freeze_and_unfreeze_change_only_the_selected_flags(params: Params, data: st.DataObject) -> None:
  before = _entries(params)
  chosen = data.draw(st.sets(st.sampled_from(list(params)), min_size=1))
  pattern = "|".join(re.escape("/".join(path)) for path in chosen)
  frozen = params.freeze(pattern)
  _same_frame(frozen, params)
  thawed = frozen.unfreeze(pattern)
  for (path, value, trainable, metadata), (_, v1, t1, m1), (_, v2, t2, m2) in zip(
      before, _entries(frozen), _entries(thawed)
  ):
    assert v1 is value and v2 is value and m1 == metadata and m2 == metadata
    if path in chosen:
      assert t1 is False
      # Unfreezing makes weights trainable; integer and bool params stay frozen.
      assert t2 is _is_float(value)
    else:
      assert t1 == trainable and t2 == trainable
  assert _entries(params) == before


@_SETTINGS
@given(_params(min_size=1), st.data())
def test_a_predicate_selects_like_the_pattern_of_its_paths(params: Params, data: st.DataObject) -> None:
  chosen = data.draw(st.sets(st.sampled_from(list(params)), min_size=1))
  pattern = "|".join(re.escape("/".join(path)) for path in chosen)
  by_predicate = params.freeze(lambda path, param: path in chosen)
  assert _treedef(by_predicate) == _treedef(params.freeze(pattern))


@_SETTINGS
@given(_params(), st.data())
def test_replace_values_takes_values_and_nothing_else(params: Params, data: st.DataObject) -> None:
  before = _entries(params)
  chosen = data.draw(st.permutations([p for p in params if data.draw(st.booleans())]))
  other = Params({
      path: Param(np.ones_like(params[path].value), data.draw(st.booleans()), {"other": 1})
      for path in chosen
  })
  new = params.replace_values(other)
  _same_frame(new, params)
  assert _treedef(new) == _treedef(params)
  for path, value, _, _ in before:
    expected = other[path].value if path in other else value
    assert new[path].value is expected
  assert _entries(params) == before


@_SETTINGS
@given(
    st.integers(1, 5),
    st.integers(0, 3),
    st.data(),
)
def test_restore_keeps_frozen_layers_bits_and_takes_the_rest(
    num_layers: int, width: int, data: st.DataObject
) -> None:
  floats = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.just(-0.0)

  def array() -> np.ndarray:
    items = data.draw(st.lists(floats, min_size=num_layers * width, max_size=num_layers * width))
    return np.array(items, np.float32).reshape(num_layers, width)

  layers = sorted(data.draw(st.sets(st.integers(0, num_layers - 1), min_size=1)))
  old, new = array(), array()
  original = Params({("s",): Param(old, metadata={STACKED: (num_layers,)})}).freeze(
      "s", layers=layers
  )
  assert original[("s",)].metadata[FROZEN_LAYERS] == tuple(layers)
  updated = original.map(lambda path, param: new)
  restored = np.asarray(restore_frozen_layers(updated, original)[("s",)].value)
  for layer in range(num_layers):
    expected = old[layer] if layer in layers else new[layer]
    np.testing.assert_array_equal(restored[layer].view(np.uint32), expected.view(np.uint32))

