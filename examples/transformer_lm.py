"""A decoder-only transformer language model, trained on text that ships with Python.

The text is the source code of a few standard-library modules (read with
`inspect.getsource`, so nothing is downloaded and the data is the same for
a given Python). The model reads characters:

  token `bx.Embed`
  -> `bx.Repeat` of pre-norm blocks, each
       x + attention(rms_norm(x))   grouped-query, causal, rotary positions
       x + mlp(rms_norm(x))         gated (SwiGLU): down(silu(gate(x)) * up(x))
  -> final `bx.RMSNorm` -> scores from the embedding table itself (`embed.attend`)

The params are float32 and the computation bfloat16, through one `bx.Policy`
on the model's graph. Every param names its logical axes in its sharding
metadata ('vocab', 'embed', 'heads', 'kv_heads', 'mlp'); nothing here maps
them to devices, so this run is unsharded, while examples/fsdp_train.py
shards the same model over a mesh by mapping those names with rules.
Training: AdamW with weight decay on the kernels only (`bx.param_mask`), a
warmup-cosine learning rate and gradient clipping, in one jitted step around
`bx.value_and_grad`. The params are then saved and loaded back
(`bx.save`/`bx.load`), and the model writes a sample under `jax.jit` with a
key/value cache: one prefill over the prompt, then one `decode_step` per
token inside a `jax.lax.scan`. Before sampling it checks
that cached decoding gives the logits of a full forward pass.

Initialisation, the documented way: the function that creates the params is
jitted, `params = jax.jit(init)()`. The model is traced once (with
`bx.Repeat`, one block whatever the depth) and XLA creates every param in
one program, instead of dispatching each initializer op by op.

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
import dataclasses
import functools
import inspect
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import blox as bx

PROMPT = "    def __init__(self"
# bfloat16 keeps 8 significant bits: two orders of the same sums may differ
# by a few units in the last place of the largest score (1/128 of it).
RELATIVE_TOLERANCE = 0.02


# Params in float32 (what the optimizer updates), arithmetic in bfloat16.
MIXED_PRECISION = bx.Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The sizes of the model and of its training run."""

  num_layers: int
  features: int
  num_heads: int
  num_kv_heads: int
  mlp_size: int
  sequence_length: int
  batch_size: int
  steps: int
  warmup_steps: int
  learning_rate: float = 3e-3
  weight_decay: float = 0.1
  rope_base: float = 10_000.0
  # None, 'full' or a name in jax.checkpoint_policies: what the backward pass
  # recomputes instead of keeping (see benchmarks/transformer.py).
  remat_policy: str | None = None


FULL = Sizes(
    num_layers=4, features=128, num_heads=4, num_kv_heads=2, mlp_size=384,
    sequence_length=64, batch_size=16, steps=300, warmup_steps=30,
)
FAST = Sizes(
    num_layers=2, features=32, num_heads=4, num_kv_heads=2, mlp_size=64,
    sequence_length=32, batch_size=16, steps=40, warmup_steps=5, learning_rate=5e-3,
)


def standard_library_text() -> str:
  """The source of a few standard-library modules: the same text for a given Python."""
  return "".join(inspect.getsource(module) for module in (functools, textwrap, dataclasses))


def logical_axes(*names: str | None) -> dict[str, tuple[str | None, ...]]:
  """Sharding metadata naming the logical axis of each dim (None: never sharded).

  Rules (`blox.parallel`'s `rules=`) map the names to mesh axes; a model
  that only names its axes runs on one device unchanged.
  """
  return {bx.SHARDING: names}


class Block(bx.Module):
  """One pre-norm transformer block: attention, then a gated MLP, each around a residual."""

  def __init__(self, graph: bx.Graph, sizes: Sizes, rng: bx.Rng) -> None:
    super().__init__(graph)
    self.sizes = sizes
    self.rng = rng
    scale = logical_axes("embed")
    self.attention_norm = bx.RMSNorm(graph.child("attention_norm"), scale_metadata=scale)
    self.attention = bx.MultiHeadAttention(
        graph.child("attention"), sizes.num_heads, rng=rng, num_kv_heads=sizes.num_kv_heads,
        rope_base=sizes.rope_base, use_bias=False,
        projection_kernel_metadata={
            "query": logical_axes("embed", "heads", None),
            "key": logical_axes("embed", "kv_heads", None),
            "value": logical_axes("embed", "kv_heads", None),
            "out": logical_axes("heads", None, "embed"),
        },
    )
    self.mlp_norm = bx.RMSNorm(graph.child("mlp_norm"), scale_metadata=scale)
    into_mlp = logical_axes("embed", "mlp")
    self.gate = bx.Linear(
        graph.child("gate"), sizes.mlp_size, rng=rng, use_bias=False, kernel_metadata=into_mlp
    )
    self.up = bx.Linear(
        graph.child("up"), sizes.mlp_size, rng=rng, use_bias=False, kernel_metadata=into_mlp
    )
    self.down = bx.Linear(
        graph.child("down"), sizes.features, rng=rng, use_bias=False,
        kernel_metadata=logical_axes("mlp", "embed"),
    )

  def mlp(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    """`x + down(silu(gate(h)) * up(h))` with `h = rms_norm(x)`."""
    h, params = self.mlp_norm(params, x)
    gate, params = self.gate(params, h)
    up, params = self.up(params, h)
    out, params = self.down(params, jax.nn.silu(gate) * up)
    return x + out, params

  def __call__(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    """The block over a whole sequence `x [batch, length, features]` (causal)."""
    (x, _), params = self.apply(params, x, None)
    return x, params

  def apply(
      self, params: bx.Params, x: jax.Array, cache: bx.KVCache | None
  ) -> tuple[tuple[jax.Array, bx.KVCache | None], bx.Params]:
    """The block over a sequence; given a cache, the sequence is written into it (prefill)."""
    h, params = self.attention_norm(params, x)
    (h, cache), params = self.attention.apply(params, h, cache, is_training=False)
    x, params = self.mlp(params, x + h)
    return (x, cache), params

  def decode_step(
      self, params: bx.Params, x: jax.Array, cache: bx.KVCache
  ) -> tuple[tuple[jax.Array, bx.KVCache], bx.Params]:
    """The block for one token `x [batch, features]` at the cache's position."""
    h, params = self.attention_norm(params, x)
    (h, cache), params = self.attention.decode_step(params, h, cache)
    x, params = self.mlp(params, x + h)
    return (x, cache), params


class LanguageModel(bx.Module):
  """Embed -> `num_layers` blocks -> RMSNorm -> scores against the embedding table."""

  def __init__(self, graph: bx.Graph, sizes: Sizes, vocab_size: int, rng: bx.Rng) -> None:
    super().__init__(graph)
    self.sizes = sizes
    self.vocab_size = vocab_size
    self.rng = rng
    self.embed = bx.Embed(
        graph.child("embed"), vocab_size, sizes.features, rng=rng,
        embedding_metadata=logical_axes("vocab", "embed"),
    )
    self.blocks = bx.Repeat(
        graph.child("blocks"), lambda node: Block(node, sizes, rng), sizes.num_layers,
        remat_policy=sizes.remat_policy,
    )
    self.final_norm = bx.RMSNorm(graph.child("final_norm"), scale_metadata=logical_axes("embed"))

  @property
  def block(self) -> Block:
    """The block `Repeat` built once (its params are stacked, one slice per layer)."""
    block = self.blocks.layer
    assert isinstance(block, Block)
    return block

  def _scores(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    x, params = self.final_norm(params, x)
    return self.embed.attend(params, x)

  def __call__(self, params: bx.Params, ids: jax.Array) -> tuple[jax.Array, bx.Params]:
    """Next-character scores for ids `[batch, length]`: `[batch, length, vocab]`."""
    x, params = self.embed(params, ids)
    x, params = self.blocks(params, x)
    return self._scores(params, x)

  # Cached decoding. Every layer has its own cache, so the cached path scans
  # over the layers itself: the stacked block params and the stacked caches
  # are the scanned inputs, one slice of each per layer.

  def _over_layers(
      self, params: bx.Params, x: jax.Array, caches: bx.KVCache, step: Any
  ) -> tuple[tuple[jax.Array, bx.KVCache], bx.Params]:
    prefix = self.blocks.layer_path
    stacked, rest = params.split(lambda path, _: path[: len(prefix)] == prefix)

    def one_layer(
        x: jax.Array, layer: tuple[bx.Params, bx.KVCache]
    ) -> tuple[jax.Array, bx.KVCache]:
      layer_params, cache = layer
      (x, cache), _ = step(layer_params.merge(rest), x, cache)
      return x, cache

    x, caches = jax.lax.scan(one_layer, x, (stacked, caches))
    return (x, caches), params

  def initial_caches(
      self, params: bx.Params, ids: jax.Array, max_length: int
  ) -> tuple[bx.KVCache, bx.Params]:
    """Empty caches for `max_length` tokens of the batch of `ids [batch, ...]`, one per layer."""
    token, params = self.embed(params, ids[:, 0])
    cache, params = self.block.attention.initial_state(params, token, max_length=max_length)
    stack = functools.partial(jnp.repeat, repeats=self.sizes.num_layers, axis=0)
    return jax.tree.map(lambda leaf: stack(leaf[None]), cache), params

  def prefill(
      self, params: bx.Params, ids: jax.Array, caches: bx.KVCache
  ) -> tuple[tuple[jax.Array, bx.KVCache], bx.Params]:
    """Scores for `ids [batch, length]`, writing their keys and values into the caches."""
    x, params = self.embed(params, ids)
    (x, caches), params = self._over_layers(params, x, caches, self.block.apply)
    scores, params = self._scores(params, x)
    return (scores, caches), params

  def decode_step(
      self, params: bx.Params, ids: jax.Array, caches: bx.KVCache
  ) -> tuple[tuple[jax.Array, bx.KVCache], bx.Params]:
    """Scores `[batch, vocab]` for one token per row, `ids [batch]`, at the caches' position."""
    x, params = self.embed(params, ids)
    (x, caches), params = self._over_layers(params, x, caches, self.block.decode_step)
    scores, params = self._scores(params, x)
    return (scores, caches), params

  def generate(
      self, params: bx.Params, prompt: jax.Array, length: int, key: jax.Array,
      temperature: float = 0.7,
  ) -> tuple[jax.Array, bx.Params]:
    """`length` sampled ids per row after `prompt [batch, prompt_length]`."""
    caches, params = self.initial_caches(params, prompt, prompt.shape[1] + length)
    (scores, caches), params = self.prefill(params, prompt, caches)

    def sample(scores: jax.Array, step: jax.Array) -> jax.Array:
      logits = scores.astype(jnp.float32) / temperature
      return jax.random.categorical(jax.random.fold_in(key, step), logits)

    def one_token(
        carry: tuple[bx.Params, bx.KVCache, jax.Array], step: jax.Array
    ) -> tuple[tuple[bx.Params, bx.KVCache, jax.Array], jax.Array]:
      params, caches, token = carry
      (scores, caches), params = self.decode_step(params, token, caches)
      # Emit the token fed in this step; the next one is carried on.
      return (params, caches, sample(scores, step)), token

    first = sample(scores[:, -1], jnp.asarray(0))
    (params, _, _), ids = jax.lax.scan(
        one_token, (params, caches, first), jnp.arange(1, length + 1)
    )
    return jnp.moveaxis(ids, 0, 1), params


def build(sizes: Sizes, vocab_size: int) -> tuple[LanguageModel, Callable[[], bx.Params]]:
  """The model, and its init function `() -> params`, to be called under `jax.jit`."""
  graph = bx.Graph("lm", policy=MIXED_PRECISION)
  rng = bx.Rng(graph.child("rng"))
  model = LanguageModel(graph.child("model"), sizes, vocab_size, rng)

  def init() -> bx.Params:
    params = rng.seed(bx.Params(), seed=0)
    _, params = model(params, jnp.zeros((1, 1), jnp.int32))
    return params.locked()

  return model, init


def kernels(params: bx.Params) -> bx.Params:
  """The weight-decay mask: True for the kernels, False for embeddings and norm scales."""
  return bx.param_mask(params, lambda path, _: path[-1] == "kernel")


def make_optimizer(sizes: Sizes) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=sizes.learning_rate, warmup_steps=sizes.warmup_steps,
      decay_steps=sizes.steps, end_value=sizes.learning_rate / 10,
  )
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, b2=0.95, weight_decay=sizes.weight_decay, mask=kernels),
  )


def make_train_step(model: LanguageModel, optimizer: optax.GradientTransformation) -> Any:
  """The jitted step `(params, opt_state, ids, targets) -> (params, opt_state, loss)`."""

  def loss_fn(
      params: bx.Params, ids: jax.Array, targets: jax.Array
  ) -> tuple[jax.Array, bx.Params]:
    scores, params = model(params, ids)
    return bx.softmax_cross_entropy(scores, targets).mean(), params

  loss_and_grads = bx.value_and_grad(loss_fn)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(
      params: bx.Params, opt_state: optax.OptState, ids: jax.Array, targets: jax.Array
  ) -> tuple[bx.Params, optax.OptState, jax.Array]:
    loss, params, grads = loss_and_grads(params, ids, targets)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss

  return train_step


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
  train_step = make_train_step(model, optimizer)
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
  generate = jax.jit(model.generate, static_argnums=2)
  ids, _ = generate(restored, prompt, 120, jax.random.key(0))
  sample = "".join(chars[i] for i in np.asarray(ids[0]))
  print(f"sample: {PROMPT + sample!r}")

  for failure in failures:
    print(f"ERROR: {failure}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
