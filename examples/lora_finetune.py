"""Model surgery: fine-tune a trained blox MLP through low-rank adapters (LoRA).

Run it with `uv run examples/lora_finetune.py` (`--fast` for a few-second
smoke run). It

1. trains an MLP of `bx.Linear` layers on a synthetic regression task and
   locks its params;
2. unlocks them and walks the graph (`graph.walk()`), attaching a `LoRA`
   adapter beside every `Linear`: a module bound to a new child node of the
   layer, `('model', 'mlp', 'layer_0', 'lora')`, whose params `a` (in, r) and
   `b` (r, out) are created lazily by one forward pass. `b` starts at zero,
   so the adapted model starts out computing exactly what the base computes;
3. freezes every base weight (`params.freeze`) and locks;
4. fine-tunes only the adapters with optax on a shifted task: the base
   weights are non-trainable, so `bx.value_and_grad` gives them no gradient
   and the optimizer holds no state for them;
5. checks that the base weights did not move (bitwise) and that the
   fine-tune loss fell, and exits with status 1 otherwise.

Nothing in the base model knows about adapters: the graph is static, so the
adapted model is a second model object over the same graph and the same
params, not a modified copy of the first.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import blox as bx

IN, HIDDEN, OUT = 8, 64, 4
RANK = 4

TrainStep = Callable[
    [bx.Params, Any, jax.Array, jax.Array], tuple[bx.Params, Any, jax.Array]
]


class MLP(bx.Module):
  """Applies `layers` in order, with a gelu between them; owns no params."""

  layers: tuple[bx.Module, ...] = bx.setting(doc="the layers, applied in order.")

  def __call__(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    for i, layer in enumerate(self.layers):
      x, params = layer(params, x)
      if i + 1 < len(self.layers):
        x = jax.nn.gelu(x)
    return x, params


class LoRA(bx.Module):
  """`base(x) + (x @ a) @ b * (alpha / rank)`: a low-rank update beside a Linear.

  `a` is random and `b` is zero at creation, so the update starts at zero and
  the gradient with respect to `b` does not.
  """

  rank: int = bx.setting(kw_only=False, doc="the inner width of the update.")
  base: bx.Linear = bx.setting(doc="the layer adapted; its params stay where they are.")
  rng: bx.KeySource = bx.setting(doc="draws `a`.")
  alpha: float = bx.setting(default=1.0, doc="the update is scaled by alpha / rank.")

  def __call__(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    y, params = self.base(params, x)
    fan_in = x.shape[-1]
    a, params = self.get_param(
        params, "a", (fan_in, self.rank),
        init=bx.initializers.normal(stddev=1 / math.sqrt(fan_in)), rng=self.rng,
    )
    b, params = self.get_param(
        params, "b", (self.rank, self.base.output_size), init=bx.initializers.zeros
    )
    return y + (x @ a) @ b * (self.alpha / self.rank), params


def build_base(graph: bx.Graph) -> tuple[bx.Rng, MLP]:
  """The model to be adapted: three `Linear` layers under `model/mlp`."""
  rng = bx.Rng(graph.child("rng"))
  body = graph.child("mlp")
  layers = [
      bx.Linear(body.child(f"layer_{i}"), size, rng=rng)
      for i, size in enumerate((HIDDEN, HIDDEN, OUT))
  ]
  return rng, MLP(body, layers=tuple(layers))


def attach_adapters(
    graph: bx.Graph, model: MLP, rng: bx.Rng, rank: int
) -> tuple[MLP, dict[bx.Path, LoRA]]:
  """Walks `graph` and puts a `LoRA` beside every `Linear`.

  Returns the adapted model (a new `MLP` over the adapted layers, bound to
  its own node) and the adapters by base-layer path.
  """
  # list(): binding adapters adds child nodes, which must not happen while
  # the walk is still iterating over them.
  found = [(path, m) for path, m in list(graph.walk()) if isinstance(m, bx.Linear)]
  adapters = {
      path: LoRA(linear.graph.child("lora"), rank, base=linear, rng=rng) for path, linear in found
  }
  layers = tuple(adapters.get(layer.graph.path, layer) for layer in model.layers)
  return MLP(graph.child("adapted"), layers=layers), adapters


def make_train_step(model: bx.Module, optimizer: Any) -> TrainStep:
  """A jitted optax step over the trainable params of `model`."""

  def loss_fn(params: bx.Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, bx.Params]:
    prediction, params = model(params, x)
    return jnp.mean((prediction - y) ** 2), params

  @jax.jit
  def train_step(
      params: bx.Params, opt_state: Any, x: jax.Array, y: jax.Array
  ) -> tuple[bx.Params, Any, jax.Array]:
    loss, params, grads = bx.value_and_grad(loss_fn)(params, x, y)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss

  return train_step


def train(
    label: str, step: TrainStep, params: bx.Params, opt_state: Any,
    data: tuple[jax.Array, jax.Array], steps: int,
) -> tuple[bx.Params, list[float]]:
  """Runs `steps` full-batch steps, printing the loss five times."""
  losses = []
  for i in range(steps):
    params, opt_state, loss = step(params, opt_state, *data)
    losses.append(float(loss))
    if i % max(steps // 5, 1) == 0 or i == steps - 1:
      print(f"{label} step {i:5d}  loss {losses[-1]:.5f}")
  return params, losses


def make_data(key: jax.Array, samples: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Inputs, base targets (a random teacher net) and shifted targets."""
  kx, k1, k2, ku, kv = jax.random.split(key, 5)
  x = jax.random.normal(kx, (samples, IN))
  t1 = jax.random.normal(k1, (IN, 32)) / math.sqrt(IN)
  t2 = jax.random.normal(k2, (32, OUT)) / math.sqrt(32)
  y = jnp.tanh(x @ t1) @ t2
  # The shift is a rank-1 change of the teacher's first layer: a task that a
  # low-rank adapter can learn.
  u, v = jax.random.normal(ku, (IN, 1)), jax.random.normal(kv, (1, 32))
  shifted = jnp.tanh(x @ (t1 + 0.5 * u @ v / math.sqrt(IN))) @ t2
  return x, y, shifted


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description="Fine-tune a blox MLP through LoRA adapters.")
  parser.add_argument("--fast", action="store_true", help="few steps: a smoke run")
  args = parser.parse_args(argv)
  base_steps, tune_steps, samples = (100, 100, 256) if args.fast else (2000, 1500, 1024)

  x, y, shifted = make_data(jax.random.key(0), samples)

  # 1. The base model: init, lock, train.
  graph = bx.Graph("model")
  rng, base = build_base(graph)
  params = rng.init(base, x[:1], seed=0)
  optimizer = optax.adam(1e-2)
  params, base_losses = train(
      "base", make_train_step(base, optimizer), params,
      optimizer.init(params.split()[0]), (x, y), base_steps,
  )
  trained = params

  # 2. Surgery: adapters beside every Linear, created by one unlocked forward pass.
  adapted, adapters = attach_adapters(graph, base, rng, RANK)
  _, params = adapted(params.unlocked(), x[:1])
  # 3. Freeze the base weights, then lock.
  frozen = [lora.base.param_path(name) for lora in adapters.values() for name in ("kernel", "bias")]
  params = params.freeze(lambda path, _: path in frozen).locked()
  print(bx.summary(params, graph))

  failures = []
  start_adapted, _ = adapted(params, x)
  start_base, _ = base(trained, x)
  same_start = bool(jnp.array_equal(start_adapted, start_base))
  print(f"adapted model starts equal to the base: {same_start}")
  if not same_start:
    failures.append("the adapted model does not start equal to the base model")

  # 4. Fine-tune the adapters only.
  trainable = params.split()[0]
  print(
      f"fine-tuning {len(trainable)} adapter params"
      f" ({sum(v.size for v in jax.tree.leaves(trainable)):,} elements)"
  )
  optimizer = optax.adam(1e-2)
  params, tune_losses = train(
      "lora", make_train_step(adapted, optimizer), params,
      optimizer.init(trainable), (x, shifted), tune_steps,
  )

  # 5. Checks.
  moved = [
      "/".join(path) for path in frozen
      if not np.array_equal(np.asarray(trained[path].value), np.asarray(params[path].value))
  ]
  print(f"base weights unchanged (bitwise): {not moved}")
  if moved:
    failures.append(f"base weights moved: {moved}")
  print(f"base training: loss {base_losses[0]:.5f} -> {base_losses[-1]:.5f}")
  print(f"fine-tune: loss {tune_losses[0]:.5f} -> {tune_losses[-1]:.5f}")
  if not base_losses[-1] < base_losses[0]:
    failures.append("the base training loss did not fall")
  if not tune_losses[-1] < 0.5 * tune_losses[0]:
    failures.append("the fine-tune loss did not fall below half its start")
  for failure in failures:
    print(f"FAILED: {failure}", file=sys.stderr)
  if failures:
    return 1
  print("OK")
  return 0


if __name__ == "__main__":
  sys.exit(main())
