"""`generate`: new tokens after a batch of prompts, the whole loop in one program.

Any model with the decoding interface (`DecodingModel`: `init_cache`,
`prefill`, `decode_step`, as `CausalLM` has) generates: one prefill over
the right-padded prompts, then a `lax.while_loop` of decode steps on the
device, which ends as soon as every row has produced a stop token.

Example:
  >>> import jax.numpy as jnp
  >>> from blox.models._create import create
  >>> model, params = create({
  ...     'model_type': 'llama', 'vocab_size': 32, 'hidden_size': 16, 'intermediate_size': 32,
  ...     'num_hidden_layers': 1, 'num_attention_heads': 2, 'num_key_value_heads': 1})
  >>> prompts = jnp.array([[1, 2, 3], [4, 5, 0]])
  >>> tokens = generate(model, params, prompts, max_new_tokens=4, prompt_lengths=jnp.array([3, 2]))
  >>> tokens.shape, tokens.dtype
  ((2, 4), dtype('int32'))
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from blox.models._hooks import hooks_revision
from blox.models._sampling import SamplingSettings, check_range, sample_tokens
from blox.params import Params

__all__ = ["DecodingModel", "generate"]


@runtime_checkable
class DecodingModel(Protocol):
  """The decoding interface that `generate` drives (`CausalLM` implements it).

  The cache is whatever pytree the model keeps between steps (for
  `CausalLM`, a stacked `blox.nn.KVCache`); `generate` only passes it on.
  The model must be hashable (blox modules are, by identity): `generate`
  compiles once per model.

  Example:
    >>> from blox.models import CausalLM
    >>> issubclass(CausalLM, DecodingModel)
    True
  """

  def init_cache(self, batch_size: int, max_length: int) -> Any:
    """An empty cache with room for `max_length` tokens per example."""
    ...

  def prefill(
      self, params: Params, ids: jax.Array, cache: Any, *, lengths: jax.Array | None = None
  ) -> tuple[tuple[jax.Array, Any], Params]:
    """`((logits [batch, length, vocab], cache), params)` after prompts
    `ids [batch, length]`; with `lengths [batch]` (right padding), each
    example's next token goes to position `start + lengths[b]`."""
    ...

  def decode_step(
      self, params: Params, tokens: jax.Array, cache: Any
  ) -> tuple[tuple[jax.Array, Any], Params]:
    """`((logits [batch, vocab], cache), params)` after one token per example."""
    ...


def generate(
    model: DecodingModel, params: Params, prompts: Any, *, max_new_tokens: int,
    prompt_lengths: Any = None, temperature: Any = 0.0, top_k: Any = None, top_p: Any = None,
    min_p: Any = None, stop_tokens: Sequence[int] | Any = (), pad_id: Any = 0, seed: Any = 0,
) -> jax.Array:
  """`max_new_tokens` new tokens after each prompt: int32 `[batch, max_new_tokens]`.

  Args:
    model: a `DecodingModel` (e.g. the `CausalLM` of `load_pretrained`).
    params: the model's params.
    prompts: int `[batch, length]` token ids, right-padded.
    max_new_tokens: how many tokens to generate per row (at least 1).
    prompt_lengths: int `[batch]`, each prompt's true length (1 to
      `length`); None: every prompt fills its row. The first new token
      comes from the logits at each row's last real position.
    temperature: 0 is greedy decoding (the argmax); above 0 samples.
    top_k: keep the `top_k` most likely tokens (None: off).
    top_p: nucleus sampling, in (0, 1]: keep the smallest set of most
      likely tokens whose probabilities sum to `top_p` (None: off).
    min_p: in [0, 1]: keep the tokens at least `min_p` times as likely as
      the most likely one (None: off).
    stop_tokens: ids that end a row: the stop token is kept, and the rest
      of its row is `pad_id`. The loop ends when every row has stopped.
    pad_id: what fills a row after its stop token.
    seed: the sampling seed (0 to 2**32 - 1): the same seed gives the same
      tokens. Step `i` uses `fold_in(key(seed), i)`, split into one key per
      row, so every row samples independently of the others.

  The sampling filters run in Hugging Face's order: logits / temperature,
  then top_k, then top_p (on what top_k kept), then min_p, then the draw.

  Compilation: the prefill, the loop and the sampling are one jitted
  program, compiled once per model, prompt shape, `max_new_tokens`, number
  of stop tokens, and kind of decoding: greedy (temperature 0; a program
  without sampling) or sampling with a given set of filters on (not None).
  The values (temperatures above 0, top_k, top_p, min_p, seed, stop tokens,
  pad id, lengths) are traced: changing them reuses the program. Prompt
  lengths are not bucketed: pad prompts to a few fixed lengths yourself
  to bound the number of compilations.

  Returns:
    int32 `[batch, max_new_tokens]`.

  Raises:
    TypeError: `model` lacks the decoding interface.
    ValueError: a shape or a setting is invalid (the message says which).

  Example:
    >>> import jax.numpy as jnp
    >>> from blox.models._create import create
    >>> model, params = create({
    ...     'model_type': 'gpt2', 'vocab_size': 16, 'n_embd': 8, 'n_head': 2, 'n_layer': 1,
    ...     'n_positions': 32})
    >>> tokens = generate(model, params, jnp.array([[1, 2, 3]]), max_new_tokens=5,
    ...                   temperature=0.8, top_p=0.9, seed=3)
    >>> bool(((tokens >= 0) & (tokens < 16)).all())
    True
  """
  if not isinstance(model, DecodingModel):
    raise TypeError(
        f"generate: {type(model).__name__} lacks the decoding interface (init_cache,"
        " prefill, decode_step; see DecodingModel); pass a CausalLM or implement it.")
  prompts = jnp.asarray(prompts)
  if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer) or 0 in prompts.shape:
    raise ValueError(
        f"generate: prompts must be integer token ids [batch, length], neither empty; got"
        f" {prompts.dtype}{list(prompts.shape)}. Add a batch axis with prompts[None].")
  batch, length = prompts.shape
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"generate: max_new_tokens={max_new_tokens!r}; pass an int of at least 1.")
  lengths = check_lengths(prompt_lengths, batch, length)
  stops = jnp.asarray(stop_tokens, jnp.int32).reshape(-1)
  check_range("seed", seed, 0, 2**32 - 1, "a seed in it")
  settings = SamplingSettings.make(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
  tokens: jax.Array = generate_program(
      model, params, prompts.astype(jnp.int32), lengths, settings, stops,
      jnp.asarray(pad_id, jnp.int32), jnp.asarray(seed, jnp.uint32),
      max_new_tokens=max_new_tokens, hooks=hooks_revision())
  return tokens


def check_lengths(prompt_lengths: Any, batch: int, length: int) -> jax.Array:
  """`prompt_lengths` as int32 `[batch]` (all `length` for None), checked when known."""
  if prompt_lengths is None:
    return jnp.full((batch,), length, jnp.int32)
  # Checked through numpy when known: under an outer jit, jnp.asarray traces.
  known = not isinstance(prompt_lengths, jax.core.Tracer)
  lengths = np.asarray(prompt_lengths) if known else prompt_lengths
  if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(
        f"generate: prompt_lengths must be integers [batch={batch}]; got"
        f" {lengths.dtype}{list(lengths.shape)}. Give one true length per prompt.")
  if known:
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > length:
      raise ValueError(
          f"generate: prompt_lengths run from {low} to {high}, but each must be between 1"
          f" and the prompts' length {length}; count the real tokens of each row.")
  return jnp.asarray(lengths, jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "hooks"))
def generate_program(
    model: DecodingModel, params: Params, prompts: jax.Array, lengths: jax.Array,
    settings: SamplingSettings, stops: jax.Array, pad_id: jax.Array, seed: jax.Array, *,
    max_new_tokens: int, hooks: int,
) -> jax.Array:
  """The jitted body of `generate`, its arguments checked and made arrays.

  jit's cache keys it on the model (static, by hash), the shapes, the
  structure of `settings` (which filters are None) and `max_new_tokens`;
  and on `hooks`, the revision of the contraction hooks: `add_lora` and
  `quantize` change a model object in place, and a program traced before
  would run it as it was.
  """
  batch, length = prompts.shape
  key = jax.random.key(seed)
  cache = model.init_cache(batch, length + max_new_tokens)
  (logits, cache), _ = model.prefill(params, prompts, cache, lengths=lengths)
  # Each row's next token follows its last real token, not the padding.
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]

  def draw(logits: jax.Array, step: jax.Array) -> jax.Array:
    return sample_tokens(logits, jax.random.fold_in(key, step), settings)

  first = draw(last, jnp.int32(0))
  tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
  state = (jnp.int32(1), first, cache, jnp.isin(first, stops), tokens)

  def running(state: tuple[jax.Array, jax.Array, Any, jax.Array, jax.Array]) -> jax.Array:
    step, _, _, stopped, _ = state
    return (step < max_new_tokens) & ~jnp.all(stopped)

  def one_token(
      state: tuple[jax.Array, jax.Array, Any, jax.Array, jax.Array],
  ) -> tuple[jax.Array, jax.Array, Any, jax.Array, jax.Array]:
    step, token, cache, stopped, tokens = state
    (logits, cache), _ = model.decode_step(params, token, cache)
    token = draw(logits, step)
    # A row that stopped before this step keeps its padding.
    column = jnp.where(stopped, pad_id, token)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, column, step, axis=1)
    return step + 1, token, cache, stopped | jnp.isin(token, stops), tokens

  *_, tokens = jax.lax.while_loop(running, one_token, state)
  return tokens
