"""A decoder-only transformer language model, trained on text that ships with Python.

The text is the source code of a few standard-library modules (read with
`inspect.getsource`, so nothing is downloaded and the data is the same for
a given Python). The model, in examples/transformer_model.py, reads
characters:

  token `bx.Embed`
  -> `bx.Repeat` of pre-norm blocks, each
       x + attention(rms_norm(x))   grouped-query, causal, rotary positions
       x + mlp(rms_norm(x))         gated (SwiGLU): down(silu(gate(x)) * up(x))
  -> final `bx.RMSNorm` -> scores from the embedding table itself (`embed.attend`)

The params are float32 and the computation bfloat16, through one `bx.Policy`
on the model's graph. Every param names its logical axes in its sharding
metadata; nothing here maps them to devices, so this run is unsharded, while
examples/fsdp_train.py shards the same model over a mesh by mapping those
names with rules. Training: AdamW with weight decay on the kernels only
(`bx.param_mask`), a warmup-cosine learning rate and gradient clipping, in
one jitted step around `bx.value_and_grad`. The params are then saved and
loaded back (`bx.save`/`bx.load`), and the model writes a sample with
`bx.models.generate`: one jitted program, a prefill over the prompt into a
key/value cache, then one `decode_step` per token in a device loop. Before
sampling it checks that cached decoding gives the logits of a full forward
pass.

Initialisation, the documented way: the function that creates the params
(`rng.init(model, ids, seed=0)`) is jitted, `params = jax.jit(init)()`. The
model is traced once (with `bx.Repeat`, one block whatever the depth) and XLA
creates every param in one program, instead of dispatching each initializer
op by op.

Run from the repository root:

  uv run examples/transformer_lm.py          # the full run (30 s on 2 idle cores)
  uv run examples/transformer_lm.py --fast   # a tiny model for a few steps, a smoke test

It prints the loss as it falls, `loss A -> B` (first step vs the mean of
the last ten), the largest difference between cached and full logits and a
sample; it exits non-zero if the loss did not fall, the reloaded params
differ or cached decoding disagrees with the full forward pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import blox as bx

# Run as a script, Python puts examples/ itself on the path; the model is
# imported as `examples.transformer_model` from the repository root.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from examples.transformer_model import (  # noqa: E402
    FAST,
    FULL,
    LanguageModel,
    build,
    make_optimizer,
    make_train_step,
    standard_library_text,
)

__all__ = ["FAST", "FULL", "build", "cached_vs_full", "main"]

PROMPT = "    def __init__(self"
# bfloat16 keeps 8 significant bits: two orders of the same sums may differ
# by a few units in the last place of the largest score (1/128 of it).
RELATIVE_TOLERANCE = 0.02


def cached_vs_full(
    model: LanguageModel, params: bx.Params, ids: jax.Array, prefill: int
) -> tuple[float, float]:
  """The largest difference between the full forward pass's scores and cached
  decoding's, and the largest score.

  The first `prefill` tokens of `ids [batch, length]` go through one prefill,
  the rest through `decode_step`, one token at a time; both under `jax.jit`.
  """

  @jax.jit
  def cached(params: bx.Params) -> jax.Array:
    caches, params = model.initial_caches(params, ids, ids.shape[1])
    (first, caches), params = model.prefill(params, ids[:, :prefill], caches)

    def one_token(
        carry: tuple[bx.Params, bx.KVCache], token: jax.Array
    ) -> tuple[tuple[bx.Params, bx.KVCache], jax.Array]:
      params, caches = carry
      (scores, caches), params = model.decode_step(params, token, caches)
      return (params, caches), scores

    _, rest = jax.lax.scan(one_token, (params, caches), jnp.moveaxis(ids[:, prefill:], 1, 0))
    return jnp.concatenate([first, jnp.moveaxis(rest, 0, 1)], axis=1)

  full, _ = jax.jit(model)(params, ids)
  full = full.astype(jnp.float32)
  difference = jnp.abs(full - cached(params).astype(jnp.float32))
  return float(jnp.max(difference)), float(jnp.max(jnp.abs(full)))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a tiny model for a few steps")
  args = parser.parse_args(argv)
  sizes = FAST if args.fast else FULL

  text = standard_library_text()
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  data = np.array([index[c] for c in text], np.int32)
  # The last tenth is held out: the decoding check and the prompt read from it.
  split = len(data) * 9 // 10
  train_data, held_out = data[:split], data[split:]
  print(f"text: {len(text):,} characters of standard-library source, {len(chars)} distinct")

  model, init = build(sizes, len(chars))
  start = time.perf_counter()
  params = jax.jit(init)()
  # Dispatch is asynchronous: wait for the values before reading the clock.
  jax.tree.map(lambda value: value.block_until_ready(), params)
  count = sum(int(np.prod(p.value.shape)) for p in params.values() if p.trainable)
  print(
      f"model: {sizes.num_layers} blocks of {sizes.features} features,"
      f" {sizes.num_heads} query / {sizes.num_kv_heads} key-value heads;"
      f" {count:,} trainable values, initialised in {time.perf_counter() - start:.2f} s"
  )

  optimizer = make_optimizer(sizes)
  opt_state = optimizer.init(params.split()[0])
  # Donated: the step's outputs reuse the buffers of the params and moments it was given.
  train_step = jax.jit(make_train_step(model, optimizer), donate_argnums=(0, 1))
  sampler = np.random.default_rng(0)
  losses: list[float] = []
  report_every = max(1, sizes.steps // 6)
  start = time.perf_counter()
  for step in range(1, sizes.steps + 1):
    starts = sampler.integers(0, len(train_data) - sizes.sequence_length - 1, sizes.batch_size)
    windows = np.stack([train_data[s : s + sizes.sequence_length + 1] for s in starts])
    params, opt_state, loss = train_step(params, opt_state, windows[:, :-1], windows[:, 1:])
    losses.append(float(loss))
    if step == 1 or step % report_every == 0:
      print(f"  step {step:4d}  loss {losses[-1]:.4f}")
  first, last = losses[0], float(np.mean(losses[-10:]))
  print(f"loss {first:.3f} -> {last:.3f} in {time.perf_counter() - start:.1f} s")
  failures = [] if last < first else ["the loss did not fall"]

  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "lm.ckpt")
    bx.save(path, params)
    restored = bx.load(path, like=params)
  same = all(
      bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored))
  )
  print(f"checkpoint: {len(restored)} params saved and loaded back, identical: {same}")
  if not same:
    failures.append("the reloaded params differ")

  window = jnp.asarray(held_out[None, : min(64, sizes.sequence_length)])
  difference, largest = cached_vs_full(model, restored, window, prefill=window.shape[1] // 2)
  tolerance = RELATIVE_TOLERANCE * largest
  print(
      f"cached decoding vs full forward pass: max |difference| of the scores {difference:.4f},"
      f" tolerance {tolerance:.4f} ({RELATIVE_TOLERANCE:.0%} of the largest score, bfloat16)"
  )
  if not difference <= tolerance:
    failures.append("cached decoding disagrees with the full forward pass")

  prompt = jnp.asarray([[index[c] for c in PROMPT]], jnp.int32)
  ids = bx.models.generate(model, restored, prompt, max_new_tokens=120, temperature=0.7, seed=0)
  sample = "".join(chars[i] for i in np.asarray(ids[0]))
  print(f"sample: {PROMPT + sample!r}")

  for failure in failures:
    print(f"ERROR: {failure}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
