"""`blox.params` on its own: the state of a model written as plain JAX functions.

`blox.params` depends on jax and numpy only. Any JAX code can keep its state
in a `Params` container and get trainable/non-trainable splitting, locking,
a pytree that `jax.jit` flattens as cheaply as a tuple, and checkpoints,
without using blox's modules. Here the model is three plain functions that
read weights from a dict keyed by path:

- `normalize`: standardises the raw inputs with running statistics (mean and
  variance) that the train step updates: non-trainable state.
- `fourier_features`: a fixed random projection (like a frozen embedding):
  non-trainable, so it receives no gradient and no optimizer state.
- `mlp`: two dense layers: the only trainable params.

The task: tell whether a 2-D point lies inside a ring, from raw coordinates
on a large offset and scale (which is why the inputs need normalising).

Run from the repository root:

  uv run examples/params_from_another_framework.py          # 400 steps
  uv run examples/params_from_another_framework.py --fast   # 40 steps
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from blox.params import Param, Params, Path, load, save, value_and_grad

BATCH_SIZE = 128
MOMENTUM = 0.9

# A view of the params for plain functions: path -> array.
Weights = Mapping[Path, jax.Array]


def as_weights(params: Params) -> dict[Path, jax.Array]:
  """The values of `params` by path: what the model functions read."""
  return {path: param.value for path, param in params.items()}


# The model: plain functions of (weights, inputs).


def normalize(w: Weights, x: jax.Array) -> jax.Array:
  return (x - w[("inputs", "mean")]) * jax.lax.rsqrt(w[("inputs", "var")] + 1e-5)


def fourier_features(w: Weights, x: jax.Array) -> jax.Array:
  projected = x @ w[("fourier", "projection")]
  return jnp.concatenate([jnp.sin(projected), jnp.cos(projected)], axis=-1)


def dense(w: Weights, name: str, x: jax.Array) -> jax.Array:
  return x @ w[("mlp", name, "kernel")] + w[("mlp", name, "bias")]


def model(w: Weights, x: jax.Array) -> jax.Array:
  """One logit per point: inside the ring or not."""
  h = fourier_features(w, normalize(w, x))
  h = jax.nn.relu(dense(w, "hidden", h))
  return dense(w, "out", h)[..., 0]


def init_params(seed: int, features: int = 2, fourier: int = 32, hidden: int = 64) -> Params:
  """Builds the container by hand: each entry a `Param(value, trainable, metadata)`."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  glorot = jax.nn.initializers.glorot_normal()
  stats = {"kind": "batch_stats"}
  return Params({
      # Running statistics: updated by the train step, never by the optimizer.
      ("inputs", "mean"): Param(jnp.zeros(features), trainable=False, metadata=stats),
      ("inputs", "var"): Param(jnp.ones(features), trainable=False, metadata=stats),
      # A frozen random projection: part of the model, not of the training.
      ("fourier", "projection"): Param(
          2.0 * jax.random.normal(k1, (features, fourier)), trainable=False,
          metadata={"kind": "frozen"},
      ),
      ("mlp", "hidden", "kernel"): Param(glorot(k2, (2 * fourier, hidden))),
      ("mlp", "hidden", "bias"): Param(jnp.zeros(hidden)),
      ("mlp", "out", "kernel"): Param(glorot(k3, (hidden, 1))),
      ("mlp", "out", "bias"): Param(jnp.zeros(1)),
      ("step",): Param(jnp.zeros((), jnp.int32), trainable=False),
  })


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Points around (300, -40) spread by 50; label 1 inside the ring 0.5 < r < 1.2."""
  rng = np.random.default_rng(seed)
  unit = rng.uniform(-1.6, 1.6, size=(n, 2))
  radius = np.linalg.norm(unit, axis=-1)
  labels = ((radius > 0.5) & (radius < 1.2)).astype(np.float32)
  return (unit * 50.0 + np.array([300.0, -40.0])).astype(np.float32), labels


optimizer = optax.adam(1e-2)


@jax.jit(donate_argnames=("params", "opt_state"))
def train_step(
    params: Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array
) -> tuple[Params, optax.OptState, jax.Array]:
  # Non-trainable state changes by assignment, not by gradients.
  w = as_weights(params)
  mean, var = w[("inputs", "mean")], w[("inputs", "var")]
  params = params.set(("inputs", "mean"), MOMENTUM * mean + (1 - MOMENTUM) * x.mean(0))
  params = params.set(("inputs", "var"), MOMENTUM * var + (1 - MOMENTUM) * x.var(0))
  params = params.set(("step",), w[("step",)] + 1)

  def loss_fn(params: Params) -> tuple[jax.Array, Params]:
    logits = model(as_weights(params), x)
    return optax.sigmoid_binary_cross_entropy(logits, y).mean(), params

  # Gradients for the trainable params only (a Params shaped like
  # `params.split()[0]`); the rest is carried through untouched.
  loss, params, grads = value_and_grad(loss_fn)(params)
  trainable, rest = params.split()
  updates, opt_state = optimizer.update(grads, opt_state, trainable)
  return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss


@jax.jit
def accuracy(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  correct = (model(as_weights(params), x) > 0) == (y > 0.5)
  percent: jax.Array = 100.0 * jnp.mean(correct)
  return percent


def train(
    params: Params, opt_state: optax.OptState, x: np.ndarray, y: np.ndarray,
    steps: int, seed: int,
) -> tuple[Params, optax.OptState, list[float]]:
  batches = np.random.default_rng(seed)
  losses = []
  for _ in range(steps):
    pick = batches.integers(0, len(y), BATCH_SIZE)
    params, opt_state, loss = train_step(params, opt_state, x[pick], y[pick])
    losses.append(float(loss))
  return params, opt_state, losses


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="40 steps: a quick smoke test")
  args = parser.parse_args(argv)
  steps = 40 if args.fast else 400
  x_train, y_train = make_data(4000, seed=0)
  x_test, y_test = make_data(1000, seed=1)

  # 1. Construction, then locking: from now on the set of paths is fixed.
  params = init_params(seed=0).locked()
  print(params)
  try:
    params.get_or_create(("mlp", "hiden", "kernel"), (64, 64), init=jax.nn.initializers.zeros)
  except RuntimeError as error:
    print(f"locked params refuse a new (misspelt) path: {str(error).split('.')[0]}.")

  # 2. Split: the optimizer only ever sees the trainable half.
  trainable, rest = params.split()
  print(f"trainable: {[path for path in trainable]}")
  print(f"non-trainable: {[path for path in rest]}")
  opt_state = optimizer.init(trainable)
  frozen_before = np.asarray(params[("fourier", "projection")].value)

  # 3. Train with a jitted step (params and optimizer state are donated).
  half = steps // 2
  params, opt_state, losses = train(params, opt_state, x_train, y_train, half, seed=2)
  print(f"step {int(params[('step',)].value)}: loss {np.mean(losses[:5]):.4f} -> {np.mean(losses[-5:]):.4f}")
  print(f"running mean of the inputs: {np.round(np.asarray(params[('inputs', 'mean')].value), 1)}")

  # 4. Checkpoint: values, trainable flags, metadata and the locked flag.
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "ring.npz")
    save(path, params)
    restored = load(path, like=params)
  structure: Any = jax.tree.structure(restored)
  same_structure = bool(structure == jax.tree.structure(params))
  same_values = all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params))
  )
  print(
      f"checkpoint round trip: same structure (flags, metadata, locked) {same_structure},"
      f" identical values {same_values}"
  )

  # Training on from the checkpoint and from the live params gives the same
  # numbers: everything the step depends on was in the file.
  rest_of_steps = steps - half
  opt_copy = jax.tree.map(jnp.copy, opt_state)
  params, opt_state, losses_live = train(params, opt_state, x_train, y_train, rest_of_steps, seed=3)
  restored, _, losses_restored = train(restored, opt_copy, x_train, y_train, rest_of_steps, seed=3)
  resumed_identically = losses_live == losses_restored
  print(f"resumed from the checkpoint: identical losses {resumed_identically}")

  frozen_unchanged = np.array_equal(frozen_before, params[("fourier", "projection")].value)
  print(f"frozen projection unchanged by training: {frozen_unchanged}")
  acc = float(accuracy(params, x_test, y_test))
  print(f"step {int(params[('step',)].value)}: loss {np.mean(losses_live[-5:]):.4f}, test accuracy {acc:.1f}%")

  if not (same_structure and same_values and resumed_identically and frozen_unchanged):
    print("ERROR: the checkpoint round trip or the frozen params misbehaved")
    return 1
  if not args.fast and acc < 90.0:
    print(f"ERROR: test accuracy {acc:.1f}% is below 90%")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
