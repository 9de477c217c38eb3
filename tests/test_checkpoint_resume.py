"""Training resumed from a checkpoint continues bit for bit.

A small model with dropout (so the random stream matters) is trained N steps
in one go, and separately k steps, saved, loaded into a fresh template and
trained the remaining N - k steps. Both runs must end with identical params,
random stream included. The same holds for a whole training state (params,
AdamW state with a learning-rate schedule, step counter) saved in one file
and resumed in a fresh process: run as a script, this file resumes one.
"""

from __future__ import annotations

import pytest
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import blox as bx

STEPS, SAVE_AT, LEARNING_RATE = 6, 3, 0.05

_structure: Callable[[Any], object] = jax.tree.structure  # unannotated in JAX

# End to end (a script, several processes, or every guide): `pytest -m slow`, run by .ci/run.
pytestmark = pytest.mark.slow


class _Model:
  """Linear -> relu -> Dropout -> Linear, with one Rng for init and dropout."""

  def __init__(self) -> None:
    graph = bx.Graph("resume")
    self.rng = bx.Rng(graph.child("rng"))
    self.hidden = bx.Linear(graph.child("hidden"), 8, rng=self.rng)
    self.dropout = bx.Dropout(graph.child("dropout"), 0.5, rng=self.rng)
    self.out = bx.Linear(graph.child("out"), 1, rng=self.rng)

  def __call__(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    h, params = self.hidden(params, x)
    h, params = self.dropout(params, jax.nn.relu(h))
    return self.out(params, h)

  def init(self) -> bx.Params:
    return self.rng.init(self, jnp.zeros((1, 3)), seed=0)


def _batches() -> tuple[jax.Array, jax.Array]:
  x = jax.random.normal(jax.random.key(1), (STEPS, 4, 3))
  y = jnp.sum(x, axis=-1, keepdims=True)
  return x, y


def _make_step(model: _Model) -> Callable[[bx.Params, jax.Array, jax.Array], bx.Params]:
  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    prediction, params = model(params, x)
    return jnp.mean((prediction - y) ** 2), params

  @jax.jit
  def step(params: bx.Params, x: jax.Array, y: jax.Array) -> bx.Params:
    _, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    updated: bx.Params = jax.tree.map(lambda w, g: w - LEARNING_RATE * g, trainable, grads)
    return updated.merge(rest)

  return step


def _train(
    step: Callable[[bx.Params, jax.Array, jax.Array], bx.Params],
    params: bx.Params,
    start: int,
    stop: int,
) -> bx.Params:
  x, y = _batches()
  for i in range(start, stop):
    params = step(params, x[i], y[i])
  return params


def _bits(value: jax.Array) -> np.ndarray:
  if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
    value = jax.random.key_data(value)
  array = np.asarray(value)
  return array.view(f"u{array.dtype.itemsize}")


def test_resumed_training_continues_bit_for_bit(tmp_path: pathlib.Path) -> None:
  model = _Model()
  step = _make_step(model)
  initial = model.init()

  straight = _train(step, initial, 0, STEPS)

  halfway = _train(step, initial, 0, SAVE_AT)
  bx.save(tmp_path / "halfway.npz", halfway)
  template = jax.eval_shape(model.init)
  resumed = bx.load(tmp_path / "halfway.npz", like=template)
  assert _structure(resumed) == _structure(halfway)
  resumed = _train(step, resumed, SAVE_AT, STEPS)

  assert list(resumed) == list(straight)
  assert _structure(resumed) == _structure(straight)
  for path in straight:
    np.testing.assert_array_equal(
        _bits(resumed[path].value), _bits(straight[path].value), err_msg=str(path)
    )
  # The dropout stream really advanced, and training really moved the kernel.
  assert int(model.rng.get_counter(resumed)) > int(model.rng.get_counter(initial))
  kernel = ("resume", "hidden", "kernel")
  assert not np.array_equal(np.asarray(resumed[kernel].value), np.asarray(initial[kernel].value))


def test_fine_tuning_keeps_the_frozen_backbone_of_the_code(tmp_path: pathlib.Path) -> None:
  # A pretrained checkpoint, saved with every weight trainable.
  model = _Model()
  pretrained = model.init()
  assert all(param.trainable for path, param in pretrained.items() if path[1] != "rng")
  bx.save(tmp_path / "pretrained.npz", pretrained)
  # The fine-tuning code freezes the hidden layer and changes its metadata.
  hidden = [path for path in pretrained if path[1] == "hidden"]
  assert hidden
  frozen = pretrained
  for path in hidden:
    frozen = frozen.set(path, trainable=False, metadata={"note": "frozen"})
  template = jax.eval_shape(lambda: frozen)
  loaded = bx.load(tmp_path / "pretrained.npz", like=template)
  assert _structure(loaded) == _structure(frozen)
  trainable, rest = loaded.split()
  assert not set(hidden) & set(trainable) and set(hidden) <= set(rest)
  for path in hidden:
    assert loaded[path].metadata["note"] == "frozen"
    np.testing.assert_array_equal(_bits(loaded[path].value), _bits(pretrained[path].value))


# The whole training state: params, AdamW with a schedule, the step counter.

State = dict[str, Any]


def _optimizer() -> optax.GradientTransformation:
  return optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 0.05, 2, STEPS), weight_decay=0.01)


def _initial_state(model: _Model) -> State:
  params = model.init()
  trainable, _ = params.split()
  return {"params": params, "opt": _optimizer().init(trainable), "step": jnp.zeros((), jnp.int32)}


def _make_optax_step(model: _Model) -> Callable[[State, jax.Array, jax.Array], State]:
  optimizer = _optimizer()

  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    prediction, params = model(params, x)
    return jnp.mean((prediction - y) ** 2), params

  @jax.jit
  def step(state: State, x: jax.Array, y: jax.Array) -> State:
    _, params, grads = bx.value_and_grad(loss_fn)(state["params"], x, y)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, state["opt"], trainable)
    trainable = optax.apply_updates(trainable, updates)
    return {"params": trainable.merge(rest), "opt": opt_state, "step": state["step"] + 1}

  return step


def _train_state(model: _Model, state: State, stop: int) -> State:
  step = _make_optax_step(model)
  x, y = _batches()
  for i in range(int(state["step"]), stop):
    state = step(state, x[i], y[i])
  return state


def _resume(checkpoint: str, out: str) -> None:
  """In a fresh process: load the state saved at SAVE_AT, finish, save the end."""
  model = _Model()
  state = bx.load(checkpoint, like=jax.eval_shape(lambda: _initial_state(model)))
  assert int(state["step"]) == SAVE_AT
  bx.save(out, _train_state(model, state, STEPS))


def test_a_whole_training_state_resumes_bit_for_bit_in_a_fresh_process(
    tmp_path: pathlib.Path,
) -> None:
  model = _Model()
  initial = _initial_state(model)
  straight = _train_state(model, initial, STEPS)
  bx.save(tmp_path / "halfway.npz", _train_state(model, initial, SAVE_AT))
  subprocess.run(
      [sys.executable, __file__, str(tmp_path / "halfway.npz"), str(tmp_path / "end.npz")],
      check=True, timeout=120,
  )
  resumed = bx.load(tmp_path / "end.npz", like=jax.eval_shape(lambda: initial))
  assert _structure(resumed) == _structure(straight)
  leaves = jax.tree_util.tree_leaves_with_path(straight)
  for (key, expected), got in zip(leaves, jax.tree.leaves(resumed)):
    assert got.dtype == expected.dtype, jax.tree_util.keystr(key)
    np.testing.assert_array_equal(_bits(got), _bits(expected), err_msg=jax.tree_util.keystr(key))
  # Training, the optimizer and the dropout stream really moved on.
  assert int(resumed["step"]) == STEPS and int(resumed["opt"][0].count) == STEPS
  assert int(model.rng.get_counter(resumed["params"])) > int(model.rng.get_counter(initial["params"]))
  assert not np.array_equal(np.asarray(resumed["opt"][0].mu[("resume", "out", "kernel")].value), 0)


if __name__ == "__main__":
  _resume(sys.argv[1], sys.argv[2])
