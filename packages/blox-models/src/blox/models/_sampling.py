"""How `generate` picks each token: greedy, or sampled after the logits filters.

The filters run in Hugging Face's order: the logits are divided by the
temperature, then top-k, then top-p (nucleus), then min-p, and the token is
drawn from the softmax of what is left. Every setting is an array, so new
values reuse the compiled program; a filter that is off is `None`, which
changes the pytree's structure and so compiles a program without it. So
does greedy decoding (a temperature known to be 0): its program has no
sampling in it, which halves its compilation time.

Example:
  >>> import jax, jax.numpy as jnp
  >>> logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  >>> filter_logits(logits, top_p=jnp.float32(0.7))  # 0.5 + 0.3 reaches 0.7
  Array([[-0.6931472, -1.2039728,       -inf,       -inf]], dtype=float32)
  >>> settings = SamplingSettings.make(temperature=0.0)
  >>> sample_tokens(logits, jax.random.key(0), settings).tolist()  # greedy: the argmax
  [0]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SamplingSettings", "filter_logits", "known_number", "sample_tokens"]


class SamplingSettings(NamedTuple):
  """How to pick a token from logits, as traced scalars (a pytree).

  Attributes:
    temperature: float32; 0 picks the argmax (greedy), above 0 samples
      from `softmax(logits / temperature)` after the filters. None: greedy,
      with no sampling compiled (the filters are None then too).
    top_k: int32, keep the `top_k` largest logits (and any tied with the
      last of them); None: off.
    top_p: float32, keep the smallest set of most probable tokens whose
      probabilities sum to at least `top_p` (the most probable always); None: off.
    min_p: float32, keep the tokens whose probability is at least `min_p`
      times the largest; None: off.
  """

  temperature: jax.Array | None
  top_k: jax.Array | None = None
  top_p: jax.Array | None = None
  min_p: jax.Array | None = None

  @classmethod
  def make(
      cls, *, temperature: Any = 0.0, top_k: Any = None, top_p: Any = None, min_p: Any = None
  ) -> SamplingSettings:
    """Settings from Python numbers (or arrays), checking those that are known.

    A temperature known to be 0 makes greedy settings: every field None,
    whatever filters were asked for (they do not change the argmax).

    Raises:
      ValueError: a setting is out of its range (see the attributes).

    Example:
      >>> SamplingSettings.make(temperature=0.7, top_k=5).top_k
      Array(5, dtype=int32)
    """
    check_range("temperature", temperature, 0.0, None, "0 for greedy decoding")
    check_range("top_k", top_k, 1, None, "None to keep every token")
    check_range("top_p", top_p, 0.0, 1.0, "None to turn nucleus filtering off", open_low=True)
    check_range("min_p", min_p, 0.0, 1.0, "None to turn min-p filtering off")
    if known_number(temperature) == 0:
      return cls(None)
    return cls(
        jnp.asarray(temperature, jnp.float32),
        None if top_k is None else jnp.asarray(top_k, jnp.int32),
        None if top_p is None else jnp.asarray(top_p, jnp.float32),
        None if min_p is None else jnp.asarray(min_p, jnp.float32),
    )


def check_range(
    name: str, value: Any, low: float, high: float | None, hint: str, *, open_low: bool = False
) -> None:
  """Raises ValueError if `value` is known (not traced) and out of `[low, high]`.

  `open_low` excludes `low` itself. Traced values are not checked: their
  values are not known until the program runs.
  """
  number = known_number(value)
  if number is None:
    return
  below = number <= low if open_low else number < low
  if below or (high is not None and number > high):
    bounds = f"{'(' if open_low else '['}{low}, {'inf)' if high is None else f'{high}]'}"
    raise ValueError(f"generate: {name}={value} is outside {bounds}; pass a value in it, or {hint}.")


def known_number(value: Any) -> float | None:
  """`value` as a Python float when it is known before the program runs; None
  for None and for traced values (e.g. `generate` called inside `jax.jit`).

  Read through numpy: under a trace, `jnp.asarray` of even a Python number
  gives a tracer, which has no value to check.

  Example:
    >>> known_number(0.5), known_number(jnp.int32(3)), known_number(None)
    (0.5, 3.0, None)
  """
  if value is None or isinstance(value, jax.core.Tracer):
    return None
  return float(np.asarray(value))


def filter_logits(
    logits: jax.Array, *, top_k: jax.Array | None = None, top_p: jax.Array | None = None,
    min_p: jax.Array | None = None,
) -> jax.Array:
  """`logits [..., vocab]` (float32) with `-inf` for the tokens the filters drop.

  Top-k, then top-p on what top-k kept, then min-p on what both kept;
  None turns a filter off. `top_k` is a traced number: the k-th largest
  logit is read from one descending sort, not from `lax.top_k`, whose k is
  static and would compile a program per k.

  Example:
    >>> filter_logits(jnp.array([1.0, 3.0, 2.0]), top_k=jnp.int32(2)).tolist()
    [-inf, 3.0, 2.0]
  """
  logits = jnp.asarray(logits, jnp.float32)
  vocab = logits.shape[-1]
  # Each filter keeps a top set of logits: the smallest logit kept, per row.
  threshold = jnp.full((*logits.shape[:-1], 1), -jnp.inf, jnp.float32)
  if top_k is not None or top_p is not None:
    ordered = -jnp.sort(-logits, axis=-1)
    if top_k is not None:
      k = jnp.clip(jnp.asarray(top_k, jnp.int32), 1, vocab)
      threshold = jax.lax.dynamic_slice_in_dim(ordered, k - 1, 1, axis=-1)
      ordered = jnp.where(ordered >= threshold, ordered, -jnp.inf)
    if top_p is not None:
      probs = jax.nn.softmax(ordered, axis=-1)
      # The probability of the tokens before each one: it is kept while
      # that is short of top_p, so the kept set is the first to reach it.
      # top_p >= 1 keeps every token, even where float32 sums reach 1 early.
      before = jnp.cumsum(probs, axis=-1) - probs
      keep = (before < top_p) | (top_p >= 1) | (jnp.arange(vocab) == 0)
      last = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
      threshold = jnp.maximum(threshold, last)
  logits = jnp.where(logits >= threshold, logits, -jnp.inf)
  if min_p is not None:
    # p_i >= min_p * p_max, in logits: l_i - l_max >= log(min_p).
    top = jnp.max(logits, axis=-1, keepdims=True)
    logits = jnp.where(logits - top >= jnp.log(min_p), logits, -jnp.inf)
  return logits


def sample_tokens(logits: jax.Array, key: jax.Array, settings: SamplingSettings) -> jax.Array:
  """One token per row of `logits [batch, vocab]`: int32 `[batch]`.

  Greedy (the argmax) when `settings.temperature` is None or 0, else
  sampled after `filter_logits`, each row with its own key split from
  `key`, so that rows draw independently. A traced temperature chooses
  between the two with a `lax.cond`, so that a traced 0 is greedy too.

  Example:
    >>> logits = jnp.zeros((3, 5)).at[:, 2].set(100.0)
    >>> settings = SamplingSettings.make(temperature=1.0, top_k=1)
    >>> sample_tokens(logits, jax.random.key(1), settings).tolist()
    [2, 2, 2]
  """
  logits = jnp.asarray(logits, jnp.float32)

  def greedy() -> jax.Array:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  temperature = settings.temperature
  if temperature is None:
    return greedy()

  def draw() -> jax.Array:
    scaled = filter_logits(
        logits / temperature, top_k=settings.top_k, top_p=settings.top_p,
        min_p=settings.min_p)
    keys = jax.random.split(key, logits.shape[0])
    return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)

  tokens: jax.Array = jax.lax.cond(temperature > 0, draw, greedy)
  return tokens
