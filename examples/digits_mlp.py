"""Handwritten digits with an MLP: train, evaluate, checkpoint, reload.

The data set is scikit-learn's 8x8 digits (1,797 images, shipped inside the
package, no download). The model is a small MLP with dropout; training uses
optax's AdamW inside one jitted step around `bx.value_and_grad`, which
differentiates the loss with respect to the trainable params only and
carries the rest through: the random stream of the dropout masks, whose
counter advances every step.

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
from blox.params import is_prng_key

BATCH_SIZE = 64
TEST_FRACTION = 0.2
REQUIRED_ACCURACY = 95.0


class MLP(bx.Module):
  """Linear -> relu -> dropout for each hidden layer, then a Linear readout."""

  hidden_sizes: tuple[int, ...] = bx.setting(kw_only=False, doc="the hidden widths.")
  num_classes: int = bx.setting(kw_only=False, doc="the number of scores out.")
  rng: bx.KeySource = bx.setting(doc="draws the kernels and the dropout masks.")
  dropout_rate: float = bx.setting(default=0.2, doc="the rate of every dropout.")

  def __post_init__(self) -> None:
    node, rng = self.graph.child, self.rng
    self.hidden = [
        bx.Linear(node(f"hidden{i}"), size, rng=rng) for i, size in enumerate(self.hidden_sizes)
    ]
    # The same stream that initialises the kernels draws the dropout masks.
    self.dropout = [
        bx.Dropout(node(f"dropout{i}"), self.dropout_rate, rng=rng)
        for i in range(len(self.hidden_sizes))
    ]
    self.readout = bx.Linear(node("readout"), self.num_classes, rng=rng)

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
  model = MLP(graph.child("mlp"), (128, 128), 10, dropout_rate=0.2, rng=rng)

  # Initialise: one forward pass creates the params, which come back locked,
  # so that a typo in a param name at runtime is an error, not a new param.
  params = rng.init(model, jnp.asarray(x_train[:1]), seed=0)
  print(params)

  optimizer = optax.adamw(learning_rate=1e-3, weight_decay=1e-4)
  # Only the trainable half gets optimizer state (the random stream does not).
  opt_state = optimizer.init(params.split()[0])

  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    logits, params = model(params, x, is_training=True)
    # The params returned carry the advanced dropout stream out.
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), params

  @jax.jit(donate_argnames=("params", "opt_state"))
  def train_step(
      params: bx.Params, opt_state: optax.OptState, x: jax.Array, y: jax.Array
  ) -> tuple[bx.Params, optax.OptState, jax.Array]:
    # Gradients for the trainable params only; the rest (the stream) carried.
    loss, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss

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
  def raw(value: jax.Array) -> jax.Array:
    return jax.random.key_data(value) if is_prng_key(value) else value

  identical = all(
      bool(jnp.array_equal(raw(a), raw(b)))
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


if __name__ == "__main__":
  sys.exit(main())
