"""Tests of `Param` and `Metadata`: fields, read-only metadata, replace, errors."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blox.params import Metadata, Param

_hashables: st.SearchStrategy[Hashable] = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
    lambda inner: st.tuples(inner, inner),
    max_leaves=4,
)
_metadata_dicts = st.dictionaries(st.text(max_size=4), _hashables, max_size=4)


def test_param_fields_and_defaults() -> None:
  value = jnp.ones((2, 3))
  param = Param(value)
  assert param.value is value
  assert param.trainable is True
  assert isinstance(param.metadata, Metadata)
  assert len(param.metadata) == 0


def test_param_accepts_a_dict_as_metadata() -> None:
  param = Param(jnp.zeros(2), trainable=False, metadata={"tag": "bn", "n": 2})
  assert param.trainable is False
  assert isinstance(param.metadata, Metadata)
  assert dict(param.metadata) == {"tag": "bn", "n": 2}
  assert param.metadata["tag"] == "bn"


def test_param_metadata_is_read_only() -> None:
  param = Param(jnp.zeros(2), metadata={"tag": "a"})
  with pytest.raises(TypeError):
    param.metadata["tag"] = "b"  # type: ignore[index]  # the point: no item assignment
  with pytest.raises(AttributeError):
    param.metadata._items = {}
  assert dict(param.metadata) == {"tag": "a"}


def test_param_metadata_does_not_alias_the_given_dict() -> None:
  entries: dict[str, Hashable] = {"tag": "a"}
  param = Param(jnp.zeros(2), metadata=entries)
  entries["tag"] = "changed"
  assert param.metadata["tag"] == "a"


def test_param_is_immutable() -> None:
  param = Param(jnp.zeros(2))
  with pytest.raises(AttributeError, match="replace"):
    param.trainable = False
  assert param.trainable is True


def test_param_sharding_reads_the_sharding_entry() -> None:
  assert Param(jnp.zeros((2, 3))).sharding == ()
  sharded = Param(jnp.zeros((2, 3)), metadata={"sharding": (None, "model")})
  assert sharded.sharding == (None, "model")
  one_axis = Param(jnp.zeros(4), metadata={"sharding": "data"})
  assert one_axis.sharding == ("data",)


def test_param_replace_changes_only_the_named_fields() -> None:
  value, other = jnp.zeros(2), jnp.ones(2)
  param = Param(value, metadata={"tag": "a"})
  replaced = param.replace(value=other)
  assert replaced.value is other
  assert replaced.trainable is True and replaced.metadata == {"tag": "a"}
  frozen = param.replace(trainable=False, metadata={"tag": "b"})
  assert frozen.value is value
  assert frozen.trainable is False and frozen.metadata == {"tag": "b"}
  # The original is untouched.
  assert param.value is value and param.trainable and param.metadata == {"tag": "a"}


def test_param_replace_rejects_unknown_fields() -> None:
  with pytest.raises(TypeError, match="shape"):
    Param(jnp.zeros(2)).replace(shape=(3,))


@pytest.mark.parametrize("trainable", [1, 0, "yes", None, jnp.array(True)])
def test_param_trainable_must_be_a_bool(trainable: object) -> None:
  with pytest.raises(TypeError, match="trainable must be a bool"):
    Param(jnp.zeros(2), trainable=trainable)  # type: ignore[arg-type]  # the point: wrong type
  with pytest.raises(TypeError, match="trainable must be a bool"):
    Param(jnp.zeros(2)).replace(trainable=trainable)


@pytest.mark.parametrize("metadata", [[("tag", "a")], "tag", 3, ("tag",)])
def test_param_metadata_must_be_a_mapping(metadata: object) -> None:
  with pytest.raises(TypeError, match="metadata must be a mapping"):
    Param(jnp.zeros(2), metadata=metadata)  # type: ignore[arg-type]  # the point: wrong type


def test_param_metadata_keys_must_be_strings() -> None:
  with pytest.raises(TypeError, match="keys must be strings"):
    Param(jnp.zeros(2), metadata={1: "a"})  # type: ignore[dict-item]  # the point: wrong key type


@pytest.mark.parametrize("value", [["data", None], {"a": 1}, {1, 2}])
def test_param_unhashable_metadata_raises_naming_the_entry(value: object) -> None:
  with pytest.raises(TypeError, match="'sharding'.*unhashable.*tuple"):
    Param(jnp.zeros(2), metadata={"sharding": value})
  with pytest.raises(TypeError, match="unhashable"):
    Param(jnp.zeros(2)).replace(metadata={"sharding": value})


def test_param_equality_uses_value_identity() -> None:
  value = jnp.zeros(2)
  assert Param(value, metadata={"a": 1}) == Param(value, metadata={"a": 1})
  assert Param(value) != Param(jnp.zeros(2))
  assert Param(value) != Param(value, trainable=False)
  assert Param(value) != Param(value, metadata={"a": 1})
  with pytest.raises(TypeError):
    hash(Param(value))


def test_param_repr_shows_shape_and_dtype_not_values() -> None:
  text = repr(Param(jnp.full((2, 3), 7.5), trainable=False, metadata={"tag": "a"}))
  assert "float32[2, 3]" in text
  assert "trainable=False" in text and "'tag'" in text
  assert "7.5" not in text


@settings(max_examples=60, deadline=None)
@given(_metadata_dicts, _metadata_dicts)
def test_metadata_behaves_like_a_hashable_read_only_dict(
    entries: dict[str, Hashable], changes: dict[str, Hashable]
) -> None:
  metadata = Metadata(entries)
  assert dict(metadata) == entries
  assert len(metadata) == len(entries)
  assert list(metadata) == list(entries)
  assert metadata == entries
  # Equal metadata hash alike, whatever the insertion order.
  reordered = Metadata(dict(reversed(list(entries.items()))))
  assert reordered == metadata and hash(reordered) == hash(metadata)
  merged = metadata.merged(changes)
  assert dict(merged) == {**entries, **changes}
  assert dict(metadata) == entries  # merged() leaves its input alone
  assert isinstance(merged, Mapping)


def test_metadata_inequality() -> None:
  assert Metadata({"a": 1}) != Metadata({"a": 2})
  assert Metadata({"a": 1}) != {"b": 1}
  assert Metadata({"a": 1}) != [("a", 1)]
