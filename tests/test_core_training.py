"""End-to-end tests of the core through the umbrella: training under JAX transforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import blox as bx


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


class _Net:
  """Linear -> tanh -> Dropout -> Linear, on its own graph."""

  def __init__(self, name: str) -> None:
    graph = bx.Graph(name)
    self.rng = bx.Rng(graph.child("rng"))
    self.hidden = bx.Linear(graph.child("hidden"), 16, rng=self.rng)
    self.dropout = bx.Dropout(graph.child("dropout"), rate=0.1, rng=self.rng)
    self.out = bx.Linear(graph.child("out"), 1, rng=self.rng)

  def __call__(self, params: bx.Params, x: jax.Array, is_training: bool = True) -> tuple[jax.Array, bx.Params]:
    h, params = self.hidden(params, x)
    h, params = self.dropout(params, jnp.tanh(h), is_training=is_training)
    return self.out(params, h)

  def init(self, x: jax.Array) -> bx.Params:
    params = self.rng.seed(bx.Params(), seed=0)
    _, params = self(params, x)
    return params.locked()


def _data() -> tuple[jax.Array, jax.Array]:
  x = jax.random.normal(jax.random.key(0), (64, 3))
  y = jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5]]))
  return x, y


def _train_step(net: _Net, traces: list[int]) -> Callable[[bx.Params, jax.Array, jax.Array], tuple[bx.Params, jax.Array]]:
  def step(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[bx.Params, jax.Array]:
    traces.append(1)  # runs once per trace, never on a cached call
    trainable, rest = params.split()

    def loss_fn(trainable: bx.Params, rest: bx.Params) -> tuple[jax.Array, tuple[jax.Array, bx.Params]]:
      preds, new_params = net(trainable.merge(rest), x)
      _, new_rest = new_params.split()
      loss = jnp.mean((preds - y) ** 2)
      return loss, (loss, new_rest)

    grads, (loss, new_rest) = jax.grad(loss_fn, has_aux=True)(trainable, rest)
    trainable = jax.tree.map(lambda w, g: w - 0.1 * g, trainable, grads)
    return trainable.merge(new_rest), loss

  return jax.jit(step, donate_argnames="params")


def test_train_step_reduces_the_loss_without_retracing() -> None:
  net = _Net("train")
  x, y = _data()
  params = net.init(x)
  treedef = _treedef(params)
  traces: list[int] = []
  step = _train_step(net, traces)
  losses = []
  for _ in range(40):
    params, loss = step(params, x, y)
    losses.append(float(loss))
    assert _treedef(params) == treedef
  assert len(traces) == 1
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
  # The dropout stream advanced once per step: non-trainable state flowed back.
  assert int(net.rng.get_counter(params)) == 5 + 40  # 4 inits + 1 dropout at init
  assert params.is_locked


def test_three_calls_trace_once_and_keep_the_treedef() -> None:
  net = _Net("retrace")
  x, y = _data()
  params = net.init(x)
  treedef = _treedef(params)
  traces: list[int] = []
  step = _train_step(net, traces)
  for _ in range(3):
    params, _ = step(params, x, y)
  assert _treedef(params) == treedef
  assert len(traces) == 1


def test_donated_params_are_consumed() -> None:
  net = _Net("donate")
  x, y = _data()
  params = net.init(x)
  step = _train_step(net, [])
  kernel = params[("donate", "hidden", "kernel")].value
  kernel_before = np.array(kernel)  # a copy: a zero-copy view would block donation
  new_params, _ = step(params, x, y)
  # XLA reused the donated buffers (CPU supports donation): the old ones are gone.
  assert kernel.is_deleted()
  kernel_after = np.asarray(new_params[("donate", "hidden", "kernel")].value)
  assert kernel_after.shape == kernel_before.shape
  assert not np.array_equal(kernel_before, kernel_after)


def test_eval_shape_of_init_gives_abstract_params() -> None:
  net = _Net("abstract")
  x, _ = _data()
  abstract = jax.eval_shape(net.init, x)
  assert isinstance(abstract, bx.Params) and abstract.is_locked
  assert all(isinstance(param.value, jax.ShapeDtypeStruct) for param in abstract.values())
  assert abstract[("abstract", "hidden", "kernel")].value.shape == (3, 16)
  assert abstract[("abstract", "out", "bias")].value.shape == (1,)
  assert abstract[("abstract", "rng", "counter")].value.dtype == jnp.uint32
  concrete = net.init(x)
  assert list(abstract) == list(concrete)
  for path in concrete:
    assert abstract[path].trainable == concrete[path].trainable


def _lstm(name: str) -> tuple[bx.Rng, bx.LSTM]:
  graph = bx.Graph(name)
  rng = bx.Rng(graph.child("rng"))
  return rng, bx.LSTM(graph.child("lstm"), hidden_size=8, rng=rng)


def test_checkpoint_and_grad_through_lstm_apply() -> None:
  rng, lstm = _lstm("ckpt")
  x = jax.random.normal(jax.random.key(1), (2, 6, 3))
  _, params = lstm.apply(rng.seed(bx.Params(), seed=0), x)
  trainable, rest = params.locked().split()

  def apply(params: bx.Params, x: jax.Array) -> Any:
    return lstm.apply(params, x)

  def loss(trainable: bx.Params, rest: bx.Params, remat: bool) -> jax.Array:
    run = jax.checkpoint(apply) if remat else apply
    (outputs, state), _ = run(trainable.merge(rest), x)
    return jnp.sum(outputs**2) + jnp.sum(state.cell)

  grad = jax.jit(jax.grad(loss), static_argnums=2)
  plain = grad(trainable, rest, False)
  remat = grad(trainable, rest, True)
  assert _treedef(plain) == _treedef(trainable)
  for g_plain, g_remat in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    assert np.all(np.isfinite(g_plain))
    assert np.any(g_plain != 0)
    np.testing.assert_allclose(g_remat, g_plain, rtol=1e-5, atol=1e-6)


def test_vmap_init_and_runtime_pattern() -> None:
  graph = bx.Graph("lanes")
  rng = bx.Rng(graph.child("rng"))
  linear = bx.Linear(graph.child("linear"), 8, rng=rng)
  dropout = bx.Dropout(graph.child("dropout"), rate=0.5, rng=rng)

  def forward(params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    seed = rng.get_seed(params)
    if params.is_locked:
      # Runtime: a distinct stream per lane.
      params = rng.seed(params, seed=jax.random.fold_in(seed, jax.lax.axis_index("batch")))
    y, params = linear(params, x)
    y, params = dropout(params, y, is_training=True)
    # Restore the seed so that every lane returns the same params.
    return y, rng.seed(params, seed=seed)

  def init(x: jax.Array) -> bx.Params:
    _, params = forward(rng.seed(bx.Params(), seed=42), x)
    return params.locked()

  x = jnp.ones((4, 3))
  vmapped = jax.jit(jax.vmap(init, axis_name="batch", out_axes=None))(x)
  direct = init(x[0])
  assert list(vmapped) == list(direct)
  for path in direct:
    np.testing.assert_array_equal(
        np.asarray(jax.random.key_data(vmapped[path].value)) if path[-1] == "seed" else vmapped[path].value,
        np.asarray(jax.random.key_data(direct[path].value)) if path[-1] == "seed" else direct[path].value,
    )

  run = jax.jit(jax.vmap(forward, in_axes=(None, 0), out_axes=(0, None), axis_name="batch"))
  out, returned = run(vmapped, x)
  masks = {tuple(np.asarray(out[i] == 0).tolist()) for i in range(4)}
  assert len(masks) == 4
  assert _treedef(returned) == _treedef(vmapped)
  np.testing.assert_array_equal(
      jax.random.key_data(rng.get_seed(returned)), jax.random.key_data(rng.get_seed(vmapped))
  )
  assert int(rng.get_counter(returned)) == int(rng.get_counter(vmapped)) + 1
  np.testing.assert_array_equal(
      returned[("lanes", "linear", "kernel")].value, vmapped[("lanes", "linear", "kernel")].value
  )
