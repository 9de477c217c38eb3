"""The decoder-only transformer of examples/transformer_lm.py and examples/fsdp_train.py.

The model reads characters:

  token `bx.Embed`
  -> `bx.Repeat` of pre-norm blocks, each
       x + attention(rms_norm(x))   grouped-query, causal, rotary positions
       x + mlp(rms_norm(x))         gated (SwiGLU): down(silu(gate(x)) * up(x))
  -> final `bx.RMSNorm` -> scores from the embedding table itself (`embed.attend`)

The params are float32 and the computation bfloat16, through one `bx.Policy`
on the model's graph. Every param names its logical axes in its sharding
metadata ('vocab', 'embed', 'heads', 'kv_heads', 'mlp'); nothing here maps
them to devices: transformer_lm.py runs unsharded, fsdp_train.py maps the
names onto a mesh with rules. Cached decoding (`init_cache`, `prefill`,
`decode_step`: the decoding interface of `bx.models.generate`) scans over
the layers with one key/value cache per layer.

Training, shared by both examples: AdamW with weight decay on the kernels
only (`bx.param_mask`), a warmup-cosine learning rate and gradient clipping,
in one jitted step around `bx.value_and_grad`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import blox as bx

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
  # recomputes instead of keeping.
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

  features: int = bx.setting(kw_only=False, doc="the width of the residual stream.")
  num_heads: int = bx.setting(kw_only=False, doc="the query heads.")
  mlp_size: int = bx.setting(kw_only=False, doc="the width of the gated MLP.")
  rng: bx.KeySource = bx.setting(doc="draws every kernel.")
  num_kv_heads: int | None = bx.setting(default=None, doc="key/value heads; None: num_heads.")
  rope_base: float = bx.setting(default=10_000.0, doc="the base of the rotary positions.")

  def __post_init__(self) -> None:
    node, rng = self.graph.child, self.rng
    scale = logical_axes("embed")
    self.attention_norm = bx.RMSNorm(node("attention_norm"), scale_metadata=scale)
    self.attention = bx.MultiHeadAttention(
        node("attention"), self.num_heads, rng=rng, num_kv_heads=self.num_kv_heads,
        rope_base=self.rope_base, use_bias=False,
        projection_kernel_metadata={
            "query": logical_axes("embed", "heads", None),
            "key": logical_axes("embed", "kv_heads", None),
            "value": logical_axes("embed", "kv_heads", None),
            "out": logical_axes("heads", None, "embed"),
        },
    )
    self.mlp_norm = bx.RMSNorm(node("mlp_norm"), scale_metadata=scale)
    into_mlp = logical_axes("embed", "mlp")
    self.gate = bx.Linear(node("gate"), self.mlp_size, rng=rng, use_bias=False,
                          kernel_metadata=into_mlp)
    self.up = bx.Linear(node("up"), self.mlp_size, rng=rng, use_bias=False,
                        kernel_metadata=into_mlp)
    self.down = bx.Linear(node("down"), self.features, rng=rng, use_bias=False,
                          kernel_metadata=logical_axes("mlp", "embed"))

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

  vocab_size: int = bx.setting(kw_only=False, doc="the number of distinct tokens.")
  num_layers: int = bx.setting(kw_only=False, doc="the number of blocks.")
  features: int = bx.setting(kw_only=False, doc="the width of the residual stream.")
  num_heads: int = bx.setting(kw_only=False, doc="the query heads of every block.")
  mlp_size: int = bx.setting(kw_only=False, doc="the width of every gated MLP.")
  rng: bx.KeySource = bx.setting(doc="draws every param.")
  num_kv_heads: int | None = bx.setting(default=None, doc="key/value heads; None: num_heads.")
  rope_base: float = bx.setting(default=10_000.0, doc="the base of the rotary positions.")
  remat_policy: str | None = bx.setting(default=None, doc="what the backward pass recomputes.")

  def __post_init__(self) -> None:
    self.embed = bx.Embed(
        self.graph.child("embed"), self.vocab_size, self.features, rng=self.rng,
        embedding_metadata=logical_axes("vocab", "embed"),
    )
    self.blocks = bx.Repeat(
        self.graph.child("blocks"),
        lambda node: Block(node, self.features, self.num_heads, self.mlp_size, rng=self.rng,
                           num_kv_heads=self.num_kv_heads, rope_base=self.rope_base),
        self.num_layers, remat_policy=self.remat_policy,
    )
    self.final_norm = bx.RMSNorm(
        self.graph.child("final_norm"), scale_metadata=logical_axes("embed")
    )

  @property
  def block(self) -> Block:
    """The block `Repeat` built once (its params are stacked, one slice per layer)."""
    block = self.blocks.layer
    assert isinstance(block, Block)
    return block

  def _scores(self, params: bx.Params, x: jax.Array) -> tuple[jax.Array, bx.Params]:
    """The final norm, then a score per token of the vocabulary (the embedding's transpose)."""
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
    """`step(layer_params, x, cache)` of every layer in turn, each with its own cache."""
    stacked, rest = self._split_layers(params)

    def one_layer(
        x: jax.Array, layer: tuple[bx.Params, bx.KVCache]
    ) -> tuple[jax.Array, bx.KVCache]:
      layer_params, cache = layer
      (x, cache), _ = step(layer_params.merge(rest), x, cache)
      return x, cache

    x, caches = jax.lax.scan(one_layer, x, (stacked, caches))
    return (x, caches), params

  def _split_layers(self, params: bx.Params) -> tuple[bx.Params, bx.Params]:
    """`(stacked, rest)`: the blocks' params, a leading layer axis on each, and the others."""
    prefix = self.blocks.layer_path
    return params.split(lambda path, _: path[: len(prefix)] == prefix)

  def initial_caches(
      self, params: bx.Params, ids: jax.Array, max_length: int
  ) -> tuple[bx.KVCache, bx.Params]:
    """Empty caches for `max_length` tokens of the batch of `ids [batch, ...]`, one per layer."""
    token, params = self.embed(params, ids[:, 0])
    # The attention checks the token against its params: give it one layer's slice.
    stacked, rest = self._split_layers(params)
    first = jax.tree.map(lambda leaf: leaf[0], stacked).merge(rest)
    cache, _ = self.block.attention.initial_state(first, token, max_length=max_length)
    stack = functools.partial(jnp.repeat, repeats=self.num_layers, axis=0)
    return jax.tree.map(lambda leaf: stack(leaf[None]), cache), params

  def init_cache(self, batch_size: int, max_length: int) -> bx.KVCache:
    """`initial_caches` without params (unsharded), for `bx.models.generate`."""
    kv_heads = self.num_kv_heads or self.num_heads
    shape = (self.num_layers, batch_size, max_length, kv_heads, self.features // self.num_heads)
    empty = jnp.zeros(shape, self.block.attention.dtypes().compute or jnp.float32)
    return bx.KVCache(empty, empty, jnp.zeros((self.num_layers, batch_size), jnp.int32))

  def prefill(
      self, params: bx.Params, ids: jax.Array, caches: bx.KVCache, *,
      lengths: jax.Array | None = None,
  ) -> tuple[tuple[jax.Array, bx.KVCache], bx.Params]:
    """Scores for `ids [batch, length]`, writing their keys and values into the caches.

    With `lengths [batch]` (right-padded prompts), each row's next token goes
    right after its own last real token, over its padding.
    """
    start = caches.position
    x, params = self.embed(params, ids)
    (x, caches), params = self._over_layers(params, x, caches, self.block.apply)
    if lengths is not None:
      caches = caches._replace(position=start + jnp.asarray(lengths, jnp.int32))
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


def build(sizes: Sizes, vocab_size: int) -> tuple[LanguageModel, Callable[[], bx.Params]]:
  """The model, and its init function `() -> params`, to be called under `jax.jit`."""
  graph = bx.Graph("lm", policy=MIXED_PRECISION)
  rng = bx.Rng(graph.child("rng"))
  model = LanguageModel(
      graph.child("model"), vocab_size, sizes.num_layers, sizes.features, sizes.num_heads,
      sizes.mlp_size, rng=rng, num_kv_heads=sizes.num_kv_heads, rope_base=sizes.rope_base,
      remat_policy=sizes.remat_policy,
  )
  return model, lambda: rng.init(model, jnp.zeros((1, 1), jnp.int32), seed=0)


def kernels(params: bx.Params) -> bx.Params:
  """The weight-decay mask: True for the kernels, False for embeddings and norm scales."""
  return bx.param_mask(params, lambda path, _: path[-1] == "kernel")


def make_optimizer(sizes: Sizes) -> optax.GradientTransformation:
  """AdamW (decaying the kernels only) after gradient clipping, on a warmup-cosine schedule."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=sizes.learning_rate, warmup_steps=sizes.warmup_steps,
      decay_steps=sizes.steps, end_value=sizes.learning_rate / 10,
  )
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, b2=0.95, weight_decay=sizes.weight_decay, mask=kernels),
  )


TrainStep = Callable[
    [bx.Params, optax.OptState, jax.Array, jax.Array],
    tuple[bx.Params, optax.OptState, jax.Array],
]


def make_train_step(model: LanguageModel, optimizer: optax.GradientTransformation) -> TrainStep:
  """The step `(params, opt_state, ids, targets) -> (params, opt_state, loss)`, not jitted.

  Callers jit it with their own shardings and donations.
  """

  def loss_fn(params: bx.Params, ids: jax.Array, targets: jax.Array) -> tuple[jax.Array, bx.Params]:
    scores, params = model(params, ids)
    return bx.softmax_cross_entropy(scores, targets).mean(), params

  def train_step(
      params: bx.Params, opt_state: optax.OptState, ids: jax.Array, targets: jax.Array
  ) -> tuple[bx.Params, optax.OptState, jax.Array]:
    loss, params, grads = bx.value_and_grad(loss_fn)(params, ids, targets)
    trainable, rest = params.split()
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates).merge(rest), opt_state, loss

  return train_step
