"""Data- and model-parallel training on a 4x2 mesh of 8 simulated CPU devices.

The model, an MLP with BatchNorm and dropout, is written for ONE example.
`jax.vmap(..., axis_name='batch')` maps it over the batch with the params
replicated (`in_axes=(None, 0)`), and `jax.jit` spreads the work over the
mesh:

- the batch is split over the mesh axis 'data' (`bx.parallel.shard_batch`);
- kernels are split over the mesh axis 'model', as their metadata says
  (`kernel_metadata={'sharding': (None, 'model')}`), and are created already
  split (`bx.parallel.init_sharded`);
- `bx.parallel.per_lane_rng` gives every example its own dropout mask;
- `BatchNorm(axis_name='batch')` averages its statistics over all lanes, so
  it normalises with the statistics of the whole global batch.

Run from the repository root:

  uv run examples/data_parallel.py          # 300 steps
  uv run examples/data_parallel.py --fast   # 40 steps, a smoke test

It prints the mesh, where the params live, the loss as it falls and the
held-out accuracy; it exits with status 1 if the loss does not fall.
"""

from __future__ import annotations

import os

# JAX reads XLA_FLAGS once, when its CPU backend starts: ask for 8 host
# devices before anything imports jax.
_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}".strip()

import argparse  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import blox as bx  # noqa: E402
from blox.params import SHARDING  # noqa: E402

FEATURES = 16
CLASSES = 4
BATCH_SIZE = 128


class MLP(bx.Module):
  """Linear -> BatchNorm -> relu -> Dropout -> Linear, for a single example.

  The hidden units are split over the mesh axis 'model': the first kernel by
  columns, the second by rows, and the per-unit BatchNorm params with them.
  """

  hidden_size: int = bx.setting(kw_only=False, doc="the width of the hidden layer.")
  rng: bx.KeySource = bx.setting(doc="draws the kernels and the dropout masks.")
  rate: float = bx.setting(default=0.1, doc="the dropout rate.")

  def __post_init__(self) -> None:
    node, rng = self.graph.child, self.rng
    by_unit = {SHARDING: ("model",)}
    self.hidden = bx.Linear(
        node("hidden"), self.hidden_size, rng=rng,
        kernel_metadata={SHARDING: (None, "model")}, bias_metadata=by_unit,
    )
    self.norm = bx.BatchNorm(
        node("norm"), momentum=0.9, axis_name="batch",
        scale_metadata=by_unit, bias_metadata=by_unit,
        running_mean_metadata=by_unit, running_var_metadata=by_unit,
    )
    self.dropout = bx.Dropout(node("dropout"), self.rate, rng=rng)
    self.readout = bx.Linear(
        node("readout"), CLASSES, rng=rng, kernel_metadata={SHARDING: ("model", None)}
    )

  def __call__(
      self, params: bx.Params, x: jax.Array, is_training: bool = True
  ) -> tuple[jax.Array, bx.Params]:
    h, params = self.hidden(params, x)
    h, params = self.norm(params, h, is_training=is_training)
    h, params = self.dropout(params, jax.nn.relu(h), is_training=is_training)
    return self.readout(params, h)


def make_data(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Points labelled by a fixed random teacher network (the same for every seed)."""
  teacher = np.random.default_rng(0)
  w1 = teacher.normal(size=(FEATURES, 32)) / np.sqrt(FEATURES)
  w2 = teacher.normal(size=(32, CLASSES))
  x = np.random.default_rng(seed).normal(size=(count, FEATURES)).astype(np.float32)
  y = np.argmax(np.tanh(x @ w1) @ w2, axis=-1).astype(np.int32)
  return x, y


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="40 steps, a smoke test")
  args = parser.parse_args(argv)
  steps = 40 if args.fast else 300

  assert jax.device_count() == 8, "needs 8 devices; XLA_FLAGS was set too late"
  mesh = bx.parallel.make_mesh((4, 2), ("data", "model"))
  print(f"mesh: {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices")

  graph = bx.Graph("net")
  rng = bx.Rng(graph.child("rng"))
  model = MLP(graph.child("mlp"), 64, rate=0.1, rng=rng)

  def init() -> bx.Params:
    # Evaluation mode needs no batch axis and draws no dropout key, so one
    # example creates every param.
    return rng.init(model, jnp.zeros(FEATURES), is_training=False, seed=0)

  params = bx.parallel.init_sharded(init, mesh)
  for path in (("net", "mlp", "hidden", "kernel"), ("net", "mlp", "readout", "kernel")):
    value = params[path].value
    print(f"{'/'.join(path)}: {value.shape} split as {value.sharding.spec},"
          f" {value.addressable_shards[0].data.shape} per device")

  # The per-example model over a batch: lane = example.
  per_example = jax.vmap(
      bx.parallel.per_lane_rng(model, "batch"),
      in_axes=(None, 0), out_axes=(0, None), axis_name="batch",
  )

  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    logits, params = per_example(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), params

  optimizer = optax.adam(1e-2)
  # Adam's moments are Params-shaped, so init_sharded lays them out like the
  # params they track (a plain jit would leave them on one device).
  opt_state = bx.parallel.init_sharded(optimizer.init, mesh, params.split()[0])

  def train_step(
      params: bx.Params, opt_state: Any, x: jax.Array, y: jax.Array
  ) -> tuple[bx.Params, Any, jax.Array]:
    loss, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    params = optax.apply_updates(trainable, updates).merge(rest)
    return params, opt_state, loss

  # out_shardings keeps every param where its metadata puts it.
  shardings = bx.parallel.param_shardings(params, mesh)
  step = jax.jit(train_step, donate_argnums=(0, 1), out_shardings=(shardings, None, None))

  x_train, y_train = make_data(4096, seed=1)
  order = np.random.default_rng(2)
  losses: list[float] = []
  report_every = max(steps // 10, 1)
  for i in range(steps):
    rows = order.integers(0, len(x_train), BATCH_SIZE)
    x, y = bx.parallel.shard_batch((x_train[rows], y_train[rows]), mesh)
    params, opt_state, loss = step(params, opt_state, x, y)
    losses.append(float(loss))
    if (i + 1) % report_every == 0:
      print(f"step {i + 1:4d}  loss {np.mean(losses[-report_every:]):.4f}")

  x_test, y_test = make_data(1024, seed=3)
  logits, _ = jax.jit(lambda p, x: model(p, x, is_training=False))(params, x_test)
  accuracy = 100.0 * float(np.mean(np.argmax(logits, -1) == y_test))
  print(f"held-out accuracy: {accuracy:.1f}%")

  kernel = params[("net", "mlp", "hidden", "kernel")].value
  if kernel.sharding.spec != shardings[("net", "mlp", "hidden", "kernel")].value.spec:
    print(f"FAILED: the hidden kernel moved to {kernel.sharding}")
    return 1
  first, last = np.mean(losses[:report_every]), np.mean(losses[-report_every:])
  if not last < 0.8 * first:
    print(f"FAILED: the loss did not fall ({first:.4f} -> {last:.4f})")
    return 1
  print(f"loss fell: {first:.4f} -> {last:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
