"""Tests of `Rng`: seeding rules, stored params and the key stream."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.graph import Graph
from blox.nn import Dropout, Linear, Rng, initializers
from blox.params import RNG_COUNTER, RNG_SEED, RNG_STREAM, Params

_SEED = ("net", "rng", "seed")
_COUNTER = ("net", "rng", "counter")


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _rng() -> Rng:
  return Rng(Graph("net").child("rng"))


def _same_key(a: jax.Array, b: jax.Array) -> bool:
  return bool(np.array_equal(jax.random.key_data(a), jax.random.key_data(b)))


def test_int_seed_becomes_a_typed_key_and_counter_starts_at_zero() -> None:
  rng = _rng()
  params = rng.seed(Params(), seed=3)
  assert list(params) == [_SEED, _COUNTER]
  seed = rng.get_seed(params)
  assert jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
  assert _same_key(seed, jax.random.key(3))
  counter = rng.get_counter(params)
  assert counter.dtype == jnp.uint32 and counter.shape == () and int(counter) == 0


def test_integer_scalar_arrays_are_seeds_too() -> None:
  rng = _rng()
  for seed in (jnp.int32(3), jnp.asarray(3, jnp.uint32)):
    params = rng.seed(Params(), seed=seed)
    assert _same_key(rng.get_seed(params), jax.random.key(3))


def test_key_array_is_stored_as_is() -> None:
  rng = _rng()
  key = jax.random.fold_in(jax.random.key(1), 5)
  params = rng.seed(Params(), seed=key, counter=7)
  assert rng.get_seed(params) is key
  assert int(rng.get_counter(params)) == 7
  assert rng.get_counter(params).dtype == jnp.uint32


def test_seed_and_counter_are_non_trainable_and_tagged() -> None:
  params = _rng().seed(Params(), seed=0)
  assert not params[_SEED].trainable and not params[_COUNTER].trainable
  assert params[_SEED].metadata[RNG_STREAM] == RNG_SEED
  assert params[_COUNTER].metadata[RNG_STREAM] == RNG_COUNTER
  trainable, rest = params.split()
  assert len(trainable) == 0 and len(rest) == 2


def test_update_changes_only_the_given_fields() -> None:
  rng = _rng()
  params = rng.seed(Params(), seed=0, counter=4).locked()
  moved = rng.seed(params, counter=9)
  assert int(rng.get_counter(moved)) == 9
  assert _same_key(rng.get_seed(moved), jax.random.key(0))
  reseeded = rng.seed(params, seed=1)
  assert int(rng.get_counter(reseeded)) == 4
  assert _same_key(rng.get_seed(reseeded), jax.random.key(1))
  # Updating works on locked params and keeps their structure.
  assert _treedef(reseeded) == _treedef(params)


def test_seeding_errors() -> None:
  rng = _rng()
  with pytest.raises(ValueError, match=r"Rng 'net/rng': give seed=\.\.\., counter=\.\.\. or both"):
    rng.seed(Params())
  with pytest.raises(ValueError, match=r"Rng 'net/rng' has no stream yet.*rng.seed\(params, seed=\.\.\.\)"):
    rng.seed(Params(), counter=1)
  with pytest.raises(TypeError, match="seed must be an int or a key array"):
    rng.seed(Params(), seed="0")  # type: ignore[arg-type]  # the misuse under test


@pytest.mark.parametrize(
    "seed", [jax.random.PRNGKey(0), jnp.ones(()), True], ids=["raw uint32 key", "float scalar", "bool"]
)
def test_seeds_that_are_not_ints_or_typed_keys_are_refused(seed: Any) -> None:
  rng = _rng()
  with pytest.raises(TypeError, match=r"^Rng 'net/rng': seed must be an int or a key array.*jax\.random\.key\(0\)"):
    rng.seed(Params(), seed=seed)


def test_integer_scalar_arrays_and_traced_seeds_become_keys() -> None:
  rng = _rng()
  params = rng.seed(Params(), seed=np.int64(3))
  assert _same_key(rng.get_seed(params), jax.random.key(3))
  key = jax.jit(lambda s: rng(rng.seed(Params(), seed=s))[0])(jnp.int32(3))
  assert _same_key(key, jax.random.fold_in(jax.random.key(3), 0))


def test_reading_an_unseeded_stream_raises_key_error() -> None:
  rng = _rng()
  for read in (rng.get_seed, rng.get_counter, rng):
    with pytest.raises(KeyError, match=r"'net/rng' is not seeded.*call rng.seed\(params, seed=\.\.\.\)"):
      read(Params())


def test_call_returns_fold_in_and_advances_by_one() -> None:
  rng = _rng()
  params = rng.seed(Params(), seed=11, counter=5).locked()
  key, params = rng(params)
  assert _same_key(key, jax.random.fold_in(jax.random.key(11), 5))
  assert int(rng.get_counter(params)) == 6
  second, params = rng(params)
  assert _same_key(second, jax.random.fold_in(jax.random.key(11), 6))
  assert not _same_key(key, second)
  assert int(rng.get_counter(params)) == 7


def test_call_under_jit() -> None:
  rng = _rng()
  params = rng.seed(Params(), seed=2).locked()
  key, new_params = jax.jit(rng)(params)
  assert _same_key(key, jax.random.fold_in(jax.random.key(2), 0))
  assert int(rng.get_counter(new_params)) == 1


def test_creating_a_param_draws_exactly_one_key() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  no_bias = Linear(graph.child("a"), 2, rng=rng, use_bias=False)
  with_bias = Linear(graph.child("b"), 2, rng=rng)
  params = rng.seed(Params(), seed=0)
  _, params = no_bias(params, jnp.ones(3))
  assert int(rng.get_counter(params)) == 1
  # The zeros bias init ignores its key, but creation still draws one.
  _, params = with_bias(params, jnp.ones(3))
  assert int(rng.get_counter(params)) == 3
  # Reusing existing params draws nothing.
  _, params = with_bias(params, jnp.ones(3))
  assert int(rng.get_counter(params)) == 3
  kernel = params[("net", "a", "kernel")].value
  expected = initializers.lecun_normal()(
      jax.random.fold_in(jax.random.key(0), 0), (3, 2), jnp.float32
  )
  np.testing.assert_array_equal(kernel, expected)


def _mlp() -> tuple[Rng, Any]:
  """A function model: Linear, dropout (drawing from the stream while training), Linear."""
  graph = Graph("mlp")
  rng = Rng(graph.child("rng"))
  hidden = Linear(graph.child("hidden"), 4, rng=rng)
  dropout = Dropout(graph.child("dropout"), 0.5, rng=rng)
  out = Linear(graph.child("out"), 2, rng=rng)

  def model(params: Params, x: jax.Array, is_training: bool = True) -> tuple[jax.Array, Params]:
    x, params = hidden(params, x)
    x, params = dropout(params, x, is_training=is_training)
    return out(params, x)

  return rng, model


def _assert_same_params(a: Params, b: Params) -> None:
  assert list(a) == list(b)
  assert _treedef(a) == _treedef(b)  # trainable flags, metadata and the locked flag too
  for path in a:
    left, right = a[path].value, b[path].value
    if jnp.issubdtype(left.dtype, jax.dtypes.prng_key):
      assert _same_key(left, right)
    else:
      np.testing.assert_array_equal(left, right)


def test_init_equals_seed_call_and_lock() -> None:
  rng, model = _mlp()
  x = jnp.ones((3, 5))
  params = rng.seed(Params(), seed=7)
  _, params = model(params, x)
  params = params.locked()
  _assert_same_params(rng.init(model, x, seed=7), params)
  # Keyword arguments reach the model: evaluation draws no dropout key.
  evaluated = rng.init(model, x, seed=7, is_training=False)
  assert int(rng.get_counter(evaluated)) == int(rng.get_counter(params)) - 1
  assert inspect.signature(rng.init).parameters["seed"].default == 0


def test_init_returns_locked_params_and_takes_a_module() -> None:
  graph = Graph("net")
  rng = Rng(graph.child("rng"))
  linear = Linear(graph.child("out"), 2, rng=rng)
  params = rng.init(linear, jnp.ones(3))
  assert params.is_locked
  assert list(params) == [_SEED, _COUNTER, ("net", "out", "kernel"), ("net", "out", "bias")]
  assert _same_key(rng.get_seed(params), jax.random.key(0))  # seed=0 by default
  wider = Linear(graph.child("wider"), 3, rng=rng)
  with pytest.raises(RuntimeError, match=r"locked.*'wider'"):  # no new param
    wider(params, jnp.ones(3))


def test_init_under_jit_gives_the_eager_params() -> None:
  rng, model = _mlp()
  x = jnp.ones((3, 5))
  eager = rng.init(model, x, seed=7)
  _assert_same_params(jax.jit(lambda x: rng.init(model, x, seed=7))(x), eager)
  # The seed may be traced as well (an int array becomes a key).
  _assert_same_params(jax.jit(lambda s: rng.init(model, x, seed=s))(jnp.int32(7)), eager)
  shapes = jax.eval_shape(lambda: rng.init(model, x))
  assert shapes.is_locked and shapes[("mlp", "out", "kernel")].value.shape == (4, 2)


def test_init_names_a_model_that_returns_no_params() -> None:
  rng, model = _mlp()

  def outputs_only(params: Params, x: jax.Array) -> jax.Array:
    outputs: jax.Array = model(params, x)[0]
    return outputs

  with pytest.raises(TypeError, match=r"^Rng 'mlp/rng': init ran `.*outputs_only`, which returned"
                     r" ArrayImpl, not an \(outputs, params\) pair.*`return outputs, params`"):
    rng.init(outputs_only, jnp.ones((1, 5)))

  graph = Graph("bad")
  bad_rng = Rng(graph.child("rng"))

  class ParamsFirst(Linear):
    def __call__(self, params: Params, inputs: jax.Array) -> tuple[jax.Array, Params]:
      y, params = super().__call__(params, inputs)
      return params, y  # type: ignore[return-value]  # the mistake under test

  with pytest.raises(TypeError, match=r"init ran ParamsFirst 'bad/out', which returned a tuple of 2"):
    bad_rng.init(ParamsFirst(graph.child("out"), 2, rng=bad_rng), jnp.ones(3))
