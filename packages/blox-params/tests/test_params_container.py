"""Plain tests of `Params` as a container: construction, mapping access,
locking, hand-loading with `params[path] = Param(...)`, split/merge and repr.

Order is per container (ranks in the structure; see blox.params._structure),
so no test depends on which paths other tests created first.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from blox.params import Param, Params


def _three() -> Params:
  return Params({
      ("ctr_encoder", "kernel"): Param(jnp.ones((2, 3))),
      ("ctr_encoder", "bias"): Param(jnp.zeros(3)),
      ("ctr_bn", "mean"): Param(jnp.zeros(3), trainable=False, metadata={"tag": "stats"}),
  })


def test_empty_params() -> None:
  params = Params()
  assert len(params) == 0
  assert list(params) == []
  assert not params.is_locked
  assert Params(locked=True).is_locked
  assert "0 params" in repr(params)


def test_constructor_checks_paths_and_params() -> None:
  with pytest.raises(TypeError, match="non-empty tuple of strings"):
    Params({"w": Param(jnp.ones(2))})  # type: ignore[dict-item]  # the point: a bad path
  with pytest.raises(TypeError, match="non-empty tuple of strings"):
    Params({(): Param(jnp.ones(2))})
  with pytest.raises(TypeError, match="non-empty tuple of strings"):
    Params({("a", 1): Param(jnp.ones(2))})  # type: ignore[dict-item]  # the point: a bad path
  with pytest.raises(TypeError, match=r"\('w',\) is ArrayImpl"):
    Params({("w",): jnp.ones(2)})  # type: ignore[dict-item]  # the point: not a Param


def test_getitem_returns_a_param_view() -> None:
  params = _three()
  param = params[("ctr_bn", "mean")]
  assert isinstance(param, Param)
  assert param.trainable is False
  assert param.metadata == {"tag": "stats"}
  assert param.value.shape == (3,)


def test_key_error_names_the_path_and_the_closest_paths() -> None:
  params = _three()
  with pytest.raises(KeyError) as info:
    params[("ctr_encoder", "kernal")]
  message = str(info.value)
  assert "('ctr_encoder', 'kernal')" in message
  assert "Closest existing paths: ('ctr_encoder', 'kernel')" in message


def test_key_error_without_close_paths_says_how_many_there_are() -> None:
  with pytest.raises(KeyError, match="hold 3 paths"):
    _three()[("zzzzzzzz",)]


def test_key_error_for_a_malformed_path_explains_paths() -> None:
  params = _three()
  for bad in ("ctr_encoder", ("ctr_encoder", 1), ()):
    with pytest.raises(KeyError, match="non-empty tuple of strings"):
      params[bad]  # type: ignore[index]  # the point: a malformed path
    assert bad not in params


def test_contains_len_and_views() -> None:
  params = _three()
  assert ("ctr_encoder", "bias") in params
  assert ("ctr_encoder",) not in params
  assert len(params) == 3
  assert list(params.keys()) == list(params)
  assert [p.value.shape for p in params.values()] == [(2, 3), (3,), (3,)]
  assert dict(params.items()) == params.as_dict()


def test_iteration_follows_the_given_order_not_the_alphabet() -> None:
  params = Params({
      ("order_test", "zeta"): Param(jnp.ones(1)),
      ("order_test", "alpha"): Param(jnp.ones(1)),
  })
  assert list(params) == [("order_test", "zeta"), ("order_test", "alpha")]
  # A container built from a dict lists the dict's order: no global registry.
  swapped = Params({
      ("order_test", "alpha"): Param(jnp.ones(1)),
      ("order_test", "zeta"): Param(jnp.ones(1)),
  })
  assert list(swapped) == [("order_test", "alpha"), ("order_test", "zeta")]
  # Each keeps its own order through split and merge.
  for container in (params, swapped):
    first, second = container.split(lambda path, _: path[-1] == "alpha")
    assert list(second.merge(first)) == list(container)


def test_locked_and_unlocked_return_new_containers() -> None:
  params = _three()
  locked = params.locked()
  assert locked is not params
  assert locked.is_locked and not params.is_locked
  assert not locked.unlocked().is_locked
  assert locked.is_locked


def test_params_object_is_immutable() -> None:
  params = _three()
  with pytest.raises(AttributeError, match="immutable"):
    params._values = ()
  assert len(params) == 3


def test_setitem_adds_and_replaces_while_unlocked() -> None:
  params = _three()
  before = params.locked()  # a container made earlier
  params[("ctr_head", "w")] = Param(jnp.ones(4), trainable=False, metadata={"a": 1})
  assert params[("ctr_head", "w")].trainable is False
  assert params[("ctr_head", "w")].metadata == {"a": 1}
  assert list(params)[-1] == ("ctr_head", "w")
  replacement = jnp.full((5,), 2.0)
  params[("ctr_encoder", "bias")] = Param(replacement)
  assert params[("ctr_encoder", "bias")].value is replacement
  assert len(params) == 4
  # Only the object written to changes.
  assert ("ctr_head", "w") not in before
  assert before[("ctr_encoder", "bias")].value.shape == (3,)


def test_setitem_refuses_when_locked() -> None:
  params = _three().locked()
  with pytest.raises(RuntimeError, match=r"\('ctr_head', 'w'\).*locked.*unlocked\(\)"):
    params[("ctr_head", "w")] = Param(jnp.ones(4))
  assert ("ctr_head", "w") not in params


def test_setitem_requires_a_param_and_a_path() -> None:
  params = _three()
  with pytest.raises(TypeError, match=r"must be set to a Param.*Param\(value\)"):
    params[("ctr_head", "w")] = jnp.ones(4)  # type: ignore[assignment]  # the point: not a Param
  with pytest.raises(TypeError, match="non-empty tuple of strings"):
    params["head"] = Param(jnp.ones(4))  # type: ignore[index]  # the point: a bad path
  assert len(params) == 3


def test_split_defaults_to_trainable() -> None:
  trainable, rest = _three().locked().split()
  assert list(trainable) == [("ctr_encoder", "kernel"), ("ctr_encoder", "bias")]
  assert list(rest) == [("ctr_bn", "mean")]
  assert trainable.is_locked and rest.is_locked


def test_split_with_a_predicate_sees_path_and_param() -> None:
  seen: list[tuple[tuple[str, ...], bool]] = []

  def predicate(path: tuple[str, ...], param: Param) -> bool:
    seen.append((path, param.trainable))
    return path[0] == "ctr_bn" or param.value.ndim == 2

  matching, rest = _three().split(predicate)
  assert seen == [
      (("ctr_encoder", "kernel"), True),
      (("ctr_encoder", "bias"), True),
      (("ctr_bn", "mean"), False),
  ]
  assert list(matching) == [("ctr_encoder", "kernel"), ("ctr_bn", "mean")]
  assert list(rest) == [("ctr_encoder", "bias")]


def test_merge_other_wins_and_keeps_flags() -> None:
  params = _three()
  newer = Params({("ctr_encoder", "bias"): Param(jnp.ones(3), trainable=False)})
  merged = params.merge(newer)
  assert merged[("ctr_encoder", "bias")].trainable is False
  assert float(merged[("ctr_encoder", "bias")].value[0]) == 1.0
  assert list(merged) == list(params)
  assert params[("ctr_encoder", "bias")].trainable is True


def test_merge_with_empty_or_non_params() -> None:
  params = _three()
  assert params.merge(Params()).as_dict() == params.as_dict()
  assert Params().merge(params).as_dict() == params.as_dict()
  with pytest.raises(TypeError, match="Can only merge Params"):
    params.merge({})  # type: ignore[arg-type]  # the point: not Params


def test_merge_locked_with_unlocked_says_what_to_do() -> None:
  with pytest.raises(ValueError, match=r"\.locked\(\) or \.unlocked\(\)"):
    _three().merge(_three().locked())


def test_repr_shows_paths_shapes_dtypes_and_lock_but_no_values() -> None:
  params = Params({
      ("net", "w"): Param(jnp.full((2, 3), 1234.5)),
      ("net", "step"): Param(jnp.array(987, jnp.int32), trainable=False),
  }).locked()
  text = repr(params)
  assert "locked=True" in text
  assert "('net', 'w')" in text and "('net', 'step')" in text
  assert "float32[2, 3]" in text and "int32[]" in text
  assert "non-trainable" in text
  assert "1234" not in text and "987" not in text
  assert "locked=False" in repr(params.unlocked())
