"""Handwritten digits with an MLP: train, evaluate, checkpoint, reload.

The data set is scikit-learn's 8x8 digits (1,797 images, shipped inside the
package, no download). The model is a small MLP with dropout; training uses
optax's AdamW inside one jitted step that splits the params into the
trainable half and the rest, differentiates the loss with respect to the
trainable half only, and merges the two halves back. The rest holds the
random stream of the dropout masks, whose counter advances every step.

Run from the repository root:

  uv run examples/digits_mlp.py          # ~40 epochs, test accuracy >= 95%
  uv run examples/digits_mlp.py --fast   # 2 epochs, a smoke test

It prints one line per epoch, then `test accuracy: NN.N%`, then saves the
params with `bx.save`, loads them back with `bx.load` and checks that the
reloaded model scores the same.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import blox as bx

BATCH_SIZE = 64
TEST_FRACTION = 0.2
REQUIRED_ACCURACY = 95.0


class MLP(bx.Module):
  """Linear -> relu -> dropout for each hidden layer, then a Linear readout."""

  def __init__(
      self,
      graph: bx.Graph,
      hidden_sizes: tuple[int, ...],
      num_classes: int,
      dropout_rate: float,
      rng: bx.Rng,
  ) -> None:
    super().__init__(graph)
    self.hidden = [
        bx.Linear(graph.child(f"hidden{i}"), size, rng=rng) for i, size in enumerate(hidden_sizes)
    ]
    # The same stream that initialises the kernels draws the dropout masks.
    self.dropout = [
        bx.Dropout(graph.child(f"dropout{i}"), dropout_rate, rng=rng)
        for i in range(len(hidden_sizes))
    ]
    self.readout = bx.Linear(graph.child("readout"), num_classes, rng=rng)

  def __call__(
      self, params: bx.Params, x: jax.Array, is_training: bool = True
  ) -> tuple[jax.Array, bx.Params]:
    for linear, dropout in zip(self.hidden, self.dropout):
      x, params = linear(params, x)
      x, params = dropout(params, jax.nn.relu(x), is_training=is_training)
    return self.readout(params, x)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A fixed train/test split of the digits, pixels scaled to [0, 1]."""
  digits = load_digits()
  images = np.asarray(digits.data, np.float32) / 16.0
  labels = np.asarray(digits.target, np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  n_test = int(len(labels) * TEST_FRACTION)
  test, train = order[:n_test], order[n_test:]
  return images[train], labels[train], images[test], labels[test]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="2 epochs: a quick smoke test")
  args = parser.parse_args(argv)
  epochs = 2 if args.fast else 40

  x_train, y_train, x_test, y_test = load_data()
  print(f"digits: {len(y_train)} train / {len(y_test)} test images of {x_train.shape[1]} pixels")

  # The graph names every param; the params hold every value.
  graph = bx.Graph("digits")
  rng = bx.Rng(graph.child("rng"))
  model = MLP(graph.child("mlp"), (128, 128), num_classes=10, dropout_rate=0.2, rng=rng)

  # Initialise: one forward pass on unlocked params creates them; then lock,
  # so that a typo in a param name at runtime is an error, not a new param.
  params = rng.seed(bx.Params(), seed=0)
  _, params = model(params, jnp.asarray(x_train[:1]))
  params = params.locked()
  print(params)

  optimizer = optax.adamw(learning_rate=1e-3, weight_decay=1e-4)
  # Only the trainable half gets optimizer state (the random stream does not).
  opt_state = optimizer.init(params.split()[0])

  def loss_fn(
      trainable: bx.Params, rest: bx.Params, x: jax.Array, y: jax.Array
  ) -> tuple[jax.Array, bx.Params]:
    logits, new_params = model(trainable.merge(rest), x, is_training=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    # The forward pass advanced the dropout stream: carry the new rest out.
    _, new_rest = new_params.split()
    return loss, new_rest

  @jax.jit(donate_argnames=("params", "opt_state"))
  def train_step(
      params: bx.Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array
  ) -> tuple[bx.Params, optax.OptState, jax.Array]:
    trainable, rest = params.split()
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, rest, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable.merge(rest), opt_state, loss

  @jax.jit
  def accuracy(params: bx.Params, x: jax.Array, y: jax.Array) -> jax.Array:
    logits, _ = model(params, x, is_training=False)
    return 100.0 * jnp.mean(jnp.argmax(logits, axis=-1) == y)

  shuffle = np.random.default_rng(1)
  batches_per_epoch = len(y_train) // BATCH_SIZE  # drop the ragged end: one shape, one compile
  for epoch in range(1, epochs + 1):
    order = shuffle.permutation(len(y_train))
    losses = []
    for b in range(batches_per_epoch):
      batch = order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
      params, opt_state, loss = train_step(
          params, opt_state, jnp.asarray(x_train[batch]), jnp.asarray(y_train[batch])
      )
      losses.append(loss)
    mean_loss = float(jnp.mean(jnp.stack(losses)))
    train_acc = float(accuracy(params, x_train, y_train))
    print(f"epoch {epoch:3d}  loss {mean_loss:.4f}  train acc {train_acc:5.1f}%")

  test_acc = float(accuracy(params, x_test, y_test))

  # Checkpoint round trip: one file holds values, flags, metadata and the
  # random stream; `like=` checks paths, shapes and dtypes on the way back.
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "digits_mlp.npz")
    bx.save(path, params)
    restored = bx.load(path, like=params)
    size = os.path.getsize(path)
  identical = all(
      bool(jnp.array_equal(jax.random.key_data(a) if _is_key(a) else a,
                           jax.random.key_data(b) if _is_key(b) else b))
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored))
  )
  reloaded_acc = float(accuracy(restored, x_test, y_test))
  print(f"checkpoint: {len(restored)} params, {size:,} bytes, values identical: {identical}")
  if not identical or reloaded_acc != test_acc or restored.is_locked != params.is_locked:
    print(f"ERROR: the reloaded model scores {reloaded_acc:.1f}%, not {test_acc:.1f}%")
    return 1
  print(f"reloaded checkpoint: test accuracy {reloaded_acc:.1f}% (unchanged)")

  # The last line is the result, so that scripts can read it with `tail -1`.
  print(f"test accuracy: {test_acc:.1f}%")
  if not args.fast and test_acc < REQUIRED_ACCURACY:
    print(f"ERROR: test accuracy {test_acc:.1f}% is below {REQUIRED_ACCURACY}%")
    return 1
  return 0


def _is_key(value: jax.Array) -> bool:
  return bool(jnp.issubdtype(value.dtype, jax.dtypes.prng_key))


if __name__ == "__main__":
  sys.exit(main())
