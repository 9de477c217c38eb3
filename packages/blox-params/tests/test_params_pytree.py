"""`Params` as a JAX pytree: keys, static structure, and the transformations
(jit with donation, grad, vmap, eval_shape) with typed PRNG key leaves."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blox.params import Param, Params


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as a plain object: the jax stubs leave
  `PyTreeDef` unresolved, so mypy refuses `==` on it."""
  return jax.tree.structure(tree)


def _model_params() -> Params:
  return Params({
      ("linear", "kernel"): Param(jnp.full((3, 2), 0.5), metadata={"sharding": (None, "model")}),
      ("linear", "bias"): Param(jnp.zeros(2)),
      ("rng", "seed"): Param(jax.random.key(0), trainable=False, metadata={"rng_stream": "seed"}),
      ("rng", "counter"): Param(
          jnp.zeros((), jnp.uint32), trainable=False, metadata={"rng_stream": "counter"}
      ),
  }).locked()


def _forward(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
  """A tiny stateful layer: a dense map plus dropout-like noise from the stream."""
  kernel = params[("linear", "kernel")].value
  bias = params[("linear", "bias")].value
  seed = params[("rng", "seed")].value
  counter = params[("rng", "counter")].value
  noise = jax.random.uniform(jax.random.fold_in(seed, counter), (2,))
  out = x @ kernel + bias + 0.0 * noise
  return out, params.set(("rng", "counter"), counter + jnp.uint32(1))


def test_keys_name_the_paths() -> None:
  params = _model_params()
  keyed, _ = jax.tree_util.tree_flatten_with_path(params)
  texts = [jax.tree_util.keystr(key) for key, _ in keyed]
  assert texts == [f"[{path!r}]" for path in params]
  assert [leaf for _, leaf in keyed] == [p.value for p in params.values()]


def test_tree_map_with_path_sees_the_paths() -> None:
  params = _model_params().split()[0]
  scaled = jax.tree_util.tree_map_with_path(
      lambda key, x: x * 2 if "kernel" in jax.tree_util.keystr(key) else x, params
  )
  assert float(scaled[("linear", "kernel")].value[0, 0]) == 1.0
  assert scaled[("linear", "bias")].value is params[("linear", "bias")].value


def test_leaves_are_the_values_and_flags_are_static() -> None:
  params = _model_params()
  leaves = jax.tree.leaves(params)
  assert len(leaves) == 4
  for leaf, param in zip(leaves, params.values()):
    assert leaf is param.value
  treedef = _treedef(params)
  assert _treedef(params.set(("linear", "bias"), trainable=False)) != treedef
  assert _treedef(params.set(("linear", "bias"), metadata={"x": 1})) != treedef
  assert _treedef(params.unlocked()) != treedef
  assert _treedef(params.set(("linear", "bias"), jnp.ones(2))) == treedef


def test_jit_keeps_flags_metadata_and_lock_and_does_not_retrace() -> None:
  traces: list[int] = []

  def step(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    traces.append(1)
    return _forward(params, x)

  jitted = jax.jit(step)
  params = _model_params()
  x = jnp.ones((1, 3))
  out, new_params = jitted(params, x)
  assert out.shape == (1, 2)
  assert new_params.is_locked
  assert list(new_params) == list(params)
  assert new_params[("rng", "seed")].trainable is False
  assert new_params[("linear", "kernel")].sharding == (None, "model")
  assert int(new_params[("rng", "counter")].value) == 1
  assert jnp.issubdtype(new_params[("rng", "seed")].value.dtype, jax.dtypes.prng_key)
  # Feeding outputs back, or a split/merge round trip of them, hits the cache.
  _, newer = jitted(new_params, x)
  trainable, rest = newer.split()
  _, merged_once = jitted(trainable.merge(rest), x)
  trainable, rest = merged_once.split()
  _, newest = jitted(rest.merge(trainable), x)
  assert int(newest[("rng", "counter")].value) == 4
  assert len(traces) == 1
  # A changed static field is another structure, so it traces again.
  jitted(newest.set(("linear", "bias"), trainable=False), x)
  assert len(traces) == 2


def test_jit_with_donated_params() -> None:
  def step(params: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    out, params = _forward(params, x)
    return out, jax.tree.map(lambda v: v, params)

  jitted = jax.jit(step, donate_argnames="params")
  params = _model_params()
  bias = params[("linear", "bias")].value
  with warnings.catch_warnings():
    # Backends that cannot reuse some buffer say so in a warning; the
    # result is correct either way.
    warnings.simplefilter("ignore")
    out, new_params = jitted(params, jnp.ones((1, 3)))
    out, new_params = jitted(new_params, jnp.ones((1, 3)))
  assert out.shape == (1, 2)
  assert int(new_params[("rng", "counter")].value) == 2
  assert new_params.is_locked
  if jax.default_backend() == "cpu":
    assert bias.is_deleted()  # donated: the buffer now belongs to the output


def test_grad_over_the_trainable_half() -> None:
  params = _model_params()
  trainable, rest = params.split()

  def loss(t: Params, nt: Params, x: jax.Array) -> tuple[jax.Array, Params]:
    out, new = _forward(t.merge(nt), x)
    return jnp.sum(out), new.split()[1]

  grads, new_rest = jax.grad(loss, has_aux=True)(trainable, rest, jnp.ones((1, 3)))
  assert isinstance(grads, Params)
  assert list(grads) == list(trainable)
  assert _treedef(grads) == _treedef(trainable)
  np.testing.assert_allclose(grads[("linear", "kernel")].value, np.ones((3, 2)))
  np.testing.assert_allclose(grads[("linear", "bias")].value, np.ones(2))
  assert int(new_rest[("rng", "counter")].value) == 1
  updated = jax.tree.map(lambda w, g: w - 0.1 * g, trainable, grads).merge(new_rest)
  assert _treedef(updated) == _treedef(params)


def test_vmap_with_replicated_and_batched_params() -> None:
  params = _model_params()
  xs = jnp.ones((4, 1, 3))
  outs, new_params = jax.vmap(_forward, in_axes=(None, 0), out_axes=(0, None))(params, xs)
  assert outs.shape == (4, 1, 2)
  assert int(new_params[("rng", "counter")].value) == 1
  assert new_params.is_locked
  # Params as a batched argument: a stack of 4 biases.
  weights = params.split()[0]
  stacked = jax.tree.map(lambda v: jnp.stack([v] * 4), weights)
  assert stacked[("linear", "bias")].value.shape == (4, 2)
  sums = jax.vmap(lambda p: jnp.sum(p[("linear", "kernel")].value))(stacked)
  np.testing.assert_allclose(sums, np.full(4, 3.0))


def test_eval_shape_gives_abstract_params() -> None:
  def init() -> Params:
    params = Params()
    _, params = params.get_or_create(("net", "w"), (5, 2), init=jax.nn.initializers.lecun_normal(),
                                     rng=lambda p: (jax.random.key(0), p))
    _, params = params.get_or_create(("net", "n"), (), init=lambda k, s, d: jnp.zeros(s, d),
                                     param_dtype=jnp.int32, trainable=False)
    return params.locked()

  abstract = jax.eval_shape(init)
  assert isinstance(abstract, Params)
  assert abstract.is_locked
  value = abstract[("net", "w")].value
  assert isinstance(value, jax.ShapeDtypeStruct)
  assert value.shape == (5, 2) and value.dtype == jnp.float32
  assert abstract[("net", "n")].trainable is False
  assert "float32[5, 2]" in repr(abstract)
  # Abstract params answer get_or_create like concrete ones.
  existing, same = abstract.get_or_create(("net", "w"), (5, 2), param_dtype=jnp.float32)
  assert existing is value and same is abstract
  with pytest.raises(ValueError, match=r"\(5, 2\).*\(2, 5\)"):
    abstract.get_or_create(("net", "w"), (2, 5))
  # Their structure is the one jit will see for the concrete params.
  assert _treedef(abstract) == _treedef(jax.jit(init)())


def test_eval_shape_of_a_step() -> None:
  abstract_out, abstract_params = jax.eval_shape(_forward, _model_params(), jnp.ones((1, 3)))
  assert abstract_out.shape == (1, 2)
  seed = abstract_params[("rng", "seed")].value
  assert isinstance(seed, jax.ShapeDtypeStruct)
  assert jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)


def test_typed_key_leaves_round_trip_and_split() -> None:
  params = Params({("rng", "seed"): Param(jax.random.key(7), trainable=False)})
  leaves, treedef = jax.tree.flatten(params)
  assert jnp.issubdtype(leaves[0].dtype, jax.dtypes.prng_key)
  rebuilt = jax.tree.unflatten(treedef, leaves)
  assert rebuilt[("rng", "seed")].value is leaves[0]

  @jax.jit
  def advance(p: Params) -> Params:
    new_key = jax.random.split(p[("rng", "seed")].value)[0]
    return p.set(("rng", "seed"), new_key)

  advanced = advance(params)
  assert advanced[("rng", "seed")].value.dtype == params[("rng", "seed")].value.dtype
  assert not bool(
      jnp.all(jax.random.key_data(advanced[("rng", "seed")].value)
              == jax.random.key_data(params[("rng", "seed")].value))
  )


def test_a_step_that_splits_and_merges_keeps_matching_out_shardings() -> None:
  # out_shardings are built from the input's structure (with Params.map); the
  # step returns params put together from sub-splits, which must have that
  # very structure for jit to accept them.
  params = _model_params()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = params.map(lambda path, param: device)
  traces: list[int] = []

  def step(params: Params) -> Params:
    traces.append(1)
    trainable, rest = params.split()
    kernel, others = trainable.split(lambda path, _: path[-1] == "kernel")
    kernel = jax.tree.map(lambda w: w * 2, kernel)
    return rest.merge(others.merge(kernel))

  jitted = jax.jit(step, out_shardings=shardings)
  out = jitted(jitted(params))
  assert _treedef(out) == _treedef(params) == _treedef(shardings)
  assert len(traces) == 1
  np.testing.assert_allclose(out[("linear", "kernel")].value, 2.0)
