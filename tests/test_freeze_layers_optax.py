"""Freezing chosen layers of a layer stack, trained with optax's AdamW.

A layer stack (`blox.graph.Repeat`) stores each param once for all its layers,
with a leading layer axis and metadata `STACKED: (num_layers,)`; one trainable
flag covers every layer. `params.freeze(where, layers=[...])` records the
frozen layers, `value_and_grad` gives them zero gradients, and
`restore_frozen_layers` puts their values back after the optimizer step. The
params of most tests here are stacked by hand (as Repeat stores them) and
run by a `lax.scan` over the layers, so that only blox.params and optax are
involved; the last test trains a real `bx.Repeat` of `bx.Linear` layers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import blox as bx
from blox.params import STACKED, Param, Params, restore_frozen_layers, value_and_grad

NUM_LAYERS = 4
WIDTH = 3
FROZEN = [0, 1]
KERNEL = ("net", "stack", "kernel")
BIAS = ("net", "stack", "bias")
HEAD = ("net", "head", "kernel")
STEP = ("net", "step")
SEED = ("rng", "seed")


def _params() -> Params:
  keys = jax.random.split(jax.random.key(0), 3)
  kernel = jax.random.normal(keys[0], (NUM_LAYERS, WIDTH, WIDTH)) / WIDTH
  # Negative zeros in the frozen layers: a zero update would flip them to +0.0.
  kernel = kernel.at[0, 0, 0].set(-0.0).at[1, 2, 1].set(-0.0)
  return Params({
      KERNEL: Param(kernel, metadata={STACKED: (NUM_LAYERS,)}),
      BIAS: Param(jnp.full((NUM_LAYERS, WIDTH), -0.0), metadata={STACKED: (NUM_LAYERS,)}),
      HEAD: Param(jax.random.normal(keys[1], (WIDTH, 1))),
      STEP: Param(jnp.zeros((), jnp.int32), trainable=False),
      SEED: Param(keys[2], trainable=False),
  }).locked()


def _loss(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Params]:
  def layer(h: jax.Array, weights: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
    kernel, bias = weights
    return jnp.tanh(h @ kernel + bias), None

  h, _ = jax.lax.scan(layer, x, (params[KERNEL].value, params[BIAS].value))
  loss = jnp.mean((h @ params[HEAD].value - y) ** 2)
  return loss, params.set(STEP, params[STEP].value + 1)


def _data() -> tuple[jax.Array, jax.Array]:
  x = jax.random.normal(jax.random.key(1), (16, WIDTH))
  return x, jnp.sum(x, axis=1, keepdims=True)


def _train(params: Params, steps: int, restore: bool) -> tuple[Params, list[Any]]:
  optimizer = optax.adamw(1e-2, weight_decay=0.1)
  opt_state = optimizer.init(params.split()[0])

  @jax.jit
  def train_step(params: Params, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Params, Any, Params]:
    _, params, grads = value_and_grad(_loss)(params, x, y)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    stepped = optax.apply_updates(trainable, updates)
    if restore:
      stepped = restore_frozen_layers(stepped, trainable)
    return stepped.merge(rest), opt_state, grads

  x, y = _data()
  all_grads = []
  for _ in range(steps):
    params, opt_state, grads = train_step(params, opt_state, x, y)
    all_grads.append(grads)
  return params, all_grads


def _treedef(tree: Any) -> object:
  """The pytree structure, typed as object (jax's stubs leave PyTreeDef unresolved)."""
  return jax.tree.structure(tree)


def _bits(value: Any) -> np.ndarray:
  return np.asarray(value).view(np.uint32)


def test_adamw_with_weight_decay_leaves_frozen_layers_bit_identical() -> None:
  before = _params().freeze("net/stack/.*", layers=FROZEN)
  after, grads = _train(before, steps=5, restore=True)
  assert int(after[STEP].value) == 5
  assert _treedef(after) == _treedef(before)
  for path in (KERNEL, BIAS):
    old, new = before[path].value, after[path].value
    np.testing.assert_array_equal(_bits(new[:2]), _bits(old[:2]))  # frozen: every bit
    assert (np.asarray(new[2:]) != np.asarray(old[2:])).any()  # trained layers moved
    for step_grads in grads:
      assert not np.asarray(step_grads[path].value[:2]).any()
  assert jnp.signbit(after[BIAS].value[:2]).all()  # the -0.0 biases are still -0.0
  assert (np.asarray(after[HEAD].value) != np.asarray(before[HEAD].value)).any()


def test_without_the_restore_weight_decay_moves_the_frozen_layers() -> None:
  # Why restore_frozen_layers exists: a zero gradient does not stop AdamW's
  # decoupled weight decay, which shrinks every nonzero weight.
  before = _params().freeze("net/stack/.*", layers=FROZEN)
  after, _ = _train(before, steps=2, restore=False)
  old, new = np.asarray(before[KERNEL].value[:2]), np.asarray(after[KERNEL].value[:2])
  assert (np.abs(new) < np.abs(old)).any()


def test_unfreezing_the_layers_trains_them_again() -> None:
  frozen = _params().freeze("net/stack/.*", layers=FROZEN)
  thawed = frozen.unfreeze("net/stack/.*", layers=FROZEN)
  after, _ = _train(thawed, steps=2, restore=True)
  assert (np.asarray(after[KERNEL].value[:2]) != np.asarray(thawed[KERNEL].value[:2])).any()


def test_a_repeat_of_linear_layers_trains_only_its_unfrozen_layers() -> None:
  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  blocks = bx.Repeat(
      graph.child("blocks"), lambda node: bx.Linear(node, WIDTH, rng=rng), num_layers=NUM_LAYERS
  )
  x, y = _data()
  params = rng.seed(bx.Params(), seed=0)
  _, params = blocks(params, x)
  before = params.locked().freeze("net/blocks/layer/.*", layers=FROZEN)
  optimizer = optax.adamw(1e-2, weight_decay=0.1)
  opt_state = optimizer.init(before.split()[0])

  def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Params]:
    out, params = blocks(params, x)
    return jnp.mean((out[:, :1] - y) ** 2), params

  @jax.jit
  def train_step(params: Params, opt_state: Any) -> tuple[Params, Any]:
    _, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    stepped = restore_frozen_layers(optax.apply_updates(trainable, updates), trainable)
    return stepped.merge(rest), opt_state

  after = before
  for _ in range(3):
    after, opt_state = train_step(after, opt_state)
  stacked = [path for path in before if path[:3] == ("net", "blocks", "layer")]
  assert len(stacked) == 2  # the kernel and the bias
  for path in stacked:
    old, new = before[path].value, after[path].value
    np.testing.assert_array_equal(_bits(new[:2]), _bits(old[:2]))
    assert (np.asarray(new[2:]) != np.asarray(old[2:])).any()
