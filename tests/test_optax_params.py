"""optax on `Params`: structure kept, weight-decay masks, frozen params left alone."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import blox as bx

LR, DECAY = 0.1, 0.5


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _model() -> tuple[bx.Rng, bx.Linear, bx.Dropout, bx.Linear]:
  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  hidden = bx.Linear(graph.child("hidden"), 8, rng=rng)
  dropout = bx.Dropout(graph.child("dropout"), 0.25, rng=rng)
  out = bx.Linear(graph.child("out"), 2, rng=rng)
  return rng, hidden, dropout, out


def _init() -> tuple[tuple[bx.Rng, bx.Linear, bx.Dropout, bx.Linear], bx.Params]:
  modules = _model()
  rng, hidden, _, out = modules
  params = rng.seed(bx.Params(), seed=0)
  h, params = hidden(params, jnp.ones((1, 3)))
  _, params = out(params, h)
  return modules, params.locked()


def _params_in(state: Any) -> list[bx.Params]:
  """Every `Params` held in an optax state."""
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, bx.Params))
  return [leaf for leaf in leaves if isinstance(leaf, bx.Params)]


def _kernels(params: bx.Params) -> bx.Params:
  """The path-based mask: decay only params whose path ends in 'kernel'."""
  mask: bx.Params = jax.tree_util.tree_map_with_path(
      lambda key_path, _: key_path[-1].key[-1] == "kernel", params
  )
  return mask


def _zero_grad_step(optimizer: Any, trainable: bx.Params) -> bx.Params:
  """One step with zero gradients: only weight decay moves the params."""
  state = optimizer.init(trainable)
  grads = jax.tree.map(jnp.zeros_like, trainable)
  updates, _ = optimizer.update(grads, state, trainable)
  new: bx.Params = optax.apply_updates(trainable, updates)
  return new


def test_adamw_state_and_updates_keep_the_params_structure() -> None:
  _, params = _init()
  trainable, _ = params.split()
  optimizer = optax.adamw(1e-2)
  state = optimizer.init(trainable)
  moments = _params_in(state)
  assert len(moments) == 2  # mu and nu
  assert all(_treedef(m) == _treedef(trainable) for m in moments)
  grads = jax.tree.map(jnp.ones_like, trainable)
  updates, state = optimizer.update(grads, state, trainable)
  assert isinstance(updates, bx.Params)
  assert _treedef(updates) == _treedef(trainable)
  new = optax.apply_updates(trainable, updates)
  assert isinstance(new, bx.Params)
  assert _treedef(new) == _treedef(trainable)
  assert _treedef(new.merge(params.split()[1])) == _treedef(params)


def test_weight_decay_mask_from_paths_spares_biases() -> None:
  _, params = _init()
  trainable, _ = params.split()
  for mask in (_kernels, _kernels(trainable)):  # a function, or a tree built up front
    new = _zero_grad_step(optax.adamw(LR, weight_decay=DECAY, mask=mask), trainable)
    for path in trainable:
      before, after = trainable[path].value, new[path].value
      if path[-1] == "kernel":
        np.testing.assert_allclose(after, before * (1 - LR * DECAY), rtol=1e-6)
        assert not np.array_equal(after, before)
      else:
        np.testing.assert_array_equal(after, before)


def test_weight_decay_mask_from_metadata() -> None:
  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  layer = bx.Linear(
      graph.child("layer"), 4, rng=rng, kernel_metadata={"decay": False},
      bias_init=bx.initializers.ones,
  )
  params = rng.seed(bx.Params(), seed=1)
  _, params = layer(params, jnp.ones((1, 3)))
  trainable, _ = params.locked().split()
  optimizer = optax.adamw(
      LR, weight_decay=DECAY,
      mask=lambda p: bx.param_mask(p, lambda path, param: param.metadata.get("decay", True)),
  )
  new = _zero_grad_step(optimizer, trainable)
  kernel, bias = layer.param_path("kernel"), layer.param_path("bias")
  np.testing.assert_array_equal(new[kernel].value, trainable[kernel].value)
  np.testing.assert_allclose(new[bias].value, (1 - LR * DECAY) * np.ones(4), rtol=1e-6)


def test_frozen_params_stay_out_of_the_optimizer_and_do_not_move() -> None:
  (rng, hidden, dropout, out), params = _init()
  params = hidden.set_param(params, "kernel", trainable=False)
  frozen = hidden.param_path("kernel")
  x = jax.random.normal(jax.random.key(2), (16, 3))
  y = jnp.sin(x[:, :2])

  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    h, params = hidden(params, x)
    h, params = dropout(params, jax.nn.relu(h))
    prediction, params = out(params, h)
    return jnp.mean((prediction - y) ** 2), params

  optimizer = optax.adamw(1e-2, weight_decay=1e-2, mask=_kernels)
  state = optimizer.init(params.split()[0])
  for moments in _params_in(state):
    assert frozen not in moments
    assert set(moments) == set(params.split()[0])

  traces: list[int] = []

  @jax.jit
  def train_step(
      params: bx.Params, state: Any, x: jax.Array, y: jax.Array
  ) -> tuple[bx.Params, Any, jax.Array]:
    traces.append(1)
    loss, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    updates, state = optimizer.update(grads, state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), state, loss

  start = params
  losses = []
  for _ in range(20):
    params, state, loss = train_step(params, state, x, y)
    losses.append(float(loss))
  assert _treedef(params) == _treedef(start)
  np.testing.assert_array_equal(params[frozen].value, start[frozen].value)
  assert not params[frozen].trainable
  for path in params.split()[0]:
    assert not np.array_equal(params[path].value, start[path].value), path
  # One dropout draw per step.
  assert int(rng.get_counter(params)) == int(rng.get_counter(start)) + 20
  assert losses[-1] < losses[0]
  assert len(traces) == 1  # the structure never changed: one compile
