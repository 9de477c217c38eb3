"""Next-character prediction with an LSTM and a GRU on text that ships with Python.

The text is the Zen of Python, stored rot13-encoded in the standard library
module `this`. Each model embeds characters with `bx.Embed`, runs a recurrent
cell over the sequence (`bx.LSTM` or `bx.GRU`, scanned with `jax.lax.scan`)
and reads out one score per character with `bx.Linear`. Training uses optax
and `bx.value_and_grad`, which differentiates with respect to the trainable
params only and carries the rest through. Afterwards the model writes a greedy
continuation of a prompt, one character at a time, inside one `lax.scan`.

Run from the repository root:

  uv run examples/sequence_lstm.py          # both cells, 400 steps each
  uv run examples/sequence_lstm.py --fast   # 30 steps each, a smoke test
  uv run examples/sequence_lstm.py --cell gru

For each cell it prints the loss every few steps, `<cell>: loss A -> B`
(first step vs the mean of the last ten) and a sample; it exits non-zero if
the loss did not fall.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import blox as bx

SEQUENCE_LENGTH = 64
BATCH_SIZE = 32
PROMPT = "Beautiful is"


def zen_of_python() -> str:
  """The Zen of Python, decoded from the `this` module (which prints it on import)."""
  with contextlib.redirect_stdout(io.StringIO()):
    import this
  return codecs.decode(this.s, "rot13")


class CharModel(bx.Module):
  """Embed -> recurrent cell -> Linear: a score per character for the next one."""

  vocab_size: int = bx.setting(kw_only=False, doc="the number of distinct characters.")
  hidden_size: int = bx.setting(kw_only=False, doc="the width of the recurrent state.")
  rng: bx.KeySource = bx.setting(doc="draws every param.")
  cell: str = bx.setting(default="lstm", doc="'lstm' or 'gru'.")

  def __post_init__(self) -> None:
    node, rng = self.graph.child, self.rng
    self.embed = bx.Embed(node("embed"), self.vocab_size, 32, rng=rng)
    self.recurrence: bx.RecurrenceBase
    if self.cell == "lstm":
      self.recurrence = bx.LSTM(node("lstm"), self.hidden_size, rng=rng)
    elif self.cell == "gru":
      self.recurrence = bx.GRU(node("gru"), self.hidden_size, rng=rng)
    else:
      raise ValueError(f"{self.where()}: cell must be 'lstm' or 'gru', got {self.cell!r}.")
    self.readout = bx.Linear(node("readout"), self.vocab_size, rng=rng)

  def __call__(
      self, params: bx.Params, ids: jax.Array, state: Any = None
  ) -> tuple[tuple[jax.Array, Any], bx.Params]:
    """Scores for ids `[batch, time]`: `((logits [batch, time, vocab], state), params)`."""
    x, params = self.embed(params, ids)
    (hidden, state), params = self.recurrence.apply(params, x, prev_state=state)
    logits, params = self.readout(params, hidden)
    return (logits, state), params

  def generate(
      self, params: bx.Params, prompt: jax.Array, length: int
  ) -> tuple[jax.Array, bx.Params]:
    """Greedy continuation of `prompt` `[batch, time]`: `length` more ids per row."""
    (logits, state), params = self(params, prompt)

    def step(
        carry: tuple[bx.Params, Any, jax.Array], _: None
    ) -> tuple[tuple[bx.Params, Any, jax.Array], jax.Array]:
      params, state, last = carry
      x, params = self.embed(params, last)
      # One step of the cell: `((outputs, new_state), params)`.
      (hidden, state), params = self.recurrence(params, x, state)
      scores, params = self.readout(params, hidden)
      # Emit the id fed in this step; the next one is carried to the next step.
      return (params, state, jnp.argmax(scores, axis=-1)), last

    first = jnp.argmax(logits[:, -1], axis=-1)
    (params, _, _), ids = jax.lax.scan(step, (params, state, first), None, length=length)
    return jnp.moveaxis(ids, 0, 1), params


def train(cell: str, text: str, steps: int) -> bool:
  """Trains one model; prints its progress and a sample. True if the loss fell."""
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  data = np.array([index[c] for c in text], np.int32)

  graph = bx.Graph("char_model")
  rng = bx.Rng(graph.child("rng"))
  model = CharModel(graph.child(cell), len(chars), 128, cell=cell, rng=rng)
  params = rng.init(model, jnp.zeros((1, 2), jnp.int32), seed=0)
  count = sum(int(np.prod(p.value.shape)) for p in params.values() if p.trainable)
  print(f"{cell}: {count:,} trainable values, vocabulary of {len(chars)} characters")

  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
  opt_state = optimizer.init(params.split()[0])

  def loss_fn(params: bx.Params, ids: jax.Array, targets: jax.Array) -> tuple[jax.Array, bx.Params]:
    (logits, _), params = model(params, ids)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), params

  # (loss, params with the new non-trainable state, grads of the trainable half)
  loss_and_grads = bx.value_and_grad(loss_fn)

  @jax.jit(donate_argnames=("params", "opt_state"))
  def train_step(
      params: bx.Params, opt_state: optax.OptState, ids: jax.Array, targets: jax.Array
  ) -> tuple[bx.Params, optax.OptState, jax.Array]:
    loss, params, grads = loss_and_grads(params, ids, targets)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss

  sampler = np.random.default_rng(0)
  losses: list[float] = []
  report_every = max(1, steps // 8)
  for step in range(1, steps + 1):
    starts = sampler.integers(0, len(data) - SEQUENCE_LENGTH - 1, BATCH_SIZE)
    windows = np.stack([data[s : s + SEQUENCE_LENGTH + 1] for s in starts])
    params, opt_state, loss = train_step(params, opt_state, windows[:, :-1], windows[:, 1:])
    losses.append(float(loss))
    if step % report_every == 0 or step == 1:
      print(f"  step {step:4d}  loss {losses[-1]:.4f}")

  first, last = losses[0], float(np.mean(losses[-10:]))
  print(f"{cell}: loss {first:.3f} -> {last:.3f}")

  prompt = jnp.array([[index[c] for c in PROMPT]], jnp.int32)
  ids, _ = jax.jit(model.generate, static_argnums=2)(params, prompt, 60)
  sample = "".join(chars[i] for i in np.asarray(ids[0]))
  print(f"{cell} sample: {PROMPT!r} -> {sample!r}")
  return last < first


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="30 steps per cell: a smoke test")
  parser.add_argument("--cell", choices=("lstm", "gru", "both"), default="both")
  args = parser.parse_args(argv)
  steps = 30 if args.fast else 400

  text = zen_of_python()
  print(f"text: the Zen of Python, {len(text)} characters")
  cells = ("lstm", "gru") if args.cell == "both" else (args.cell,)
  failed = [cell for cell in cells if not train(cell, text, steps)]
  if failed:
    print(f"ERROR: the loss did not fall for {', '.join(failed)}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
