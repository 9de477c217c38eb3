"""Tests of the primitives modules build on: `get_or_create` and `set`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.params import KeySource, Param, Params, Path


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as a plain object: the jax stubs leave
  `PyTreeDef` unresolved, so mypy refuses `==` on it."""
  return jax.tree.structure(tree)

_COUNTER: Path = ("test_rng", "draws")


class CountingKeySource:
  """A key source that counts its draws, in Python and in the params."""

  def __init__(self) -> None:
    self.draws = 0

  def __call__(self, params: Params, /) -> tuple[Any, Params]:
    self.draws += 1
    key = jax.random.key(self.draws)
    if _COUNTER in params:
      count = params[_COUNTER].value
      return key, params.set(_COUNTER, count + jnp.uint32(1))
    params = params.unlocked() if params.is_locked else params
    params[_COUNTER] = Param(jnp.ones((), jnp.uint32), trainable=False)
    return key, params


def _zeros(key: Any, shape: Sequence[int], dtype: Any) -> jax.Array:
  return jnp.zeros(shape, dtype)


def test_counting_key_source_is_a_key_source() -> None:
  assert isinstance(CountingKeySource(), KeySource)


def test_get_or_create_creates_then_returns_the_existing_value() -> None:
  params = Params()
  value, created = params.get_or_create(("net", "w"), (2, 3), init=jax.nn.initializers.ones)
  assert value.shape == (2, 3) and value.dtype == jnp.float32
  assert ("net", "w") not in params  # the input is untouched
  assert created[("net", "w")].value is value
  again, same = created.get_or_create(("net", "w"), (2, 3), init=jax.nn.initializers.zeros)
  assert again is value
  assert same is created


def test_get_or_create_passes_key_shape_and_dtype_to_init() -> None:
  calls: list[tuple[Any, tuple[int, ...], Any]] = []

  def init(key: Any, shape: Sequence[int], dtype: Any) -> jax.Array:
    calls.append((key, tuple(shape), dtype))
    return jnp.zeros(shape, dtype)

  _, params = Params().get_or_create(("a",), [2, 1], init=init)
  _, params = params.get_or_create(("b",), (3,), init=init, param_dtype=jnp.int32)
  assert calls == [(None, (2, 1), jnp.float32), (None, (3,), jnp.int32)]
  assert params[("b",)].value.dtype == jnp.int32


def test_get_or_create_sets_trainable_and_metadata() -> None:
  _, params = Params().get_or_create(
      ("bn", "mean"), (3,), init=_zeros, trainable=False, metadata={"sharding": ("data",)}
  )
  param = params[("bn", "mean")]
  assert param.trainable is False
  assert param.sharding == ("data",)


def test_a_key_source_is_drawn_exactly_once_per_creation() -> None:
  source = CountingKeySource()
  keys: list[Any] = []

  def init(key: Any, shape: Sequence[int], dtype: Any) -> jax.Array:
    keys.append(key)
    return jax.random.normal(key, shape, dtype)

  params = Params()
  _, params = params.get_or_create(("a",), (2,), init=init, rng=source)
  # `_zeros` ignores its key: the draw still happens, so that adding or
  # removing an unused key does not shift every later key.
  _, params = params.get_or_create(("b",), (2,), init=_zeros, rng=source)
  assert source.draws == 2
  assert int(params[_COUNTER].value) == 2  # the source's own state was kept
  assert len(keys) == 1 and jnp.issubdtype(keys[0].dtype, jax.dtypes.prng_key)
  # An existing param draws nothing.
  _, same = params.get_or_create(("a",), (2,), init=init, rng=source)
  assert source.draws == 2 and same is params


def test_get_or_create_on_locked_params_names_the_path_and_unlocked() -> None:
  source = CountingKeySource()
  params = Params({("net", "w"): Param(jnp.ones(2))}).locked()
  with pytest.raises(RuntimeError) as info:
    params.get_or_create(("net", "w2"), (2,), init=_zeros, rng=source)
  message = str(info.value)
  assert "('net', 'w2')" in message
  assert "unlocked()" in message
  assert "Closest existing paths: ('net', 'w')" in message
  assert source.draws == 0
  # Reading an existing param works while locked.
  value, same = params.get_or_create(("net", "w"), (2,))
  assert value.shape == (2,) and same is params


def test_get_or_create_existing_with_another_shape_names_both() -> None:
  params = Params({("net", "w"): Param(jnp.ones((2, 3)))})
  with pytest.raises(ValueError, match=r"\('net', 'w'\).*\(2, 3\).*\(3, 2\)"):
    params.get_or_create(("net", "w"), (3, 2), init=_zeros)


def test_get_or_create_existing_with_another_dtype_names_both() -> None:
  params = Params({("net", "w"): Param(jnp.ones(2))})
  with pytest.raises(ValueError, match=r"\('net', 'w'\).*float32.*int32"):
    params.get_or_create(("net", "w"), (2,), init=_zeros, param_dtype=jnp.int32)
  with pytest.raises(ValueError, match="float32.*int8"):
    params.get_or_create(("net", "w"), param_dtype="int8")
  value, _ = params.get_or_create(("net", "w"), param_dtype=np.float32)
  assert value.dtype == jnp.float32


def test_get_or_create_existing_typed_key_with_its_dtype() -> None:
  key = jax.random.key(3)
  params = Params({("rng", "seed"): Param(key, trainable=False)})
  value, _ = params.get_or_create(("rng", "seed"), (), param_dtype=key.dtype)
  assert value is key
  with pytest.raises(ValueError, match="key<fry>.*float32"):
    params.get_or_create(("rng", "seed"), (), param_dtype=jnp.float32)


def test_get_or_create_creation_needs_shape_and_init() -> None:
  with pytest.raises(ValueError, match=r"\('w',\).*shape and an init"):
    Params().get_or_create(("w",), init=_zeros)
  with pytest.raises(ValueError, match=r"\('w',\).*shape and an init"):
    Params().get_or_create(("w",), (2,))


def test_get_or_create_checks_what_init_returns() -> None:
  with pytest.raises(ValueError, match=r"\('w',\).*shape \(3,\).*\(2,\)"):
    Params().get_or_create(("w",), (2,), init=lambda k, s, d: jnp.zeros(3))
  with pytest.raises(TypeError, match=r"\('w',\).*list"):
    Params().get_or_create(("w",), (2,), init=lambda k, s, d: [0.0, 0.0])


def test_get_or_create_checks_the_dtype_init_returns() -> None:
  def stubborn_init(key: object, shape: Sequence[int], dtype: object) -> jax.Array:
    return jnp.zeros(shape, jnp.int32)

  with pytest.raises(ValueError, match=r"'dt', 'w'.*dtype int32.*bfloat16 was requested"):
    Params().get_or_create(("dt", "w"), (2,), init=stubborn_init, param_dtype=jnp.bfloat16)


def test_get_or_create_checks_the_path() -> None:
  with pytest.raises(TypeError, match="non-empty tuple of strings"):
    Params().get_or_create("w", (2,), init=_zeros)  # type: ignore[arg-type]  # the point: a bad path


def test_set_replaces_the_value() -> None:
  params = Params({("w",): Param(jnp.ones(2), metadata={"a": 1})}).locked()
  new = jnp.full((2,), 5.0)
  updated = params.set(("w",), new)
  assert updated[("w",)].value is new
  assert updated.is_locked  # set works on locked params
  assert float(params[("w",)].value[0]) == 1.0
  assert updated[("w",)].metadata == {"a": 1}


def test_set_changes_trainable_and_merges_metadata() -> None:
  params = Params({("w",): Param(jnp.ones(2), metadata={"a": 1, "b": 2})})
  updated = params.set(("w",), trainable=False, metadata={"b": 3, "c": 4})
  assert updated[("w",)].trainable is False
  assert updated[("w",)].metadata == {"a": 1, "b": 3, "c": 4}
  assert updated[("w",)].value is params[("w",)].value
  assert params[("w",)].trainable is True
  assert params[("w",)].metadata == {"a": 1, "b": 2}


def test_set_missing_path_raises_key_error() -> None:
  params = Params({("net", "w"): Param(jnp.ones(2))})
  with pytest.raises(KeyError, match=r"\('net', 'v'\).*Closest existing paths: \('net', 'w'\)"):
    params.set(("net", "v"), jnp.ones(2))


def test_set_another_shape_or_dtype_raises_value_error() -> None:
  params = Params({("w",): Param(jnp.ones(2))})
  with pytest.raises(ValueError, match=r"\('w',\).*float32\[2\].*float32\[3\]"):
    params.set(("w",), jnp.ones(3))
  with pytest.raises(ValueError, match=r"float32\[2\].*int32\[2\]"):
    params.set(("w",), jnp.ones(2, jnp.int32))


@pytest.mark.parametrize("value", [1.0, [1.0, 2.0], "x"])
def test_set_non_array_raises_type_error(value: object) -> None:
  params = Params({("w",): Param(jnp.ones(2))})
  with pytest.raises(TypeError, match=r"\('w',\).*must be an array"):
    params.set(("w",), value)


def test_set_trainable_must_be_a_bool() -> None:
  params = Params({("w",): Param(jnp.ones(2))})
  with pytest.raises(TypeError, match="trainable must be a bool"):
    params.set(("w",), trainable=1)  # type: ignore[arg-type]  # the point: wrong type


def test_set_value_only_keeps_the_structure_object() -> None:
  # Only the value changes, so the (hashed, compared) structure is shared:
  # jit's cache lookup then short-circuits on identity.
  params = Params({("w",): Param(jnp.ones(2)), ("b",): Param(jnp.ones(1))}).locked()
  updated = params.set(("w",), jnp.zeros(2))
  assert _treedef(updated) == _treedef(params)
  assert updated._structure is params._structure


def test_a_changed_shape_names_the_dimension_and_says_to_reinitialise() -> None:
  _, params = Params().get_or_create(("net", "w"), (3, 4), init=_zeros)
  with pytest.raises(ValueError) as info:
    params.get_or_create(("net", "w"), (5, 4))
  message = str(info.value)
  assert message.startswith(
      "Param ('net', 'w') exists with shape (3, 4), but shape (5, 4) was requested:"
      " dimension 0 is 5, it was 3 when the param was created."
  )
  assert "If the module's input (for a layer, the input's last axis)" in message
  assert "re-initialise the params" in message
  assert "another name for a genuinely different param" in message
  with pytest.raises(ValueError, match=(
      r"dimension 0 is 6, it was 3; dimension 1 is 2, it was 4 when the param was created"
  )):
    params.get_or_create(("net", "w"), (6, 2))
  with pytest.raises(ValueError, match=r"it has 1 dimensions now, it had 2 when the param"):
    params.get_or_create(("net", "w"), (12,))


def test_a_changed_dtype_says_what_it_was_and_how_to_match_it() -> None:
  _, params = Params().get_or_create(("net", "w"), (2,), init=_zeros, param_dtype=jnp.bfloat16)
  with pytest.raises(ValueError) as info:
    params.get_or_create(("net", "w"), (2,), param_dtype=jnp.float32)
  message = str(info.value)
  assert message.startswith(
      "Param ('net', 'w') exists with dtype bfloat16, but dtype float32 was requested."
  )
  assert "astype(float32)" in message and "param_dtype=bfloat16" in message


def test_get_or_create_takes_keywords_after_shape_and_no_old_names() -> None:
  # `dtype` became `param_dtype` and `key_source` became `rng`; the old names
  # have no alias, and init can no longer be passed by position.
  old_dtype: Any = {"dtype": jnp.float32}
  old_source: Any = {"key_source": CountingKeySource()}
  with pytest.raises(TypeError, match="dtype"):
    Params().get_or_create(("w",), (2,), init=_zeros, **old_dtype)
  with pytest.raises(TypeError, match="key_source"):
    Params().get_or_create(("w",), (2,), init=_zeros, **old_source)
  positional: Any = Params().get_or_create
  with pytest.raises(TypeError, match="positional"):
    positional(("w",), (2,), _zeros)
